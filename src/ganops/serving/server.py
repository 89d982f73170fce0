"""`ganops serve`: check the model, load it, and run the HTTP app under uvicorn until told to stop.

Start it with `ganops serve --model models/generator.onnx` or `--model models:/ganops-generator@champion`
(the MLflow registry MLFLOW_TRACKING_URI names; serving.model_source). Endpoints (the app is in serving/app.py):

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
    POST /admin/reload          switch to the model the source gives now (needs GANOPS_API_KEY; serving/switch.py)

Environment variables (a command-line flag wins over its variable, which wins over the default):

    GANOPS_MODEL             the ONNX model (--model): a file, models:/<name>@<alias> or models:/<name>/<version>
    GANOPS_CACHE_DIR         --cache-dir: where registry versions are downloaded, as <sha256>.onnx
                             (default $XDG_CACHE_HOME/ganops/models, else ~/.cache/ganops/models)
    MLFLOW_TRACKING_URI      the registry of a models:/ URI: http(s)://<tracking server> (read over its
                             REST API; MLFLOW_TRACKING_TOKEN or _USERNAME/_PASSWORD if it needs them),
                             or, with the mlflow package (full environment), a sqlite:/file: store
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
it, or when there is neither (that last case only is allowed by --no-verify). A registry version is
downloaded, then checked the same way against its `model_sha256` tag (written at export).

Reload (SIGHUP, or POST /admin/reload with the API key): the model is fetched and checked again, loaded
and warmed up beside the old one, then swapped in; requests in flight finish on the old model, and a
model that fails any step leaves the old one serving (serving/switch.py).

Shutdown (SIGTERM, Ctrl-C): requests still waiting for the generator are answered 503 with
Retry-After and `Connection: close` at once, the batch already running finishes, and only then
does the process exit.

Imports only numpy, onnxruntime, fastapi/starlette, uvicorn, prometheus_client and the standard
library (through ganops.serving.inference and ganops.sampling): a slim deployment has no torch, dvc, mlflow
(a registry is read over HTTP with urllib: serving.registry_client).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import uvicorn

from ganops.params import ServeParams
from ganops.serving.model_source import ModelSource
from ganops.serving.switch import ModelSwitch

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


def serve(*, model: str, config: ServeParams, api_key: str | None, expect_sha256: str | None, verify: bool,
          cache_dir: Path, access_log: bool, log_level: str) -> None:
    """Fetch and verify the model (a file or a models:/ URI), load it, and run uvicorn until interrupted
    (the model check comes first, so a refused model never binds the port). SIGHUP reloads it."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    switch = ModelSwitch(source=ModelSource(spec=model, expect_sha256=expect_sha256, verify=verify,
                                            cache_dir=cache_dir),
                         config=config, api_key=api_key)
    switch.load_first()
    server = Server(
        uvicorn.Config(switch, host=config.host, port=config.port, log_level=log_level.lower(),
                       access_log=access_log, timeout_graceful_shutdown=5),
        on_shutdown=switch.close,
    )
    server.run()
