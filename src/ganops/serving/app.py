"""The FastAPI app over one generator: the /v1 and /v2 routes, health, metrics, the web page, offline docs.

    app = create_app(generator=OnnxGenerator.from_onnx(path), config=ServeParams(), api_key=None)

Routes are module-level functions; what they share (generator, batcher, contract, limits) is one
`Service` (serving.service) on `app.state`, built by create_app. The request models and the documented responses
come from `ganops.serving.contract`, built for this generator, so the OpenAPI document is what the server
enforces. The /v2 routes (the Open Inference Protocol) are serving.oip's, on the same Service.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
from pathlib import Path
from typing import Annotated

import fastapi_offline
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ganops import __version__
from ganops.serving.batcher import MicroBatcher, Overloaded, ShuttingDown
from ganops.serving.contract import (
    BadJson,
    ErrorBody,
    ImagesBody,
    MAX_JSON_SEED,
    ValidationErrorBody,
    build_contract,
)
from ganops.serving.guard import Guard, busy_response, error_response, key_matches
from ganops.serving.inference import OnnxGenerator
from ganops.serving.oip import add_oip_routes
from ganops.serving.interpolation import lerp, slerp
from ganops.png import png
from ganops.sampling import MAX_SEED, grid, latent, latents
from ganops.serving.images import LATEST_ROUTE, VERSIONED_ROUTE, latest_image, lean, versioned_image
from ganops.params import ServeParams
from ganops.serving.prometheus import Metrics
from ganops.serving.service import Service, service as _service

log = logging.getLogger("ganops.serving.server")
STATIC_DIR = Path(__file__).parent / "static"
# Swagger UI's files, shipped by the fastapi-offline package: /docs works with no network.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
POST_PATHS = ("/v1/generate", "/v1/interpolate")
# Lineage headers on every image response: header -> ONNX metadata key written by the export stage.
LINEAGE_HEADERS = {
    "X-Ganops-Git-Commit": "git_commit",
    "X-Ganops-Data-Manifest": "data_manifest_sha256",
    "X-Ganops-Params-Sha256": "params_sha256",
    "X-Ganops-Mlflow-Run": "mlflow_run_id",
    "X-Ganops-Dataset": "dataset",
}
MAX_HEADER_VALUE = 100  # characters: metadata never makes a header large (proxies cap them at 4-8 KB)


# --- health, metrics, pages -------------------------------------------------------------------


async def healthz() -> dict:
    """The process is alive."""
    return {"status": "ok"}


async def readyz(request: Request) -> JSONResponse:
    """The model is loaded and a warm-up inference has run."""
    svc = _service(request)
    if svc.batcher.closing:
        return error_response(503, "shutting down", {"Retry-After": "1"})
    if svc.ready:
        return JSONResponse({"status": "ready", "model_sha256": svc.generator.sha256})
    if svc.warmup_error:
        return error_response(503, f"warm-up failed: {svc.warmup_error}")
    return error_response(503, "warming up", {"Retry-After": "1"})


async def prometheus_metrics(request: Request) -> Response:
    """Prometheus metrics: requests, latency, batch sizes, queue depth."""
    return Response(generate_latest(_service(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def index(request: Request) -> Response:
    return Response(
        _service(request).index_html,
        media_type="text/html; charset=utf-8",
        # Everything is served from here: no inline script, no other origin.
        headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:",
                 "Cache-Control": "no-cache"},
    )


async def docs(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json", title="ganops API",
        swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs/assets/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},  # Swagger UI would ask a public validator
    )


# --- /v1 ----------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False)
_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


async def require_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_key_header)],
) -> None:
    if not key_matches(_service(request).api_key, credentials and credentials.credentials, header_key):
        raise HTTPException(
            401, detail="missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def model_info(request: Request) -> dict:
    """The model: shape, classes, lineage, provider, SHA-256, limits, and its permanent image URLs."""
    svc = _service(request)
    g, c, meta = svc.generator, svc.config, svc.generator.metadata
    return {
        "model_sha256": g.sha256, "provider": g.provider, "z_dim": g.z_dim,
        "conditional": g.conditional, "num_classes": g.num_classes, "classes": svc.classes,
        "resolution": g.resolution, "channels": g.channels,
        # A prefix, not a template with {seed} in it: a URL pattern reads as a link to follow.
        "image_url_prefix": svc.image_path("")[: -len(".png")],
        "image_url_form": "<image_url_prefix><seed>.png" + ("?label=<class>" if g.conditional else ""),
        "lineage": {k: meta[k] for k in sorted(meta) if isinstance(meta[k], str)},
        "limits": {"max_images": c.max_images, "max_seed": MAX_SEED, "max_json_seed": MAX_JSON_SEED,
                   "max_body_bytes": c.max_body_bytes},
        "micro_batching": {"enabled": c.micro_batching, "max_batch": c.max_batch,
                           "max_wait_ms": c.max_wait_ms, "queue_size": c.queue_size},
        "interpolation": "slerp (spherical) by default; lerp on request",
        "ganops_version": __version__,
    }


async def generate(request: Request) -> Response:
    """Many images as a PNG grid, a JSON list of base64 PNGs, or an .npy array."""
    svc = _service(request)
    body = svc.contract.parse_generate(await request.body())
    seeds = svc.contract.seeds_of(body)
    labels = svc.contract.labels_for(body.labels if svc.contract.conditional else None, len(seeds))
    z = latents(seeds, svc.generator.z_dim)
    images = await svc.batcher.submit(z, labels, png=body.format == "png")
    svc.images.inc(len(seeds))
    # Bounded headers: the seeds are the request's; a proxy's header buffer is a few KB.
    headers = {**svc.lineage, "X-Ganops-Count": str(len(seeds))}
    if svc.contract.conditional and isinstance(body.labels, int):
        headers["X-Ganops-Label"] = str(body.labels)
    if body.format == "grid":
        data = await asyncio.to_thread(png, grid(images, ncol=body.ncol))  # big: off the loop
        return Response(data, media_type="image/png", headers=headers)
    if body.format == "npy":
        buf = io.BytesIO()
        np.save(buf, images, allow_pickle=False)
        headers["Content-Disposition"] = 'attachment; filename="images.npy"'
        return Response(buf.getvalue(), media_type="application/octet-stream", headers=headers)
    items = [{"seed": s, "label": None if labels is None else int(labels[i]),
              "png_base64": base64.b64encode(images[i]).decode()} for i, s in enumerate(seeds)]
    return JSONResponse({"model_sha256": svc.generator.sha256, "images": items}, headers=headers)


async def interpolate(request: Request) -> Response:
    """A PNG strip (one row) from seed_a to seed_b, both ends included."""
    svc = _service(request)
    body = svc.contract.parse_interpolate(await request.body())
    label = body.label if svc.contract.conditional else None
    labels = svc.contract.labels_for(label, body.steps)
    a, b = latent(body.seed_a, svc.generator.z_dim), latent(body.seed_b, svc.generator.z_dim)
    z = slerp(a, b, body.steps) if body.method == "slerp" else lerp(a, b, body.steps)
    images = await svc.batcher.submit(z, labels)
    svc.images.inc(body.steps)
    headers = {**svc.lineage, "X-Ganops-Seeds": f"{body.seed_a},{body.seed_b}",
               "X-Ganops-Interpolation": body.method}
    if label is not None:
        headers["X-Ganops-Label"] = str(label)
    data = await asyncio.to_thread(png, grid(images, ncol=body.steps))
    return Response(data, media_type="image/png", headers=headers)


# --- errors -------------------------------------------------------------------------------------


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "the body is not valid JSON")
    # The documented shape only: pydantic's own would echo each bad input (a 60 kB list) back.
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in errors[:10]]
    return JSONResponse({"detail": detail}, status_code=422)


async def _bad_json(request: Request, exc: BadJson) -> JSONResponse:
    return error_response(400, str(exc))


async def _busy(request: Request, exc: Overloaded | ShuttingDown) -> JSONResponse:
    return busy_response(exc)


# --- the app ------------------------------------------------------------------------------------


class App(FastAPI):
    """FastAPI, with serve_images' lean path in front of it for the image GETs."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and await lean(self.state.service, scope, receive, send):
            return
        await super().__call__(scope, receive, send)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    svc: Service = app.state.service
    await svc.batcher.start()
    task = asyncio.create_task(warm_up(svc))
    yield
    task.cancel()
    await svc.batcher.stop()


