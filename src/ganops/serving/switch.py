"""The model a running server serves, and switching it without downtime on SIGHUP or POST /admin/reload.

    switch = ModelSwitch(source=ModelSource(...), config=ServeParams(), api_key="k3y", on_admin_reload=lambda: None)
    switch.load_first(source.fetch())  # fetched before the port is bound: a refused model never binds it
    uvicorn.run(switch)       # then `kill -HUP <pid>` or `POST /admin/reload` switches to the model the source gives now

Each model has an app of its own (serving.app.build_app: routes, OpenAPI document, a Service with its
micro-batcher); the switch hands each request to the app of the model that is current when it arrives.
A reload fetches the source again (the alias may have moved, the file may be new), loads that model and
warms it up beside the old one, and only then makes it current, so readiness never drops. Requests
already in the old model's app finish there; once none is left (at most DRAIN_S) its batcher stops.
From the switch on, the old model's immutable image URLs answer 404 naming the model served, as any
other model's do (what caches hold stays right: the URL names the model that drew it). A failed fetch, load or warm-up leaves the old model serving, and says why: in the admin
answer, the log, /admin/reload's GET, and ganops_model_reloads_total{outcome="failed"}.

    POST /admin/reload   the server's API key (Bearer or X-API-Key) required: 200 {"outcome": "switched" or
                         "unchanged", ...}; 502 {"outcome": "failed", "error": ...} (the old model stays);
                         401 for a missing or wrong key; 403 when the server has no key (use SIGHUP)
    GET  /admin/reload   the model served, where it came from, the last reload, and the answering process's pid

With several workers (serving.server) each process has its own switch: the parent relays SIGHUP to every
worker, and a worker answering POST /admin/reload calls `on_admin_reload` so that the parent sends the
others SIGHUP; its answer is its own outcome.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from ganops.params import ServeParams
from ganops.serving.app import build_app, warm_up
from ganops.serving.images import key_ok
from ganops.serving.model_source import Fetched, ModelSource, load_generator
from ganops.serving.prometheus import Metrics
from ganops.serving.service import Service

log = logging.getLogger("ganops.serving.switch")
ADMIN_PATH = "/admin/reload"
DRAIN_S = 30.0  # how long a replaced model waits for its requests in flight before its batcher stops


@dataclass(eq=False)
class _Model:
    """One loaded model: its app, and how many requests are inside that app now."""

    app: FastAPI
    svc: Service
    fetched: Fetched  # where it came from
    in_flight: int = 0
    drained: asyncio.Event | None = None  # set when the last request leaves, once the model is replaced

    @property
    def sha256(self) -> str:
        return self.svc.generator.sha256

    @property
    def source(self) -> str:
        """e.g. "models:/ganops-generator@champion (v3)" or the file's path."""
        return self.fetched.description


