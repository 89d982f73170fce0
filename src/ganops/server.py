"""HTTP server over an exported ONNX generator: FastAPI app, micro-batcher, metrics and model check.

Start it with `ganops serve --model models/generator.onnx`. Endpoints:

    GET  /                      web page: pick a seed (and class), see the image, interpolate
    GET  /healthz               the process is alive
    GET  /readyz                the model is loaded and a warm-up inference has run (else 503)
    GET  /v1/model              metadata, lineage, provider, model SHA-256, limits
    GET  /v1/images/{seed}.png  one image (?label= for conditional models); cacheable, strong ETag
    POST /v1/generate           many images: {"seeds": [...]} or {"count": n, "start_seed": s},
                                "labels": one or per seed, "format": grid | png | npy
    POST /v1/interpolate        a PNG strip between two seeds' latents (slerp by default, or lerp)
    GET  /metrics               Prometheus metrics (open, like the health endpoints)
    GET  /docs, /openapi.json   OpenAPI

Environment variables (a command-line flag wins over its variable, which wins over the default):

    GANOPS_MODEL             the ONNX model (--model)
    GANOPS_API_KEY           when set, every /v1 endpoint needs `Authorization: Bearer <key>` or
                             `X-API-Key: <key>`; /, /healthz, /readyz, /metrics and docs stay open
    GANOPS_MODEL_SHA256      the model's expected SHA-256 (--expect-sha256)
    GANOPS_HOST              --host             (default 127.0.0.1)
    GANOPS_PORT              --port             (default 8000)
    GANOPS_MAX_BATCH         --max-batch        most images in one micro-batched ONNX Runtime call
    GANOPS_MAX_WAIT_MS       --max-wait-ms      how long a micro-batch waits to fill
    GANOPS_QUEUE_SIZE        --queue-size       requests waiting; beyond it: 503 + Retry-After
    GANOPS_MAX_IMAGES        --max-images       images per request (and interpolation steps)
    GANOPS_MAX_BODY_BYTES    --max-body-bytes   request body limit (413 beyond it)
    GANOPS_MICRO_BATCHING    --no-micro-batching  "false" runs one ONNX Runtime call per request
    GANOPS_CACHE_MAX_AGE_S   --cache-max-age-s  Cache-Control max-age of /v1/images
    GANOPS_PROVIDERS         --providers        auto | cpu | cuda

Model check: the server hashes the model file before binding the port and refuses to start when
the sidecar `<model>.sha256` (written by the export stage) or the expected hash disagrees with
it, or when there is neither (that last case only is allowed by --no-verify).

Imports only numpy, onnxruntime, fastapi/starlette, uvicorn, prometheus_client and the standard
library (through ganops.inference and ganops.sampling): a slim deployment has no torch, dvc, mlflow.
"""
# No `from __future__ import annotations`: FastAPI resolves the endpoints' Annotated[...,
# Depends(local)] hints at runtime, which string annotations of closures would break.
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import io
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from ganops import __version__
from ganops.inference import Generator, read_sidecar_sha256
from ganops.sampling import MAX_SEED, grid, latent, latents, png_bytes, to_uint8

log = logging.getLogger("ganops.server")
STATIC_DIR = Path(__file__).parent / "static"
ENV_PREFIX = "GANOPS_"
# Lineage headers on every image response: header -> ONNX metadata key written by the export stage.
LINEAGE_HEADERS = {
    "X-Ganops-Git-Commit": "git_commit",
    "X-Ganops-Data-Manifest": "data_manifest_sha256",
    "X-Ganops-Params-Sha256": "params_sha256",
    "X-Ganops-Mlflow-Run": "mlflow_run_id",
    "X-Ganops-Dataset": "dataset",
}


class ModelVerificationError(RuntimeError):
    """The model file's SHA-256 is not the one recorded at export (or there is nothing to check)."""


class Overloaded(RuntimeError):
    """The request queue is full: the client should retry later (HTTP 503)."""


