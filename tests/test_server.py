"""The HTTP server: endpoints, caching, bad input, bounded headers, batching, overload, API key."""
from __future__ import annotations

import base64
import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from _serving import CLASSES, LINEAGE, decode_png, running, shared_model

from ganops.serving.contract import MAX_JSON_SEED
from ganops.serving.inference import OnnxGenerator
from ganops.serving.interpolation import lerp, slerp
from ganops.sampling import MAX_SEED, grid, latent, to_uint8
from ganops.serving.app import create_app
from ganops.params import ServeParams

CPU = ServeParams(providers="cpu")
# One client for the module; 30 s, not httpx's 5 s: a loaded CI machine must not fail a test.
http = httpx.Client(timeout=30)


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    return {"uncond": shared_model(conditional=False), "cond": shared_model(conditional=True)}


@pytest.fixture(scope="module")
def generators(models) -> dict[str, OnnxGenerator]:
    return {k: OnnxGenerator.from_onnx(p, providers="cpu") for k, p in models.items()}


def make_app(generator: OnnxGenerator, *, config: ServeParams = CPU, api_key: str | None = None):
    return create_app(generator=generator, config=config, api_key=api_key)


@pytest.fixture(scope="module")
def uncond_url(generators):
    with running(make_app(generators["uncond"])) as url:
        yield url


@pytest.fixture(scope="module")
def cond_url(generators):
    with running(make_app(generators["cond"])) as url:
        yield url


def assert_alive(url: str) -> None:
    assert http.get(f"{url}/healthz").json() == {"status": "ok"}
    assert http.get(f"{url}/readyz").status_code == 200


def messages(response: httpx.Response) -> str:
    """The 422 body's messages, one per line; the body must be the documented list."""
    assert response.status_code == 422, response.text
    return "\n".join(e["msg"] for e in response.json()["detail"])


# --- endpoints -------------------------------------------------------------------------------


def test_health_model_and_docs(uncond_url, models):
    assert http.get(f"{uncond_url}/healthz").json() == {"status": "ok"}
    sha = hashlib.sha256(models["uncond"].read_bytes()).hexdigest()
    assert http.get(f"{uncond_url}/readyz").json() == {"status": "ready", "model_sha256": sha}
    info = http.get(f"{uncond_url}/v1/model").json()
    assert info["model_sha256"] == sha
    assert info["provider"] == "CPUExecutionProvider"
    assert (info["z_dim"], info["conditional"], info["num_classes"]) == (16, False, None)
    assert info["classes"] == CLASSES
    assert info["image_url_prefix"] == f"/v1/models/{sha}/images/"
    assert info["image_url_form"] == "<image_url_prefix><seed>.png"
    assert {k: info["lineage"][k] for k in LINEAGE} == LINEAGE
    assert info["lineage"]["mlflow_run_id"] == "run-abc"
    assert info["limits"] == {"max_images": 256, "max_seed": MAX_SEED, "max_json_seed": MAX_JSON_SEED,
                              "max_body_bytes": 65536}
    spec = http.get(f"{uncond_url}/openapi.json").json()
    assert {"/v1/model", "/v1/images/{seed}.png", "/v1/models/{sha256}/images/{seed}.png",
            "/v1/generate", "/v1/interpolate"} <= set(spec["paths"])
    docs = http.get(f"{uncond_url}/docs")
    assert docs.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text  # no CDN
    assert http.get(f"{uncond_url}/docs/assets/swagger-ui-bundle.js").status_code == 200


def test_readyz_is_503_until_the_warm_up_has_run(generators):
    # Without the app's lifespan the warm-up never runs: alive, but not ready.
    with running(make_app(generators["uncond"]), lifespan="off") as url:
        assert http.get(f"{url}/healthz").status_code == 200
        r = http.get(f"{url}/readyz")
        assert r.status_code == 503 and r.json() == {"detail": "warming up"}
        assert r.headers["retry-after"] == "1"


