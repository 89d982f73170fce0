"""GET one image: its headers, the ETag check and the render, for the routes and a lean ASGI path.

The two image URLs are the hot path (a page of samples is dozens of them). `lean()` answers the
common request, a valid seed with the right label and key, straight from the ASGI scope, without
FastAPI's middleware stack, routing and dependency solving: measured here, that took about half of
the event loop's time per image (README, "Serving throughput"). Anything else falls through to
the FastAPI routes below, so each error is produced and documented in one place, and both paths
build their headers and bodies with the same functions.
"""
from __future__ import annotations

import re
import time
import numpy as np
from fastapi import Request
from fastapi.responses import Response

from ganops.serving.batcher import Overloaded, ShuttingDown
from ganops.serving.guard import busy_response, error_response, key_matches
from ganops.sampling import MAX_SEED, latent
from ganops.serving.service import Service

LATEST_ROUTE = "/v1/images/{seed}.png"
VERSIONED_ROUTE = "/v1/models/{sha256}/images/{seed}.png"
_LATEST = re.compile(r"/v1/images/([0-9]{1,19})\.png")  # ASCII digits only, as the routes take
_VERSIONED = re.compile(r"/v1/models/([0-9a-f]{64})/images/([0-9]{1,19})\.png")
_LABEL = re.compile(rb"label=([0-9]{1,19})")


def etag(svc: Service, seed: int, label: int | None) -> str:
    """Strong: the model, the seed and the label name exactly one image."""
    return f'"{svc.generator.sha256[:16]}-{seed}-{"u" if label is None else label}"'


def image_headers(svc: Service, *, seed: int, label: int | None, versioned: bool) -> list[tuple[bytes, bytes]]:
    """Lineage, seed, label, ETag, Cache-Control (and Content-Location) as raw ASGI headers."""
    headers = [*svc.lineage_raw, (b"x-ganops-seed", str(seed).encode()),
               (b"etag", etag(svc, seed, label).encode())]
    if label is not None:
        headers.append((b"x-ganops-label", str(label).encode()))
    if versioned:  # the URL names the model: this response can never go stale
        headers.append((b"cache-control", f"{svc.cache_scope}, max-age={svc.config.cache_max_age_s}, immutable".encode()))
    else:  # the next model may draw another image here: keep it, but revalidate every time
        headers.append((b"cache-control", f"{svc.cache_scope}, no-cache".encode()))
        query = "" if label is None else f"?label={label}"
        headers.append((b"content-location", (svc.image_path(seed) + query).encode()))
    return headers


def etag_matches(if_none_match: str | None, tag: str) -> bool:
    """RFC 9110 If-None-Match: `*` or any listed tag equal to `tag` under weak comparison."""
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == tag for t in tags)


async def render(svc: Service, seed: int, label: int | None) -> bytes:
    """The PNG of one seed (and label), through the micro-batcher."""
    labels = None if label is None else np.full(1, label, np.int64)
    (png,) = await svc.batcher.submit(latent(seed, svc.generator.z_dim)[None], labels, png=True)
    svc.images.inc()
    return png


# --- the FastAPI routes: documented, and every error ---------------------------------------------


async def latest_image(request: Request) -> Response:
    """One image by seed, for whichever model is served now: revalidate it (ETag, no-cache)."""
    return await _route(request, request.app.state.service, versioned=False)


async def versioned_image(request: Request) -> Response:
    """One image of one model: the URL names the model, so it is cacheable forever (immutable)."""
    svc = request.app.state.service
    if request.path_params["sha256"] != svc.generator.sha256:
        return error_response(404, f"this server serves model {svc.generator.sha256}, not "
                                   f"{request.path_params['sha256'][:64]!r}: GET /v1/model for its image URLs")
    return await _route(request, svc, versioned=True)


async def _route(request: Request, svc: Service, *, versioned: bool) -> Response:
    seed = svc.contract.parse_seed(request.path_params["seed"])
    label = svc.contract.parse_label(request.query_params.get("label"))
    headers = image_headers(svc, seed=seed, label=label, versioned=versioned)
    if etag_matches(request.headers.get("if-none-match"), etag(svc, seed, label)):
        response = Response(status_code=304)
    else:
        response = Response(await render(svc, seed, label), media_type="image/png")
    response.raw_headers.extend(headers)
    return response


# --- the lean path --------------------------------------------------------------------------------


async def lean(svc: Service, scope: dict, receive, send) -> bool:
    """Answer a well-formed image GET from the scope and return True; False leaves it to the routes."""
    if scope["method"] != "GET":
        return False
    path = scope["path"]
    if m := _LATEST.fullmatch(path):
        route, versioned, seed_text = LATEST_ROUTE, False, m[1]
    elif (m := _VERSIONED.fullmatch(path)) and m[1] == svc.generator.sha256:
        route, versioned, seed_text = VERSIONED_ROUTE, True, m[2]
    else:
        return False
    seed = int(seed_text)
    label = None
    if svc.contract.conditional:
        q = _LABEL.fullmatch(scope["query_string"])
        if q is None or int(q[1]) >= svc.contract.num_classes:
            return False
        label = int(q[1])
    elif scope["query_string"]:
        return False
    headers = {}
    for name, value in scope["headers"]:  # the first of each, as the routes read them
        headers.setdefault(name, value)
    if seed > MAX_SEED or not (svc.api_key is None or key_ok(svc.api_key, headers)):
        return False
    if_none_match = headers[b"if-none-match"].decode("latin-1") if b"if-none-match" in headers else None
    start = time.perf_counter()
    raw = image_headers(svc, seed=seed, label=label, versioned=versioned)
    if etag_matches(if_none_match, etag(svc, seed, label)):
        status, body = 304, b""
    else:
        try:
            status, body = 200, await render(svc, seed, label)
        except (Overloaded, ShuttingDown) as e:
            response = busy_response(e)
            await response(scope, receive, send)
            svc.metrics.observe(route, "GET", response.status_code, time.perf_counter() - start, svc.generator.sha256)
            return True
        raw += [(b"content-type", b"image/png"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
    svc.metrics.observe(route, "GET", status, time.perf_counter() - start, svc.generator.sha256)
    return True


def key_ok(api_key: str, headers: dict[bytes, bytes]) -> bool:
    """The key, as `Authorization: Bearer <key>` or `X-API-Key: <key>` (else the route answers 401)."""
    bearer = headers.get(b"authorization", b"")
    return key_matches(api_key, bearer[7:].strip() if bearer[:7].lower() == b"bearer " else None,
                       headers.get(b"x-api-key"))