@dataclass(frozen=True)
class ServerConfig:
    """Server settings; same names and defaults as params.yaml's `serve` section (ServeParams)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 64
    max_wait_ms: float = 2.0
    queue_size: int = 256
    max_images: int = 256
    max_body_bytes: int = 65536
    micro_batching: bool = True
    cache_max_age_s: int = 31536000
    providers: str = "auto"

    def __post_init__(self):
        for name in ("max_batch", "queue_size", "max_images", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.cache_max_age_s < 0 or not 0 <= self.port <= 65535:
            raise ValueError(
                f"serve.max_wait_ms and serve.cache_max_age_s must be >= 0 and serve.port in "
                f"[0, 65535]; got {self.max_wait_ms}, {self.cache_max_age_s}, {self.port}"
            )


def config_from_env(base: ServerConfig, environ: Mapping[str, str]) -> ServerConfig:
    """`base` with every GANOPS_<FIELD> variable present in `environ` applied (typed, checked)."""
    changes: dict[str, object] = {}
    for f in dataclasses.fields(ServerConfig):
        name = ENV_PREFIX + f.name.upper()
        if name not in environ:
            continue
        raw = environ[name].strip()
        try:
            if f.type is bool:
                if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                    raise ValueError(raw)
                changes[f.name] = raw.lower() in ("1", "true", "yes")
            elif f.type is int:
                changes[f.name] = int(raw)
            elif f.type is float:
                changes[f.name] = float(raw)
            else:
                changes[f.name] = raw
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r} is not a valid {f.type.__name__}") from None
    return dataclasses.replace(base, **changes)


def verify_model(*, model_path: str | Path, expect_sha256: str | None, verify: bool) -> str:
    """Hash the model and check it against `expect_sha256` and the `<model>.sha256` sidecar.

    Returns the hex digest. Raises ModelVerificationError on a mismatch (always: `verify=False`
    only allows a model with nothing to check against, it never allows a wrong one), or when there
    is nothing to check against and `verify` is true.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelVerificationError(
            f"{model_path} not found: export a model first (dvc repro export writes models/generator.onnx)"
        )
    h = hashlib.sha256()
    with open(model_path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    actual = h.hexdigest()
    fix = "re-export it (dvc repro export) or restore the exported file; --no-verify skips this check"
    if expect_sha256 is not None and expect_sha256.strip().lower() != actual:
        raise ModelVerificationError(
            f"{model_path} has sha256 {actual}, but the expected sha256 (--expect-sha256 / "
            f"GANOPS_MODEL_SHA256) is {expect_sha256.strip().lower()}: {fix}"
        )
    try:
        recorded = read_sidecar_sha256(model_path)
    except ValueError as e:
        raise ModelVerificationError(str(e)) from e
    if recorded is not None and recorded != actual:
        raise ModelVerificationError(
            f"{model_path} has sha256 {actual}, but {model_path}.sha256 recorded {recorded} at "
            f"export: the model changed after export; {fix}"
        )
    if recorded is None and expect_sha256 is None:
        if not verify:
            log.warning("--no-verify: serving %s (sha256 %s) unchecked: no sidecar, no expected hash",
                        model_path, actual)
            return actual
        raise ModelVerificationError(
            f"cannot verify {model_path}: no sidecar {model_path}.sha256 and no --expect-sha256 / "
            f"GANOPS_MODEL_SHA256 (its sha256 is {actual}); copy the sidecar written by the export "
            "stage beside the model, pass the expected hash, or pass --no-verify"
        )
    return actual


def slerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """`steps` latents from a to b along the great circle (White 2016), float32 [steps, z_dim].

    Spherical rather than linear: midpoints of a straight line have a smaller norm than Gaussian
    latents ever do, so lerp's middle images are washed out. Falls back to lerp for parallel a, b.
    """
    t = np.linspace(0.0, 1.0, steps)[:, None]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = np.dot(a64, b64) / (np.linalg.norm(a64) * np.linalg.norm(b64))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if np.sin(omega) < 1e-6:
        return lerp(a, b, steps)
    out = ((np.sin((1 - t) * omega) * a64 + np.sin(t * omega) * b64) / np.sin(omega)).astype(np.float32)
    out[0], out[-1] = a, b  # exact ends: the strip starts and ends with the seeds' own images
    return out


def lerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """`steps` latents on the straight line from a to b, float32 [steps, z_dim]."""
    t = np.linspace(0.0, 1.0, steps, dtype=np.float64)[:, None]
    return ((1 - t) * a.astype(np.float64) + t * b.astype(np.float64)).astype(np.float32)


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ganops_requests_total", "HTTP requests by route, method and status",
            ["endpoint", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "ganops_request_latency_seconds", "HTTP request latency by route", ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "ganops_batch_size", "images per ONNX Runtime call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=self.registry,
        )
        self.queue_depth = Gauge(
            "ganops_queue_depth", "requests waiting for the generator", registry=self.registry
        )
        self.images = Counter("ganops_images_total", "images generated", registry=self.registry)


@dataclass
class _Job:
    z: np.ndarray
    labels: np.ndarray | None
    png: bool  # encode each image as PNG in the worker thread, off the event loop
    future: asyncio.Future


class MicroBatcher:
    """Gathers concurrent requests into one ONNX Runtime call, run in a worker thread.

    One asyncio task takes the first waiting request, then keeps taking requests until it holds
    `max_batch` images or `max_wait_ms` has passed, and runs them as one ONNX Runtime call in a
    worker thread; requests that arrive meanwhile queue up for the next call. It waits to fill a
    batch only while traffic is concurrent (the previous batch held more than one request): a lone
    client is never delayed. A request larger than `max_batch` runs as a batch of its own. With
    `enabled=False` every request runs alone (concurrently, in a thread pool): the benchmark's
    baseline. Either way at most `queue_size` requests wait; the next one raises Overloaded.
    """

    def __init__(self, *, generator: Generator, max_batch: int, max_wait_ms: float,
                 queue_size: int, enabled: bool, metrics: Metrics):
        self.generator = generator
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.enabled = enabled
        self.metrics = metrics
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._in_flight = 0  # unbatched mode's count of running requests
        self._last_batch_jobs = 0
        # Batched: one thread, so batches never compete for cores; unbatched: a thread per request.
        self._executor = ThreadPoolExecutor(
            max_workers=1 if enabled else min(64, queue_size), thread_name_prefix="ganops-ort"
        )

    def _run(self, jobs: list[_Job]) -> list[np.ndarray | list[bytes]]:
        """In the worker thread: one ONNX Runtime call for all jobs, split back, PNGs encoded."""
        z = np.concatenate([j.z for j in jobs])
        labels = None if jobs[0].labels is None else np.concatenate([j.labels for j in jobs])
        self.metrics.batch_size.observe(len(z))
        images = to_uint8(self.generator.run(z, labels))
        out, start = [], 0
        for j in jobs:
            part = images[start : start + len(j.z)]
            start += len(j.z)
            out.append([png_bytes(im) for im in part] if j.png else part)
        return out

    async def start(self) -> None:
        if self.enabled:
            self._queue = asyncio.Queue(maxsize=self.queue_size)
            self.metrics.queue_depth.set_function(self._queue.qsize)
            self._worker = asyncio.create_task(self._work(), name="ganops-batcher")
        else:
            self.metrics.queue_depth.set_function(lambda: self._in_flight)

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(Overloaded("the server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, z: np.ndarray, labels: np.ndarray | None, *, png: bool = False
                     ) -> np.ndarray | list[bytes]:
        """Latents [n, z_dim] (+ labels [n]) -> uint8 images [n, 28, 28], or n PNGs with `png`.

        Raises Overloaded when `queue_size` requests are already waiting.
        """
        loop = asyncio.get_running_loop()
        job = _Job(z, labels, png, loop.create_future())
        if not self.enabled:
            if self._in_flight >= self.queue_size:
                raise Overloaded(f"{self._in_flight} requests in flight (serve.queue_size)")
            self._in_flight += 1
            try:
                return (await loop.run_in_executor(self._executor, self._run, [job]))[0]
            finally:
                self._in_flight -= 1
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise Overloaded(f"{self.queue_size} requests already waiting (serve.queue_size)") from None
        return await job.future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        pending: _Job | None = None
        while True:
            first = pending if pending is not None else await self._queue.get()
            pending = None
            jobs, n = [first], len(first.z)
            deadline = loop.time() + (self.max_wait_s if self._last_batch_jobs > 1 else 0.0)
            while n < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                if n + len(job.z) > self.max_batch:
                    pending = job  # starts the next batch
                    break
                jobs.append(job)
                n += len(job.z)
            jobs = [j for j in jobs if not j.future.cancelled()]
            self._last_batch_jobs = len(jobs)
            if not jobs:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._run, jobs)
            except Exception as e:  # a failed batch fails its requests, not the worker
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            for j, result in zip(jobs, results, strict=True):
                if not j.future.done():
                    j.future.set_result(result)


class _Guard:
    """ASGI middleware: per-route metrics for every request, and body checks for POSTs to /v1.

    A POST must be JSON (else 415) and at most `max_body_bytes` long (else 413), checked while
    reading, so a huge or endless body is refused without being held in memory.
    """

    def __init__(self, app, *, metrics: Metrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if scope["method"] == "POST" and scope["path"].startswith("/v1/"):
                refusal, receive = await self._check_body(scope, receive)
                if refusal is not None:
                    await refusal(scope, receive, send_status)
                    return
            await self.app(scope, receive, send_status)
        finally:
            # Route templates, not raw paths: one label per endpoint however many seeds are asked for.
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or (
                "/static" if scope["path"].startswith("/static/")
                else "refused" if scope["path"].startswith("/v1/") and status in (413, 415)
                else "unmatched"
            )
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    async def _check_body(self, scope, receive):
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return _error(415, f"Content-Type must be application/json, got {ctype or 'none'!r}"), receive
        limit = self.max_body_bytes
        too_big = _error(413, f"request body over the {limit}-byte limit (serve.max_body_bytes)")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return too_big, receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _error(400, "client disconnected"), receive
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return too_big, receive
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return None, replay


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: `*` or any listed tag equal to `etag` under weak comparison."""
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def _header_value(value: object) -> str:
    """Metadata as a header value: latin-1 safe, one line."""
    text = str(value).replace("\r", " ").replace("\n", " ")
    return text.encode("latin-1", "replace").decode("latin-1")


Seed = Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)]
Label = Annotated[int, Field(strict=True)]


class GenerateRequest(BaseModel):
    """POST /v1/generate: either `seeds` or `count` (+ `start_seed`)."""

    model_config = ConfigDict(extra="forbid")
    seeds: list[Seed] | None = Field(None, description="seeds to render, in order")
    count: int | None = Field(None, strict=True, ge=1, description="render seeds start_seed..start_seed+count-1")
    start_seed: Seed = 0
    labels: Label | list[Label] | None = Field(
        None, description="conditional models: one class for all images, or one per seed"
    )
    format: Literal["grid", "png", "npy"] = Field(
        "grid",
        description="grid: one PNG (image/png); png: JSON {images: [{seed, label, png_base64}]}; "
        "npy: NumPy .npy of uint8 [N, 28, 28] (application/octet-stream)",
    )
    ncol: int = Field(8, strict=True, ge=1, le=256, description="grid columns")


class InterpolateRequest(BaseModel):
    """POST /v1/interpolate: a strip of `steps` images from seed_a's latent to seed_b's."""

    model_config = ConfigDict(extra="forbid")
    seed_a: Seed
    seed_b: Seed
    steps: int = Field(8, strict=True, ge=2, description="images in the strip, both ends included")
    label: Label | None = Field(None, description="conditional models: the class of every image")
    method: Literal["slerp", "lerp"] = Field(
        "slerp", description="slerp: spherical interpolation of the latents (default); lerp: linear"
    )


def create_app(*, generator: Generator, config: ServerConfig, api_key: str | None) -> FastAPI:
    """The FastAPI app serving `generator`; micro-batcher and warm-up start with the app's lifespan."""
    metrics = Metrics()
    batcher = MicroBatcher(
        generator=generator, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
        queue_size=config.queue_size, enabled=config.micro_batching, metrics=metrics,
    )
    meta = generator.metadata
    classes = [str(c) for c in meta.get("classes") or []]
    if len(classes) != generator.num_classes:
        classes = [str(i) for i in range(generator.num_classes)]
    lineage = {h: _header_value(meta.get(k, "unknown")) for h, k in LINEAGE_HEADERS.items()}
    lineage["X-Ganops-Model-Sha256"] = generator.sha256
    state = {"ready": False, "warmup_error": None}

    async def warm_up() -> None:
        # One image, then a full batch: ONNX Runtime allocates its buffers on first use.
        try:
            for n in (1, config.max_batch):
                z = latents(range(n), generator.z_dim)
                await batcher.submit(z, np.zeros(n, np.int64) if generator.conditional else None)
            state["ready"] = True
            log.info("ganops server ready: %r", generator)
        except Exception as e:
            state["warmup_error"] = f"{type(e).__name__}: {e}"
            log.exception("warm-up inference failed")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        task = asyncio.create_task(warm_up())
        yield
        task.cancel()
        await batcher.stop()

    app = FastAPI(
        title="ganops",
        version=__version__,
        description="Images from an exported ganops generator. Seed s always names the same image "
        "for a given model (see X-Ganops-Model-Sha256).",
        lifespan=lifespan,
    )
    app.add_middleware(_Guard, metrics=metrics, max_body_bytes=config.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes each bad input back; a 60 kB list would come back whole.
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()[:10]]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return _error(503, f"server overloaded: {exc}; retry later", {"Retry-After": "1"})

    bearer = HTTPBearer(auto_error=False)
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False)

    async def require_key(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        header_key: Annotated[str | None, Depends(key_header)],
    ) -> None:
        supplied = [c for c in (credentials and credentials.credentials, header_key) if c]
        if not any(hmac.compare_digest(c.encode(), api_key.encode()) for c in supplied):
            raise HTTPException(
                401,
                detail="missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def check_labels(labels: int | list[int] | None, n: int) -> np.ndarray | None:
        if not generator.conditional:
            if labels is not None:
                raise HTTPException(422, detail="this model is unconditional: do not pass a label")
            return None
        if labels is None:
            raise HTTPException(
                422, detail=f"this model is conditional: pass a label in [0, {generator.num_classes - 1}]"
            )
        arr = np.full(n, labels, np.int64) if isinstance(labels, int) else np.asarray(labels, np.int64)
        if len(arr) != n:
            raise HTTPException(422, detail=f"labels: pass one label or {n} (one per seed), got {len(arr)}")
        bad = arr[(arr < 0) | (arr >= generator.num_classes)]
        if len(bad):
            raise HTTPException(
                422, detail=f"label {int(bad[0])} out of range [0, {generator.num_classes - 1}]"
            )
        return arr

    def check_count(n: int, what: str) -> None:
        if n > config.max_images:
            raise HTTPException(
                422, detail=f"{n} {what} requested; at most {config.max_images} per request (serve.max_images)"
            )

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "warming up or warm-up failed"}})
    async def readyz() -> JSONResponse:
        """The model is loaded and a warm-up inference has run."""
        if state["ready"]:
            return JSONResponse({"status": "ready", "model_sha256": generator.sha256})
        if state["warmup_error"]:
            return _error(503, f"warm-up failed: {state['warmup_error']}")
        return _error(503, "warming up", {"Retry-After": "1"})

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics: requests, latency, batch sizes, queue depth."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(
            (STATIC_DIR / "index.html").read_bytes(),
            media_type="text/html; charset=utf-8",
            # Everything is served from here: no inline script, no other origin.
            headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:",
                     "Cache-Control": "no-cache"},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # No key, no dependency: it would cost every request a dependency solve for nothing.
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)] if api_key else [])

    @v1.get("/model", tags=["v1"])
    async def model_info() -> dict:
        """The model: shape, classes, lineage (from the ONNX metadata), provider, SHA-256, limits."""
        return {
            "model_sha256": generator.sha256,
            "provider": generator.provider,
            "z_dim": generator.z_dim,
            "conditional": generator.conditional,
            "num_classes": generator.num_classes,
            "classes": classes,
            "lineage": {k: meta[k] for k in sorted(meta) if isinstance(meta[k], str)},
            "limits": {"max_images": config.max_images, "max_seed": MAX_SEED,
                       "max_body_bytes": config.max_body_bytes},
            "micro_batching": {"enabled": config.micro_batching, "max_batch": config.max_batch,
                               "max_wait_ms": config.max_wait_ms, "queue_size": config.queue_size},
            "interpolation": "slerp (spherical) by default; lerp on request",
            "ganops_version": __version__,
        }

    png_response = {200: {"content": {"image/png": {}}}}

    @v1.get(
        "/images/{seed}.png", tags=["v1"], response_class=Response,
        responses={**png_response, 304: {"description": "If-None-Match matched the ETag"}},
    )
    async def image(
        request: Request,
        seed: Annotated[int, PathParam(ge=0, le=MAX_SEED)],
        label: int | None = None,
    ) -> Response:
        """One image. Cacheable forever: the strong ETag names model, seed and label."""
        labels = check_labels(label, 1)
        etag = f'"{generator.sha256[:16]}-{seed}-{"u" if label is None else label}"'
        headers = {
            **lineage, "X-Ganops-Seed": str(seed), "ETag": etag,
            "Cache-Control": f"public, max-age={config.cache_max_age_s}, immutable",
        }
        if label is not None:
            headers["X-Ganops-Label"] = str(label)
        if _etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        (png,) = await batcher.submit(latent(seed, generator.z_dim)[None], labels, png=True)
        metrics.images.inc()
        return Response(png, media_type="image/png", headers=headers)

    @v1.post(
        "/generate", tags=["v1"], response_class=Response,
        responses={200: {"content": {"image/png": {}, "application/json": {},
                                     "application/octet-stream": {}}}},
    )
    async def generate(body: GenerateRequest) -> Response:
        """Many images as a PNG grid, a JSON list of base64 PNGs, or an .npy array."""
        if (body.seeds is None) == (body.count is None):
            raise HTTPException(422, detail="pass either 'seeds' (a list) or 'count' (with 'start_seed')")
        if body.seeds is not None:
            if not body.seeds:
                raise HTTPException(422, detail="'seeds' is empty: pass at least one seed")
            check_count(len(body.seeds), "images")
            seeds = body.seeds
        else:
            check_count(body.count, "images")
            if body.start_seed + body.count - 1 > MAX_SEED:
                raise HTTPException(422, detail=f"start_seed + count - 1 exceeds the largest seed {MAX_SEED}")
            seeds = list(range(body.start_seed, body.start_seed + body.count))
        labels = check_labels(body.labels, len(seeds))
        z = latents(seeds, generator.z_dim)
        images = await batcher.submit(z, labels, png=body.format == "png")
        metrics.images.inc(len(seeds))
        headers = {**lineage, "X-Ganops-Seeds": ",".join(map(str, seeds))}
        if labels is not None:
            headers["X-Ganops-Labels"] = ",".join(map(str, labels.tolist()))
        if body.format == "grid":
            png = await asyncio.to_thread(png_bytes, grid(images, ncol=body.ncol))  # big: off the loop
            return Response(png, media_type="image/png", headers=headers)
        if body.format == "npy":
            buf = io.BytesIO()
            np.save(buf, images, allow_pickle=False)
            headers["Content-Disposition"] = 'attachment; filename="images.npy"'
            return Response(buf.getvalue(), media_type="application/octet-stream", headers=headers)
        items = [
            {"seed": s, "label": None if labels is None else int(labels[i]),
             "png_base64": base64.b64encode(images[i]).decode()}
            for i, s in enumerate(seeds)
        ]
        return JSONResponse({"model_sha256": generator.sha256, "images": items}, headers=headers)

    @v1.post("/interpolate", tags=["v1"], response_class=Response, responses=png_response)
    async def interpolate(body: InterpolateRequest) -> Response:
        """A PNG strip (one row) from seed_a to seed_b, both ends included."""
        check_count(body.steps, "interpolation steps")
        labels = check_labels(body.label, body.steps)
        a, b = latent(body.seed_a, generator.z_dim), latent(body.seed_b, generator.z_dim)
        z = slerp(a, b, body.steps) if body.method == "slerp" else lerp(a, b, body.steps)
        images = await batcher.submit(z, labels)
        metrics.images.inc(body.steps)
        headers = {**lineage, "X-Ganops-Seeds": f"{body.seed_a},{body.seed_b}",
                   "X-Ganops-Interpolation": body.method}
        if body.label is not None:
            headers["X-Ganops-Label"] = str(body.label)
        png = await asyncio.to_thread(png_bytes, grid(images, ncol=body.steps))
        return Response(png, media_type="image/png", headers=headers)

    app.include_router(v1)
    return app