def test_image_is_the_generators_image_with_lineage(uncond_url, generators, models):
    g = generators["uncond"]
    r = http.get(f"{uncond_url}/v1/images/7.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(decode_png(r.content), g.generate([7])[0])
    sha = hashlib.sha256(models["uncond"].read_bytes()).hexdigest()
    assert r.headers["x-ganops-model-sha256"] == sha
    assert r.headers["x-ganops-git-commit"] == LINEAGE["git_commit"]
    assert r.headers["x-ganops-data-manifest"] == LINEAGE["data_manifest_sha256"]
    assert r.headers["x-ganops-params-sha256"] == LINEAGE["params_sha256"]
    assert r.headers["x-ganops-mlflow-run"] == "run-abc"
    assert r.headers["x-ganops-seed"] == "7"
    biggest = http.get(f"{uncond_url}/v1/images/{MAX_SEED}.png")
    np.testing.assert_array_equal(decode_png(biggest.content), g.generate([MAX_SEED])[0])


def test_caching_versioned_urls_are_immutable_and_unversioned_ones_revalidate(uncond_url, generators):
    sha = generators["uncond"].sha256
    versioned = f"/v1/models/{sha}/images/7.png"
    latest = http.get(f"{uncond_url}/v1/images/7.png")
    # The unversioned URL may change with the next model: stored, but revalidated every time.
    assert latest.headers["cache-control"] == "public, no-cache"
    assert latest.headers["content-location"] == versioned
    permanent = http.get(uncond_url + versioned)
    assert permanent.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert permanent.content == latest.content
    etag = permanent.headers["etag"]
    assert etag == latest.headers["etag"] == f'"{sha[:16]}-7-u"' and not etag.startswith("W/")
    for path in ("/v1/images/7.png", versioned):
        for inm in (etag, f'"other", W/{etag}', "*"):
            cached = http.get(uncond_url + path, headers={"If-None-Match": inm})
            assert cached.status_code == 304 and cached.content == b""
            assert cached.headers["etag"] == etag and cached.headers["x-ganops-model-sha256"] == sha
    other = http.get(f"{uncond_url}/v1/images/8.png", headers={"If-None-Match": etag})
    assert other.status_code == 200 and other.headers["etag"] != etag
    assert not np.array_equal(decode_png(other.content), decode_png(latest.content))
    # Another model's permanent URL is not this model's image.
    gone = http.get(f"{uncond_url}/v1/models/{'0' * 64}/images/7.png")
    assert gone.status_code == 404 and sha in gone.json()["detail"] and "/v1/model" in gone.json()["detail"]


def test_the_lean_image_path_and_the_routes_answer_alike(cond_url, generators):
    # A query parameter the routes ignore sends the same request past the lean path, to FastAPI.
    sha = generators["cond"].sha256
    for path in ("/v1/images/5.png?label=2", f"/v1/models/{sha}/images/5.png?label=2"):
        for extra in ({}, {"If-None-Match": f'"{sha[:16]}-5-2"'}):
            lean = http.get(cond_url + path, headers=extra)
            routed = http.get(cond_url + path + "&via=routes", headers=extra)
            assert lean.status_code == routed.status_code == (304 if extra else 200)
            assert lean.content == routed.content
            assert {k: v for k, v in lean.headers.items() if k != "date"} == \
                {k: v for k, v in routed.headers.items() if k != "date"}
    text = http.get(f"{cond_url}/metrics").text
    for route in ("/v1/images/{seed}.png", "/v1/models/{sha256}/images/{seed}.png"):
        for status in (200, 304):  # counted for the model that answered
            assert f'ganops_requests_total{{endpoint="{route}",method="GET",model_sha256="{sha}",status="{status}"}} 2.0' in text


def test_conditional_image_needs_a_label_in_range(cond_url, generators):
    sha = generators["cond"].sha256
    r = http.get(f"{cond_url}/v1/images/7.png?label=3")
    assert r.status_code == 200 and r.headers["x-ganops-label"] == "3"
    np.testing.assert_array_equal(decode_png(r.content), generators["cond"].generate([7], labels=3)[0])
    assert r.headers["etag"].endswith('-7-3"')
    assert r.headers["content-location"] == f"/v1/models/{sha}/images/7.png?label=3"
    assert http.get(f"{cond_url}/v1/images/7.png?label=4").headers["etag"] != r.headers["etag"]
    for query, needle in [("", "conditional"), ("?label=10", "out of range"), ("?label=-1", "out of range"),
                          ("?label=x", "out of range")]:
        assert needle in messages(http.get(f"{cond_url}/v1/images/7.png{query}"))
    assert_alive(cond_url)


@pytest.mark.parametrize("seed", ["-1", str(MAX_SEED + 1), "1" + "0" * 40, "abc", "1.5", "%D9%A3"])
def test_bad_seeds_get_422_and_the_server_stays_up(uncond_url, seed):
    r = http.get(f"{uncond_url}/v1/images/{seed}.png")
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["path", "seed"]
    assert_alive(uncond_url)


def test_label_on_an_unconditional_model_is_refused(uncond_url):
    assert "unconditional" in messages(http.get(f"{uncond_url}/v1/images/7.png?label=1"))


def test_generate_formats(uncond_url, cond_url, generators):
    g = generators["uncond"]
    r = http.post(f"{uncond_url}/v1/generate", json={"seeds": [3, 1, 4, 1, 5], "ncol": 3})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-ganops-count"] == "5"
    assert r.headers["x-ganops-git-commit"] == LINEAGE["git_commit"]
    np.testing.assert_array_equal(decode_png(r.content), grid(g.generate([3, 1, 4, 1, 5]), ncol=3))

    r = http.post(f"{uncond_url}/v1/generate", json={"count": 4, "start_seed": 10, "format": "png"})
    body = r.json()
    assert r.headers["content-type"] == "application/json"
    assert [i["seed"] for i in body["images"]] == [10, 11, 12, 13]
    assert body["model_sha256"] == g.sha256
    expected = g.generate([10, 11, 12, 13])
    for item, want in zip(body["images"], expected, strict=True):
        assert item["label"] is None
        np.testing.assert_array_equal(decode_png(base64.b64decode(item["png_base64"])), want)

    r = http.post(f"{uncond_url}/v1/generate", json={"count": 3, "format": "npy"})
    assert r.headers["content-type"] == "application/octet-stream"
    array = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert array.dtype == np.uint8 and array.shape == (3, 28, 28)
    np.testing.assert_array_equal(array, g.generate([0, 1, 2]))
    # JSON Schema's integers include 3.0, so the API takes it as 3.
    r = http.post(f"{uncond_url}/v1/generate", json={"seeds": [3.0, 1], "format": "npy"})
    np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), g.generate([3, 1]))

    c = generators["cond"]
    r = http.post(f"{cond_url}/v1/generate", json={"seeds": [5, 6, 7], "labels": [0, 9, 4], "format": "npy"})
    np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), c.generate([5, 6, 7], labels=[0, 9, 4]))
    r = http.post(f"{cond_url}/v1/generate", json={"seeds": [5, 6], "labels": 2, "format": "npy"})
    assert r.headers["x-ganops-label"] == "2"
    np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), c.generate([5, 6], labels=2))
    # A shorter list repeats: image i gets labels[i % len(labels)].
    r = http.post(f"{cond_url}/v1/generate", json={"count": 5, "labels": [0, 9], "format": "png"})
    assert [i["label"] for i in r.json()["images"]] == [0, 9, 0, 9, 0]
    np.testing.assert_array_equal(
        decode_png(base64.b64decode(r.json()["images"][3]["png_base64"])), c.generate([3], labels=9)[0])


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"count": 1_000_000}, "less than or equal to 256"),
        ({"seeds": list(range(257))}, "at most 256 items"),
        ({"seeds": [1], "count": 2}, "either"),
        ({}, "either"),
        ({"seeds": []}, "at least 1 item"),
        ({"seeds": [-1]}, "greater than or equal"),
        ({"seeds": [MAX_JSON_SEED + 1]}, f"less than or equal to {MAX_JSON_SEED}"),
        ({"seeds": [True]}, "valid integer"),
        ({"seeds": [1.5]}, "valid integer"),
        ({"seeds": ["7"]}, "valid integer"),
        ({"count": 2, "start_seed": MAX_JSON_SEED}, f"less than or equal to {MAX_JSON_SEED - 255}"),
        ({"count": 0}, "greater than or equal"),
        ({"seeds": [1], "labels": 3}, "Extra inputs"),  # an unconditional model has no labels
        ({"seeds": [1], "format": "gif"}, "'grid', 'png' or 'npy'"),
        ({"seeds": [1], "colour": 1}, "Extra inputs"),
        ([1, 2, 3], "valid dictionary"),
    ],
)
def test_generate_rejects_bad_bodies_with_422(uncond_url, body, needle):
    r = http.post(f"{uncond_url}/v1/generate", json=body)
    assert needle in messages(r)
    assert len(r.content) < 2000  # errors do not echo the input back