async def warm_up(svc: Service) -> None:
    """Run one image, then a full batch (ONNX Runtime allocates its buffers on first use); then `svc.ready`,
    or `svc.warmup_error` says why not. Needs the batcher started."""
    try:
        for n in (1, svc.config.max_batch):
            labels = np.zeros(n, np.int64) if svc.generator.conditional else None
            await svc.batcher.submit(latents(range(n), svc.generator.z_dim), labels, png=n == 1)
        svc.ready = True
        log.info("ganops server ready: %r", svc.generator)
    except Exception as e:
        svc.warmup_error = f"{type(e).__name__}: {e}"
        log.exception("warm-up inference failed")


def _doc(description: str, model=None, content: dict | None = None, headers: dict | None = None) -> dict:
    out: dict = {"description": description}
    if model is not None:
        out["model"] = model
    if content is not None:
        out["content"] = content
    if headers is not None:
        out["headers"] = headers
    return out


def _header(description: str, *, required: bool = True) -> dict:
    return {"description": description, "required": required, "schema": {"type": "string"}}


_PNG = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
_ERRORS = {
    422: _doc("the request does not match the schema (or, for a label, the model)", ValidationErrorBody),
    503: _doc("overloaded or shutting down: retry after Retry-After seconds", ErrorBody),
}
_BODY_ERRORS = {
    400: _doc("the body is not valid JSON", ErrorBody),
    413: _doc("the body is over serve.max_body_bytes", ErrorBody),
    415: _doc("the Content-Type is not application/json", ErrorBody),
    **_ERRORS,
}