def serve(*, model_path: str | Path, config: ServerConfig, api_key: str | None,
          expect_sha256: str | None, verify: bool, access_log: bool, log_level: str) -> None:
    """Verify the model, load it, and run uvicorn until interrupted (the model check comes first,
    so a refused model never binds the port)."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    digest = verify_model(model_path=model_path, expect_sha256=expect_sha256, verify=verify)
    generator = Generator.from_onnx(model_path, providers=config.providers)
    if generator.sha256 != digest:
        raise ModelVerificationError(
            f"{model_path} changed while the server was starting (sha256 {digest} -> "
            f"{generator.sha256}); start it again once the file is in place"
        )
    app = create_app(generator=generator, config=config, api_key=api_key)
    import uvicorn  # here, so that importing this module for create_app stays light

    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level.lower(),
                access_log=access_log, timeout_graceful_shutdown=5)


def api_key_from_env(environ: Mapping[str, str] = os.environ) -> str | None:
    """GANOPS_API_KEY, or None when unset or empty (an empty key would let everyone in anyway)."""
    return environ.get("GANOPS_API_KEY") or None


__all__ = [
    "GenerateRequest", "InterpolateRequest", "MicroBatcher", "ModelVerificationError", "Overloaded",
    "ServerConfig", "api_key_from_env", "config_from_env", "create_app", "lerp", "serve", "slerp",
    "verify_model",
]
