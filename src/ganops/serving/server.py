"""`ganops serve`: check the model, load it, and run the HTTP app under uvicorn until told to stop.

Start it with `ganops serve --model models/generator.onnx`. Endpoints (the app is in serve_app.py):

    GET  /                      web page: a grid of samples with paging, the class picker,
                                an enlarged view with each image's permanent URL, interpolation
    GET  /healthz               the process is alive
    GET  /readyz                the model is loaded and a warm-up inference has run (else 503)
    GET  /v1/model              metadata, lineage, provider, model SHA-256, limits, image URL template
    GET  /v1/models/{sha256}/images/{seed}.png
                                one image of that model (?label= for conditional models): its
                                permanent URL, cached as immutable
    GET  /v1/images/{seed}.png  the same image of whichever model is served now: no-cache, so
                                clients revalidate with the ETag (304) and see a new model at once
    POST /v1/generate           many images: {"seeds": [...]} or {"count": n, "start_seed": s},
                                "labels": one or a list, "format": grid | png | npy
    POST /v1/interpolate        a PNG strip between two seeds' latents (slerp by default, or lerp)
    GET  /metrics               Prometheus metrics (open, like the health endpoints)
    /v2/...                     the Open Inference Protocol (KServe "v2"): health, metadata, and
                                POST /v2/models/ganops-generator/infer (serving/oip.py)
    GET  /docs, /openapi.json   OpenAPI, rendered by Swagger UI from local files (works offline)

Environment variables (a command-line flag wins over its variable, which wins over the default):

    GANOPS_MODEL             the ONNX model (--model)
    GANOPS_API_KEY           when set, every /v1 and /v2/models endpoint needs `Authorization:
                             Bearer <key>` or `X-API-Key: <key>`, and caches are told `private`;
                             /, /healthz, /readyz, /v2 and its health, /metrics and docs stay open
    GANOPS_MODEL_SHA256      the model's expected SHA-256 (--expect-sha256)
    GANOPS_HOST              --host             (default 127.0.0.1)
    GANOPS_PORT              --port             (default 8000)
    GANOPS_MAX_BATCH         --max-batch        most images in one micro-batched ONNX Runtime call
    GANOPS_MAX_WAIT_MS       --max-wait-ms      how long a micro-batch waits to fill
    GANOPS_QUEUE_SIZE        --queue-size       requests waiting; beyond it: 503 + Retry-After
    GANOPS_MAX_IMAGES        --max-images       images per request (and interpolation steps)
    GANOPS_MAX_BODY_BYTES    --max-body-bytes   request body limit (413 beyond it)
    GANOPS_MICRO_BATCHING    --no-micro-batching  "false" runs one ONNX Runtime call per request
    GANOPS_CACHE_MAX_AGE_S   --cache-max-age-s  Cache-Control max-age of the versioned image URLs
    GANOPS_PROVIDERS         --providers        auto | cpu | cuda
    GANOPS_ORT_THREADS       --ort-threads      ONNX Runtime intra-op threads (0: one per core)

Model check: the server hashes the model file before binding the port and refuses to start when
the sidecar `<model>.sha256` (written by the export stage) or the expected hash disagrees with
it, or when there is neither (that last case only is allowed by --no-verify).

Shutdown (SIGTERM, Ctrl-C): requests still waiting for the generator are answered 503 with
Retry-After and `Connection: close` at once, the batch already running finishes, and only then
does the process exit.

Imports only numpy, onnxruntime, fastapi/starlette, uvicorn, prometheus_client and the standard
library (through ganops.serving.inference and ganops.sampling): a slim deployment has no torch, dvc, mlflow.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import uvicorn

from ganops.serving.inference import OnnxGenerator, read_sidecar_sha256
from ganops.serving.app import create_app
from ganops.params import ServeParams

log = logging.getLogger("ganops.serving.server")


class ModelVerificationError(RuntimeError):
    """The model file's SHA-256 is not the one recorded at export (or there is nothing to check)."""


class Server(uvicorn.Server):
    """uvicorn's server, telling the app when shutdown begins: before it waits for requests in flight.

    `on_shutdown` (the batcher's close) makes every queued request answer 503 at once, so none is
    left to uvicorn's grace period and then dropped without an answer.
    """

    def __init__(self, config: uvicorn.Config, *, on_shutdown: Callable[[], None]):
        super().__init__(config)
        self.on_shutdown = on_shutdown

    async def shutdown(self, sockets=None) -> None:
        self.on_shutdown()
        await super().shutdown(sockets)


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


def serve(*, model_path: str | Path, config: ServeParams, api_key: str | None,
          expect_sha256: str | None, verify: bool, access_log: bool, log_level: str) -> None:
    """Verify the model, load it, and run uvicorn until interrupted (the model check comes first,
    so a refused model never binds the port)."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    digest = verify_model(model_path=model_path, expect_sha256=expect_sha256, verify=verify)
    generator = OnnxGenerator.from_onnx(model_path, providers=config.providers,
                                    intra_op_threads=config.ort_threads)
    if generator.sha256 != digest:
        raise ModelVerificationError(
            f"{model_path} changed while the server was starting (sha256 {digest} -> "
            f"{generator.sha256}); start it again once the file is in place"
        )
    app = create_app(generator=generator, config=config, api_key=api_key)
    server = Server(
        uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level.lower(),
                       access_log=access_log, timeout_graceful_shutdown=5),
        on_shutdown=app.state.service.batcher.close,
    )
    server.run()