class ModelSwitch:
    """An ASGI app that forwards each request to the current model's app, and swaps in a new model."""

    def __init__(self, *, source: ModelSource, config: ServeParams, api_key: str | None,
                 on_admin_reload: Callable[[], None]):
        self.source = source
        self.on_admin_reload = on_admin_reload  # a worker asks the parent to reload its siblings too
        self.config = config
        self.api_key = api_key
        self.metrics = Metrics()  # one set for the server's life, whichever models answered
        self.current: _Model | None = None
        self.last_reload: dict | None = None
        self._retiring: list[_Model] = []
        self._tasks: set[asyncio.Task] = set()
        self._lock = asyncio.Lock()  # one reload at a time: a second waits, then fetches again
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    def load_first(self, fetched: Fetched) -> None:
        """Load the first model, fetched and checked by `source.fetch()` (its batcher starts with the server)."""
        self.current = self._load(fetched)

    def _load(self, fetched: Fetched) -> _Model:
        generator = load_generator(fetched, providers=self.config.providers, intra_op_threads=self.config.ort_threads)
        app = build_app(generator=generator, config=self.config, api_key=self.api_key, metrics=self.metrics)
        return _Model(app=app, svc=app.state.service, fetched=fetched)

    # --- requests -------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "http" and scope["path"] == ADMIN_PATH:
            await self._admin(scope, receive, send)
            return
        model = self.current  # read once: this request stays with this model, whatever happens meanwhile
        model.in_flight += 1
        try:
            await model.app(scope, receive, send)
        finally:
            model.in_flight -= 1
            if model.in_flight == 0 and model.drained is not None:
                model.drained.set()

    async def _admin(self, scope, receive, send) -> None:
        start = time.perf_counter()
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)
        method = scope["method"]
        if self.api_key is None:
            response = JSONResponse({"detail": "the admin API needs an API key: start the server with "
                                               "GANOPS_API_KEY, or send the process SIGHUP to reload"}, 403)
        elif not key_ok(self.api_key, headers):
            response = JSONResponse({"detail": "missing or wrong API key: send 'Authorization: Bearer <key>' "
                                               "or 'X-API-Key: <key>'"}, 401, {"WWW-Authenticate": "Bearer"})
        elif method == "POST":
            self.on_admin_reload()
            outcome = await self.reload(trigger=f"POST {ADMIN_PATH}")
            status = {"switched": 200, "unchanged": 200, "failed": 502}[outcome["outcome"]]
            response = JSONResponse(outcome, status)
        elif method == "GET":
            response = JSONResponse({"model_sha256": self.current.sha256, "source": self.current.source,
                                     "last_reload": self.last_reload, "pid": os.getpid()})
        else:
            response = JSONResponse({"detail": f"{method} not allowed: POST reloads, GET tells"}, 405,
                                    {"Allow": "GET, POST"})
        await response(scope, receive, send)
        self.metrics.observe(ADMIN_PATH, method, response.status_code, time.perf_counter() - start,
                             self.current.sha256)

    # --- reloads -------------------------------------------------------------------------------

    async def reload(self, *, trigger: str) -> dict:
        """Fetch the source again and switch to its model once it is warm; the outcome as a dict
        ({"outcome": "switched" | "unchanged" | "failed", ...}, also kept as `last_reload`)."""
        async with self._lock:
            old, start = self.current, time.perf_counter()
            fetched, new = None, None
            try:
                if self._closing:
                    raise RuntimeError("the server is shutting down")
                fetched = await asyncio.to_thread(self.source.fetch)
                if fetched.sha256 != old.sha256:
                    new = await asyncio.to_thread(self._load, fetched)
                    await new.svc.batcher.start()
                    await warm_up(new.svc)
                    if not new.svc.ready or self._closing:
                        raise RuntimeError(f"warm-up failed: {new.svc.warmup_error}" if not new.svc.ready
                                           else "the server is shutting down")
            except Exception as e:  # anything at all: the old model keeps serving, and the answer says why
                if new is not None:
                    await new.svc.batcher.stop()
                if fetched is not None and fetched.sha256 != old.sha256:
                    self.source.release(fetched)
                self._track_queue_depth()
                return self._record(trigger, "failed", old=old, new=None, source=self.source.spec,
                                    seconds=time.perf_counter() - start, error=f"{type(e).__name__}: {e}")
            if new is None:
                return self._record(trigger, "unchanged", old=old, new=old, source=fetched.description,
                                    seconds=time.perf_counter() - start, error=None)
            self.current = new  # from here on every new request goes to the new model
            self._track_queue_depth()
            self.metrics.model.remove(old.sha256, old.source)
            self.metrics.model.labels(new.sha256, new.source).set(1)
            self._retiring.append(old)
            self._spawn(self._retire(old))
            return self._record(trigger, "switched", old=old, new=new, source=new.source,
                                seconds=time.perf_counter() - start, error=None)

    def _record(self, trigger: str, outcome: str, *, old: _Model, new: _Model | None, source: str,
                seconds: float, error: str | None) -> dict:
        self.metrics.reloads.labels(outcome).inc()
        self.last_reload = {"trigger": trigger, "outcome": outcome, "at": time.time(), "seconds": round(seconds, 3),
                            "model_sha256": (new or old).sha256, "previous_sha256": old.sha256, "source": source,
                            "error": error}
        if error is None:
            log.info("%s: %s to %s (sha256 %s) in %.2f s", trigger, outcome, source, (new or old).sha256, seconds)
        else:
            log.error("%s: reload failed, still serving %s (sha256 %s): %s", trigger, old.source, old.sha256, error)
        return self.last_reload

    async def _retire(self, old: _Model) -> None:
        """Let the replaced model's requests finish (at most DRAIN_S), then stop its batcher."""
        if old.in_flight:
            log.info("%d requests in flight on the replaced model %s: they finish on it", old.in_flight, old.sha256)
            old.drained = asyncio.Event()
            try:
                await asyncio.wait_for(old.drained.wait(), DRAIN_S)
            except TimeoutError:
                log.warning("%d requests still on the replaced model %s after %.0f s: their batches are "
                            "answered 503", old.in_flight, old.sha256, DRAIN_S)
        await old.svc.batcher.stop()
        self._retiring.remove(old)
        self.source.release(old.fetched)

    def _track_queue_depth(self) -> None:
        # Starting a batcher points the gauge at it; it should follow the model that takes requests.
        self.metrics.queue_depth.set_function(self.current.svc.batcher.queue_depth)

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_sighup(self) -> None:
        self._spawn(self.reload(trigger="SIGHUP"))

    # --- start and stop ----------------------------------------------------------------------------

    def close(self) -> None:
        """Shutdown begins: every model's waiting requests are answered 503 (signal-safe: flags only)."""
        self._closing = True
        for model in (self.current, *self._retiring):
            model.svc.batcher.close()

    async def _lifespan(self, receive, send) -> None:
        await receive()  # lifespan.startup
        self._loop = asyncio.get_running_loop()
        await self.current.svc.batcher.start()
        self._spawn(warm_up(self.current.svc))  # /readyz says 503 until it has run, as without a switch
        self.metrics.model.labels(self.current.sha256, self.current.source).set(1)
        # Signals reach the main thread only (a server run in a thread, as some tests do, has no SIGHUP).
        sighup = threading.current_thread() is threading.main_thread()
        if sighup:
            self._loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        if sighup:
            self._loop.remove_signal_handler(signal.SIGHUP)
        self.close()
        for task in list(self._tasks):
            task.cancel()
        for model in (self.current, *self._retiring):
            await model.svc.batcher.stop()
        await send({"type": "lifespan.shutdown.complete"})