def test_conditional_generate_label_errors(cond_url):
    for body, needle in [
        ({"seeds": [1, 2]}, "Field required"),
        ({"seeds": [1, 2], "labels": [1, 10]}, "less than or equal to 9"),
        ({"seeds": [1, 2], "labels": []}, "at least 1 item"),
    ]:
        r = http.post(f"{cond_url}/v1/generate", json=body)
        assert needle in messages(r)
        assert "labels" in r.json()["detail"][0]["loc"]


def test_malformed_json_wrong_type_wrong_method_and_huge_bodies(uncond_url):
    url = f"{uncond_url}/v1/generate"
    r = http.post(url, content=b'{"seeds": [1,', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    r = http.post(url, content=b'{"seeds": [1]}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["detail"]
    r = http.post(url, content=b"seeds=1")
    assert r.status_code == 415
    huge = b'{"seeds": [' + b"1," * 40_000 + b"1]}"  # 80 kB > max_body_bytes
    r = http.post(url, content=huge, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "65536" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit holds while streaming too
        for _ in range(100):
            yield b" " * 1000

    r = http.post(url, content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    # A method a route does not have is 405 with Allow, whatever the body.
    for method, path, allow in [("POST", "/v1/model", "GET"), ("POST", "/v1/images/1.png", "GET"),
                                ("GET", "/v1/generate", "POST"), ("DELETE", "/v1/interpolate", "POST")]:
        r = http.request(method, uncond_url + path, content=b"x", headers={"Content-Type": "text/plain"})
        assert (r.status_code, r.headers["allow"]) == (405, allow), (method, path)
    assert_alive(uncond_url)


def test_response_headers_stay_small_for_large_requests(generators):
    g = OnnxGenerator.from_onnx(generators["uncond"].path, providers="cpu")
    g.metadata["dataset"] = "d" * 5000  # a long metadata value is cut, not copied into a header
    with running(make_app(g)) as url:
        def header_bytes(body: dict) -> int:
            r = http.post(f"{url}/v1/generate", json=body)
            assert r.status_code == 200
            return sum(len(k) + len(v) + 4 for k, v in r.headers.raw)

        one = header_bytes({"seeds": [MAX_JSON_SEED], "format": "npy"})
        many = header_bytes({"seeds": [MAX_JSON_SEED - i for i in range(256)], "format": "png"})
        assert many - one <= 20  # the count's digits and another Content-Type, nothing per seed
        assert many < 1024
        strip = http.post(f"{url}/v1/interpolate", json={"seed_a": MAX_JSON_SEED, "seed_b": 0, "steps": 256})
        assert sum(len(k) + len(v) + 4 for k, v in strip.headers.raw) < 1024


def test_interpolate_strip(uncond_url, cond_url, generators):
    g = generators["uncond"]
    r = http.post(f"{uncond_url}/v1/interpolate", json={"seed_a": 3, "seed_b": 9, "steps": 6})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-ganops-interpolation"] == "slerp" and r.headers["x-ganops-seeds"] == "3,9"
    strip = decode_png(r.content)
    assert strip.shape == (32, 6 * 30 + 2)
    ends = g.generate([3, 9])
    np.testing.assert_array_equal(strip[2:30, 2:30], ends[0])
    np.testing.assert_array_equal(strip[2:30, 5 * 30 + 2 : 5 * 30 + 30], ends[1])
    z = slerp(latent(3, 16), latent(9, 16), 6)
    np.testing.assert_array_equal(strip, grid(to_uint8(g.run(z)), ncol=6))
    linear = http.post(f"{uncond_url}/v1/interpolate",
                        json={"seed_a": 3, "seed_b": 9, "steps": 6, "method": "lerp"})
    assert linear.headers["x-ganops-interpolation"] == "lerp"
    assert not np.array_equal(decode_png(linear.content), strip)  # the middles differ

    r = http.post(f"{cond_url}/v1/interpolate", json={"seed_a": 1, "seed_b": 2, "steps": 3, "label": 5})
    strip = decode_png(r.content)
    np.testing.assert_array_equal(strip[2:30, 2:30], generators["cond"].generate([1], labels=5)[0])
    for body in [{"seed_a": 1, "seed_b": 2, "steps": 1}, {"seed_a": 1, "seed_b": 2, "steps": 257},
                 {"seed_a": 1, "steps": 4}, {"seed_a": -5, "seed_b": 2}]:
        assert http.post(f"{uncond_url}/v1/interpolate", json=body).status_code == 422
    assert "Field required" in messages(http.post(f"{cond_url}/v1/interpolate", json={"seed_a": 1, "seed_b": 2}))


def test_slerp_keeps_the_norm_and_lerp_does_not():
    a, b = latent(1, 512), latent(2, 512)
    s, li = slerp(a, b, 5), lerp(a, b, 5)
    np.testing.assert_array_equal(s[0], a)
    np.testing.assert_array_equal(s[-1], b)
    norms = np.linalg.norm(s, axis=1)
    assert np.ptp(norms) < 0.05 * norms.mean()  # a, b have near-equal norms in 512 dimensions
    assert np.linalg.norm(li[2]) < 0.8 * np.linalg.norm(a)  # lerp's middle shrinks towards 0
    np.testing.assert_array_equal(slerp(a, a, 3), np.stack([a, a, a]))  # parallel: no NaN


def test_metrics(uncond_url):
    http.get(f"{uncond_url}/v1/images/1.png")
    http.get(f"{uncond_url}/v1/images/-1.png")
    text = http.get(f"{uncond_url}/metrics").text
    sha = http.get(f"{uncond_url}/readyz").json()["model_sha256"]
    for status in (200, 422):  # labelled with the model that answered (prometheus_client sorts the labels)
        assert f'ganops_requests_total{{endpoint="/v1/images/{{seed}}.png",method="GET",model_sha256="{sha}",status="{status}"}}' in text
    assert 'ganops_request_latency_seconds_bucket{endpoint="/v1/images/{seed}.png",le="0.005"}' in text
    assert "ganops_batch_size_bucket" in text and "ganops_queue_depth 0.0" in text
    assert 'ganops_images_total{model_sha256="' in text


def _metric(text: str, name: str) -> float:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return float(line.split()[1])


@pytest.mark.parametrize(("micro_batching", "batch_threads"), [(True, 1), (True, 2), (False, 1)])
def test_concurrent_requests_are_batched(generators, micro_batching, batch_threads):
    g = generators["uncond"]
    config = ServeParams(providers="cpu", micro_batching=micro_batching, max_wait_ms=300.0, max_batch=64,
                         batch_threads=batch_threads)
    seeds = list(range(100, 124))
    with running(make_app(g, config=config)) as url:
        before = http.get(f"{url}/metrics").text
        with httpx.Client() as client, ThreadPoolExecutor(len(seeds)) as pool:
            responses = list(pool.map(lambda s: client.get(f"{url}/v1/images/{s}.png"), seeds))
        after = http.get(f"{url}/metrics").text
    for seed, r in zip(seeds, responses, strict=True):
        assert r.status_code == 200
        np.testing.assert_array_equal(decode_png(r.content), g.generate([seed])[0])
    calls = _metric(after, "ganops_batch_size_count") - _metric(before, "ganops_batch_size_count")
    images = _metric(after, "ganops_batch_size_sum") - _metric(before, "ganops_batch_size_sum")
    assert images == len(seeds)
    if micro_batching:
        assert calls < len(seeds) / 2  # 24 requests within 300 ms share a few calls
    else:
        assert calls == len(seeds)


def test_overload_answers_503_with_retry_after(generators):
    # A one-slot queue, one image per call and 256-image requests: the queue is full at once.
    config = ServeParams(providers="cpu", queue_size=1, max_batch=1, max_wait_ms=0.0)
    with running(make_app(generators["uncond"], config=config)) as url:
        with httpx.Client(timeout=30) as client, ThreadPoolExecutor(24) as pool:
            responses = list(pool.map(
                lambda s: client.post(f"{url}/v1/generate", json={"count": 256, "start_seed": s,
                                                                  "format": "npy"}),
                range(24),
            ))
        statuses = sorted({r.status_code for r in responses})
        assert statuses == [200, 503]
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "overloaded" in busy.json()["detail"]
        assert_alive(url)
        assert 'status="503"' in http.get(f"{url}/metrics").text


def test_api_key_and_private_caching(generators):
    sha = generators["uncond"].sha256
    with running(make_app(generators["uncond"], api_key="s3cret")) as url:
        for path in ("/v1/model", "/v1/images/1.png", f"/v1/models/{sha}/images/1.png"):
            r = http.get(url + path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert "API key" in r.json()["detail"]
            assert http.get(url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert http.get(url + path, headers={"X-API-Key": "s3cre"}).status_code == 401
            assert http.get(url + path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
            assert http.get(url + path, headers={"X-API-Key": "s3cret"}).status_code == 200
        # A shared cache must not hand a protected image to a client without the key.
        key = {"X-API-Key": "s3cret"}
        assert http.get(f"{url}/v1/models/{sha}/images/1.png", headers=key).headers["cache-control"] == \
            "private, max-age=31536000, immutable"
        assert http.get(f"{url}/v1/images/1.png", headers=key).headers["cache-control"] == "private, no-cache"
        assert http.post(f"{url}/v1/generate", json={"count": 1}).status_code == 401
        assert http.post(f"{url}/v1/generate", json={"count": 1}, headers=key).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics", "/", "/static/app.js", "/openapi.json", "/docs"):
            assert http.get(url + path).status_code == 200, path
        spec = http.get(f"{url}/openapi.json").json()
        assert "401" in spec["paths"]["/v1/images/{seed}.png"]["get"]["responses"]


def test_index_page_is_self_contained(uncond_url):
    r = http.get(uncond_url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == "default-src 'self'; img-src 'self' blob:"
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in r.text
        assert http.get(uncond_url + asset).status_code == 200
    assert "http://" not in r.text and "https://" not in r.text  # no CDN
    assert "http" not in http.get(uncond_url + "/static/app.js").text.replace("HTTP ", "")


def test_readyz_turns_ready_after_warm_up(generators):
    # The app's own start-up: /readyz answers 200 only once the warm-up batch has run.
    with running(make_app(generators["cond"])) as url:
        assert http.get(f"{url}/readyz").json() == {"status": "ready", "model_sha256": generators["cond"].sha256}
        text = http.get(f"{url}/metrics").text
    assert _metric(text, "ganops_batch_size_count") >= 2  # warm-up: one image, then a full batch
