"""ASGI middleware in front of the app: per-route metrics, and JSON-body checks on the POST routes."""
from __future__ import annotations

import hmac
import time
from collections.abc import Collection

from fastapi.responses import JSONResponse

from ganops.serving.batcher import ShuttingDown
from ganops.serving.prometheus import Metrics


def key_matches(api_key: str, *supplied: str | bytes | None) -> bool:
    """Whether any supplied key (a Bearer token, an X-API-Key header) is the server's: one constant-time
    comparison for /v1, /v2, the image fast path and /admin."""
    expected = api_key.encode()
    return any(key and hmac.compare_digest(key if isinstance(key, bytes) else key.encode(), expected)
               for key in supplied)


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The documented error body, {"detail": "..."}."""
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def busy_response(exc: Exception) -> JSONResponse:
    """503 for Overloaded or ShuttingDown: retry after a second (elsewhere, when shutting down)."""
    if isinstance(exc, ShuttingDown):
        # Close the connection too: the client's retry should reach a server that is staying up.
        return error_response(503, f"{exc}; retry later", {"Retry-After": "1", "Connection": "close"})
    return error_response(503, f"server overloaded: {exc}; retry later", {"Retry-After": "1"})


class Guard:
    """Counts and times every request by route and model; refuses bad bodies before any route reads them.

    A POST to one of `post_paths` must be JSON (else 415) and at most `max_body_bytes` long (else
    413), checked while reading, so a huge or endless body is never held in memory. Other methods
    on those paths, and every other path, go on to the router (which answers a wrong method 405).
    """

    def __init__(self, app, *, metrics: Metrics, model_sha256: str, max_body_bytes: int, post_paths: Collection[str]):
        self.app = app
        self.metrics = metrics
        self.model_sha256 = model_sha256  # the model of this app: every request it answers is counted for it
        self.max_body_bytes = max_body_bytes
        self.post_paths = frozenset(post_paths)

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
            if scope["method"] == "POST" and scope["path"] in self.post_paths:
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
                else "refused" if scope["path"] in self.post_paths and status in (413, 415)
                else "unmatched"
            )
            self.metrics.observe(endpoint, scope["method"], status, time.perf_counter() - start, self.model_sha256)

    async def _check_body(self, scope, receive):
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return error_response(
                415, f"Content-Type must be application/json, got {ctype[:60] or 'none'!r}"), receive
        limit = self.max_body_bytes
        too_big = error_response(413, f"request body over the {limit}-byte limit (serve.max_body_bytes)")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return too_big, receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return error_response(400, "client disconnected"), receive
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
