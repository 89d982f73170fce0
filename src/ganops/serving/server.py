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
    GANOPS_BATCH_THREADS     --batch-threads    micro-batches run at once in each worker
    GANOPS_WORKERS           --workers          server processes sharing the port

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

Workers (--workers N > 1): the parent checks the model, binds the port, and forks N workers that accept
on that one socket, each with its own model switch, batcher and ONNX Runtime session (the parent loads
no model). It relays SIGHUP to every worker, and a worker that gets POST /admin/reload (which reloads
it) tells the parent, which sends SIGHUP to the others; SIGTERM/SIGINT go to every worker,
and the parent exits once they have. A worker that dies stops the server (exit status 1): restarting it
is the supervisor's job (systemd, Kubernetes). /metrics is per process: each answer counts the requests
of the worker that answered it (README, "Serving throughput").

Imports only numpy, onnxruntime, fastapi/starlette, uvicorn, prometheus_client and the standard
library (through ganops.serving.inference and ganops.sampling): a slim deployment has no torch, dvc, mlflow
(a registry is read over HTTP with urllib: serving.registry_client).
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

import uvicorn

from ganops.params import ServeParams
from ganops.serving.model_source import Fetched, ModelSource
from ganops.serving.switch import ModelSwitch

log = logging.getLogger("ganops.serving.server")
PR_SET_PDEATHSIG = 1  # linux/prctl.h: a signal for the child when its parent dies

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
          cache_dir: Path, access_log: bool, log_level: str) -> int:
    """Fetch and verify the model (a file or a models:/ URI), load it, and run uvicorn until interrupted
    (the model check comes first, so a refused model never binds the port); the exit status. SIGHUP reloads it."""
    log_format = "%(levelname)s %(name)s[%(process)d]: %(message)s" if config.workers > 1 else \
        "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=log_level.upper(), format=log_format)
    source = ModelSource(spec=model, expect_sha256=expect_sha256, verify=verify, cache_dir=cache_dir)
    fetched = source.fetch()
    uvicorn_args = {"log_level": log_level.lower(), "access_log": access_log, "timeout_graceful_shutdown": 5}
    if config.workers == 1:
        switch = ModelSwitch(source=source, config=config, api_key=api_key, on_admin_reload=lambda: None)
        switch.load_first(fetched)
        Server(uvicorn.Config(switch, host=config.host, port=config.port, **uvicorn_args),
               on_shutdown=switch.close).run()
        return 0
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.create_server((config.host, config.port), family=family, backlog=2048)
    reloads, reloaded = multiprocessing.Pipe(duplex=False)  # a worker that reloads on POST /admin/reload sends its pid
    worker = Worker(source=source, fetched=fetched, config=config, api_key=api_key, uvicorn_args=uvicorn_args,
                    log_format=log_format, parent=os.getpid(), reloaded=reloaded)
    return supervise(workers=config.workers, worker=worker, sock=sock, reloads=reloads)


@dataclass(frozen=True)
class Worker:
    """What a worker process needs to serve (pickled to it: workers are spawned, not forked, since the
    parent already runs NumPy's and ONNX Runtime's threads)."""

    source: ModelSource
    fetched: Fetched
    config: ServeParams
    api_key: str | None
    uvicorn_args: dict
    log_format: str
    parent: int  # the supervisor's pid
    reloaded: Connection  # tells the supervisor this worker's pid, so that it reloads the other workers

    def __call__(self, sock: socket.socket) -> None:
        """In the worker: load the model, serve on `sock` until told to stop, and exit (never returns)."""
        code = 1
        try:
            # Die with the parent (even a SIGKILLed one), rather than serve on unsupervised.
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != self.parent:
                os._exit(1)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the switch handles it: a reload, never a kill
            # Stop while loading; uvicorn re-raises the signal that stopped it, after its graceful shutdown.
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, _exit_cleanly)
            logging.basicConfig(level=self.uvicorn_args["log_level"].upper(), format=self.log_format)
            switch = ModelSwitch(source=self.source, config=self.config, api_key=self.api_key,
                                 on_admin_reload=lambda: self.reloaded.send_bytes(os.getpid().to_bytes(8, "little")))
            switch.load_first(self.fetched)
            Server(uvicorn.Config(switch, **self.uvicorn_args), on_shutdown=switch.close).run(sockets=[sock])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            log.exception("worker %d failed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)


def supervise(*, workers: int, worker: Worker, sock: socket.socket, reloads: Connection) -> int:
    """Start `workers` processes serving on the bound `sock`, relay signals to them (see the module
    docstring), and wait for them: 0 when they all stopped because they were told to, else 1."""
    # Signals set flags in any thread; the wake-up fd hands their numbers to the loop below.
    wake, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    relayed = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)
    handlers = {sig: signal.signal(sig, lambda *_: None) for sig in relayed}
    previous_wakeup = signal.set_wakeup_fd(wake_w.fileno())
    processes = [multiprocessing.get_context("spawn").Process(target=worker, args=(sock,), name=f"ganops-worker-{i}")
                 for i in range(workers)]
    for p in processes:
        p.start()
    sock.close()  # the workers hold it
    log.info("%d workers started: %s", workers, [p.pid for p in processes])
    status, stopping = 0, False

    def tell(sig: int, to: list) -> None:
        for p in to:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, sig)

    while alive := [p for p in processes if p.exitcode is None]:
        ready = wait([wake, reloads, *(p.sentinel for p in alive)])
        for p in alive:
            if p.sentinel in ready:
                p.join()
                if not stopping:
                    log.error("worker %d exited (%s) unasked: stopping the server", p.pid, p.exitcode)
                    status, stopping = 1, True
                    tell(signal.SIGTERM, processes)
                elif p.exitcode != 0:
                    status = 1
        if wake in ready:
            for sig in wake.recv(64):
                if sig in (signal.SIGTERM, signal.SIGINT):
                    stopping = True
                    tell(signal.SIGTERM, alive)
                elif sig == signal.SIGHUP and not stopping:
                    tell(signal.SIGHUP, alive)
        if reloads in ready:
            sender = int.from_bytes(reloads.recv_bytes(), "little")
            if not stopping:
                tell(signal.SIGHUP, [p for p in alive if p.pid != sender])
    signal.set_wakeup_fd(previous_wakeup)
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    wake.close()
    wake_w.close()
    return status


def _exit_cleanly(sig: int, frame) -> None:
    raise SystemExit(0)