def create_app(*, generator: OnnxGenerator, config: ServeParams, api_key: str | None) -> FastAPI:
    """The FastAPI app serving `generator`; micro-batcher and warm-up start with the app's lifespan."""
    return build_app(generator=generator, config=config, api_key=api_key, metrics=Metrics())


def build_app(*, generator: OnnxGenerator, config: ServeParams, api_key: str | None, metrics: Metrics) -> FastAPI:
    """create_app, counting into `metrics`: a server switching models (serving.switch) keeps one set of metrics
    and starts and stops each model's Service itself rather than through this app's lifespan."""
    meta = generator.metadata
    classes = [str(c) for c in meta.get("classes") or []]
    if generator.conditional and len(classes) != generator.num_classes:
        classes = [str(i) for i in range(generator.num_classes)]
    lineage = {"X-Ganops-Model-Sha256": generator.sha256,
               **{h: _header_value(meta.get(k, "unknown")) for h, k in LINEAGE_HEADERS.items()}}
    svc = Service(
        generator=generator, config=config, api_key=api_key, metrics=metrics,
        images=metrics.images.labels(generator.sha256),
        batcher=MicroBatcher(generator=generator, max_batch=config.max_batch,
                             max_wait_ms=config.max_wait_ms, queue_size=config.queue_size,
                             enabled=config.micro_batching, metrics=metrics, encode_png=png,
                             threads=config.batch_threads),
        contract=build_contract(conditional=generator.conditional, num_classes=generator.num_classes,
                                image_shape=generator.image_shape,
                                max_images=config.max_images),
        lineage=lineage,
        lineage_raw=[(k.lower().encode(), v.encode("latin-1")) for k, v in lineage.items()],
        classes=classes, index_html=(STATIC_DIR / "index.html").read_bytes(),
    )
    app = App(
        title="ganops", version=__version__, lifespan=_lifespan, docs_url=None, redoc_url=None,
        description="Images from an exported ganops generator. Seed s always names the same image "
        "for a given model (X-Ganops-Model-Sha256); /v1/models/{sha256}/images/{seed}.png is its "
        "permanent URL.",
    )
    app.state.service = svc
    app.add_middleware(Guard, metrics=metrics, model_sha256=generator.sha256, max_body_bytes=config.max_body_bytes,
                       post_paths=POST_PATHS)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(BadJson, _bad_json)
    app.add_exception_handler(Overloaded, _busy)
    app.add_exception_handler(ShuttingDown, _busy)

    app.add_api_route("/healthz", healthz, tags=["health"], responses={200: _doc("alive")})
    app.add_api_route("/readyz", readyz, tags=["health"], responses={
        200: _doc("ready"), 503: _doc("warming up, warm-up failed, or shutting down", ErrorBody)})
    app.add_api_route("/metrics", prometheus_metrics, tags=["health"], response_class=PlainTextResponse)
    app.add_api_route("/", index, include_in_schema=False)
    app.add_api_route("/docs", docs, include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs/assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    auth = {401: _doc("missing or wrong API key", ErrorBody)} if api_key else {}
    # No key, no dependency: it would cost every request a dependency solve for nothing.
    v1 = APIRouter(prefix="/v1", tags=["v1"], responses=auth,
                   dependencies=[Depends(require_key)] if api_key else [])
    v1.add_api_route("/model", model_info)
    lineage = {"ETag": _header("strong: model, seed and label"), "Cache-Control": _header("caching"),
               "X-Ganops-Model-Sha256": _header("the model that drew it"),
               "X-Ganops-Seed": _header("the seed")}
    what = f"a {generator.resolution}x{generator.resolution} {'RGB' if generator.channels == 3 else 'grayscale'} PNG"
    image_docs = {200: _doc(what, content=_PNG, headers=lineage),
                  304: _doc("If-None-Match matched the ETag"), **_ERRORS}
    v1.add_api_route(LATEST_ROUTE.removeprefix("/v1"), latest_image, response_class=Response, responses={
        **image_docs, 200: _doc(what, content=_PNG, headers={
            **lineage, "Content-Location": _header("the permanent URL of this image")})},
        openapi_extra={"parameters": svc.contract.image_parameters(sha256=None)})
    v1.add_api_route(VERSIONED_ROUTE.removeprefix("/v1"), versioned_image, response_class=Response,
                     responses={**image_docs, 404: _doc("another model's URL", ErrorBody)},
                     openapi_extra={"parameters": svc.contract.image_parameters(sha256=generator.sha256)})
    v1.add_api_route("/generate", generate, methods=["POST"], response_class=Response, responses={
        200: _doc("grid: image/png; png: JSON; npy: .npy bytes", ImagesBody, content={
            **_PNG, "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            headers={"X-Ganops-Count": _header("images drawn")}),
        **_BODY_ERRORS,
    }, openapi_extra=_json_body(svc.contract.generate_schema()))
    v1.add_api_route("/interpolate", interpolate, methods=["POST"], response_class=Response, responses={
        200: _doc("one row of `steps` images", content=_PNG), **_BODY_ERRORS,
    }, openapi_extra=_json_body(svc.contract.interpolate_form.model_json_schema()))
    app.include_router(v1)
    add_oip_routes(app, svc)
    return app


def _json_body(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _header_value(value: object) -> str:
    """Metadata as a header value: latin-1 safe, one line, at most MAX_HEADER_VALUE characters."""
    text = str(value).replace("\r", " ").replace("\n", " ")[:MAX_HEADER_VALUE]
    return text.encode("latin-1", "replace").decode("latin-1")
