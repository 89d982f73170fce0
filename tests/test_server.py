"""The HTTP server: endpoints, bad input, overload, micro-batching, API key and the model check."""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from _serving import CLASSES, LINEAGE, decode_png, export_model, port_open, running, wait_ready
from pipeline_repo import free_port

import ganops.server as server_module
from ganops.cli import build_parser
from ganops.inference import Generator
from ganops.params import ServeParams
from ganops.sampling import MAX_SEED, grid, latent
from ganops.server import (
    ModelVerificationError,
    ServerConfig,
    config_from_env,
    create_app,
    lerp,
    slerp,
    verify_model,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    (root / "u").mkdir()
    (root / "c").mkdir()
    return {
        "uncond": export_model(root / "u", conditional=False),
        "cond": export_model(root / "c", conditional=True),
    }


@pytest.fixture(scope="module")
def generators(models) -> dict[str, Generator]:
    return {k: Generator.from_onnx(p, providers="cpu") for k, p in models.items()}


def make_app(generator: Generator, api_key: str | None = None, **config):
    return create_app(generator=generator, config=ServerConfig(providers="cpu", **config), api_key=api_key)


@pytest.fixture(scope="module")
def uncond_url(generators):
    with running(make_app(generators["uncond"])) as url:
        yield url


@pytest.fixture(scope="module")
def cond_url(generators):
    with running(make_app(generators["cond"])) as url:
        yield url


def assert_alive(url: str) -> None:
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").status_code == 200


# --- endpoints -------------------------------------------------------------------------------


def test_health_model_and_docs(uncond_url, models, generators):
    assert httpx.get(f"{uncond_url}/healthz").json() == {"status": "ok"}
    sha = hashlib.sha256(models["uncond"].read_bytes()).hexdigest()
    assert httpx.get(f"{uncond_url}/readyz").json() == {"status": "ready", "model_sha256": sha}
    info = httpx.get(f"{uncond_url}/v1/model").json()
    assert info["model_sha256"] == sha
    assert info["provider"] == "CPUExecutionProvider"
    assert (info["z_dim"], info["conditional"], info["num_classes"]) == (16, False, 10)
    assert info["classes"] == CLASSES
    assert {k: info["lineage"][k] for k in LINEAGE} == LINEAGE
    assert info["lineage"]["mlflow_run_id"] == "run-abc"
    assert info["limits"] == {"max_images": 256, "max_seed": MAX_SEED, "max_body_bytes": 65536}
    spec = httpx.get(f"{uncond_url}/openapi.json").json()
    assert {"/v1/model", "/v1/images/{seed}.png", "/v1/generate", "/v1/interpolate"} <= set(spec["paths"])
    docs = httpx.get(f"{uncond_url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_readyz_is_503_until_the_warm_up_has_run(generators):
    # Without the app's lifespan the warm-up never runs: alive, but not ready.
    with running(make_app(generators["uncond"]), lifespan="off") as url:
        assert httpx.get(f"{url}/healthz").status_code == 200
        r = httpx.get(f"{url}/readyz")
        assert r.status_code == 503 and r.json() == {"detail": "warming up"}
        assert r.headers["retry-after"] == "1"


def test_image_is_the_generators_image_with_lineage_and_caching(uncond_url, generators, models):
    g = generators["uncond"]
    r = httpx.get(f"{uncond_url}/v1/images/7.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(decode_png(r.content), g.generate([7])[0])
    sha = hashlib.sha256(models["uncond"].read_bytes()).hexdigest()
    assert r.headers["x-ganops-model-sha256"] == sha
    assert r.headers["x-ganops-git-commit"] == LINEAGE["git_commit"]
    assert r.headers["x-ganops-data-manifest"] == LINEAGE["data_manifest_sha256"]
    assert r.headers["x-ganops-params-sha256"] == LINEAGE["params_sha256"]
    assert r.headers["x-ganops-mlflow-run"] == "run-abc"
    assert r.headers["x-ganops-seed"] == "7"
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    etag = r.headers["etag"]
    assert etag == f'"{sha[:16]}-7-u"' and not etag.startswith("W/")
    for inm in (etag, f'"other", W/{etag}', "*"):
        cached = httpx.get(f"{uncond_url}/v1/images/7.png", headers={"If-None-Match": inm})
        assert cached.status_code == 304 and cached.content == b""
        assert cached.headers["etag"] == etag and cached.headers["x-ganops-model-sha256"] == sha
    other = httpx.get(f"{uncond_url}/v1/images/8.png", headers={"If-None-Match": etag})
    assert other.status_code == 200 and other.headers["etag"] != etag
    assert not np.array_equal(decode_png(other.content), decode_png(r.content))
    biggest = httpx.get(f"{uncond_url}/v1/images/{MAX_SEED}.png")
    np.testing.assert_array_equal(decode_png(biggest.content), g.generate([MAX_SEED])[0])


def test_conditional_image_needs_a_label_in_range(cond_url, generators):
    r = httpx.get(f"{cond_url}/v1/images/7.png?label=3")
    assert r.status_code == 200 and r.headers["x-ganops-label"] == "3"
    np.testing.assert_array_equal(decode_png(r.content), generators["cond"].generate([7], labels=3)[0])
    assert r.headers["etag"].endswith('-7-3"')
    assert httpx.get(f"{cond_url}/v1/images/7.png?label=4").headers["etag"] != r.headers["etag"]
    for query, needle in [("", "conditional"), ("?label=10", "out of range"), ("?label=-1", "out of range")]:
        bad = httpx.get(f"{cond_url}/v1/images/7.png{query}")
        assert bad.status_code == 422 and needle in bad.json()["detail"]
    assert httpx.get(f"{cond_url}/v1/images/7.png?label=x").status_code == 422
    assert_alive(cond_url)


@pytest.mark.parametrize("seed", ["-1", str(MAX_SEED + 1), "1" + "0" * 40, "abc", "1.5"])
def test_bad_seeds_get_422_and_the_server_stays_up(uncond_url, seed):
    r = httpx.get(f"{uncond_url}/v1/images/{seed}.png")
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["path", "seed"]
    assert_alive(uncond_url)


def test_label_on_an_unconditional_model_is_refused(uncond_url):
    r = httpx.get(f"{uncond_url}/v1/images/7.png?label=1")
    assert r.status_code == 422 and "unconditional" in r.json()["detail"]


def test_generate_formats(uncond_url, cond_url, generators):
    g = generators["uncond"]
    r = httpx.post(f"{uncond_url}/v1/generate", json={"seeds": [3, 1, 4, 1, 5], "ncol": 3})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-ganops-seeds"] == "3,1,4,1,5"
    assert r.headers["x-ganops-git-commit"] == LINEAGE["git_commit"]
    np.testing.assert_array_equal(decode_png(r.content), grid(g.generate([3, 1, 4, 1, 5]), ncol=3))

    r = httpx.post(f"{uncond_url}/v1/generate", json={"count": 4, "start_seed": 10, "format": "png"})
    body = r.json()
    assert r.headers["content-type"] == "application/json"
    assert [i["seed"] for i in body["images"]] == [10, 11, 12, 13]
    assert body["model_sha256"] == g.sha256
    expected = g.generate([10, 11, 12, 13])
    for item, want in zip(body["images"], expected, strict=True):
        assert item["label"] is None
        np.testing.assert_array_equal(decode_png(base64.b64decode(item["png_base64"])), want)

    r = httpx.post(f"{uncond_url}/v1/generate", json={"count": 3, "format": "npy"})
    assert r.headers["content-type"] == "application/octet-stream"
    array = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert array.dtype == np.uint8 and array.shape == (3, 28, 28)
    np.testing.assert_array_equal(array, g.generate([0, 1, 2]))

    labels = [0, 9, 4]
    r = httpx.post(f"{cond_url}/v1/generate", json={"seeds": [5, 6, 7], "labels": labels, "format": "npy"})
    assert r.headers["x-ganops-labels"] == "0,9,4"
    np.testing.assert_array_equal(
        np.load(io.BytesIO(r.content)), generators["cond"].generate([5, 6, 7], labels=labels)
    )
    r = httpx.post(f"{cond_url}/v1/generate", json={"seeds": [5, 6], "labels": 2, "format": "npy"})
    np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), generators["cond"].generate([5, 6], labels=2))


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"count": 1_000_000}, "at most 256"),
        ({"seeds": [1], "count": 2}, "either"),
        ({}, "either"),
        ({"seeds": []}, "empty"),
        ({"seeds": [-1]}, "greater than or equal"),
        ({"seeds": [MAX_SEED + 1]}, "less than or equal"),
        ({"seeds": [True]}, "valid integer"),
        ({"seeds": [1.0]}, "valid integer"),
        ({"count": 2, "start_seed": MAX_SEED}, "exceeds the largest seed"),
        ({"count": 0}, "greater than or equal"),
        ({"seeds": [1], "labels": 3}, "unconditional"),
        ({"seeds": [1], "format": "gif"}, "'grid', 'png' or 'npy'"),
        ({"seeds": [1], "colour": 1}, "Extra inputs"),
        ([1, 2, 3], "valid dictionary"),
    ],
)
def test_generate_rejects_bad_bodies_with_422(uncond_url, body, needle):
    r = httpx.post(f"{uncond_url}/v1/generate", json=body)
    assert r.status_code == 422
    assert needle in str(r.json()["detail"])
    assert len(r.content) < 2000  # errors do not echo the input back


def test_conditional_generate_label_errors(cond_url):
    for body, needle in [
        ({"seeds": [1, 2]}, "conditional"),
        ({"seeds": [1, 2], "labels": [1]}, "pass one label or 2"),
        ({"seeds": [1, 2], "labels": [1, 10]}, "label 10 out of range"),
    ]:
        r = httpx.post(f"{cond_url}/v1/generate", json=body)
        assert r.status_code == 422 and needle in r.json()["detail"]


def test_malformed_json_wrong_type_and_huge_bodies(uncond_url):
    url = f"{uncond_url}/v1/generate"
    r = httpx.post(url, content=b'{"seeds": [1,', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    r = httpx.post(url, content=b'{"seeds": [1]}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["detail"]
    r = httpx.post(url, content=b"seeds=1")
    assert r.status_code == 415
    huge = b'{"seeds": [' + b"1," * 40_000 + b"1]}"  # 80 kB > max_body_bytes
    r = httpx.post(url, content=huge, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "65536" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit holds while streaming too
        for _ in range(100):
            yield b" " * 1000

    r = httpx.post(url, content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert_alive(uncond_url)


def test_interpolate_strip(uncond_url, cond_url, generators):
    g = generators["uncond"]
    r = httpx.post(f"{uncond_url}/v1/interpolate", json={"seed_a": 3, "seed_b": 9, "steps": 6})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-ganops-interpolation"] == "slerp" and r.headers["x-ganops-seeds"] == "3,9"
    strip = decode_png(r.content)
    assert strip.shape == (32, 6 * 30 + 2)
    ends = g.generate([3, 9])
    np.testing.assert_array_equal(strip[2:30, 2:30], ends[0])
    np.testing.assert_array_equal(strip[2:30, 5 * 30 + 2 : 5 * 30 + 30], ends[1])
    z = slerp(latent(3, 16), latent(9, 16), 6)
    from ganops.sampling import to_uint8

    np.testing.assert_array_equal(strip, grid(to_uint8(g.run(z)), ncol=6))
    linear = httpx.post(f"{uncond_url}/v1/interpolate",
                        json={"seed_a": 3, "seed_b": 9, "steps": 6, "method": "lerp"})
    assert linear.headers["x-ganops-interpolation"] == "lerp"
    assert not np.array_equal(decode_png(linear.content), strip)  # the middles differ

    r = httpx.post(f"{cond_url}/v1/interpolate", json={"seed_a": 1, "seed_b": 2, "steps": 3, "label": 5})
    strip = decode_png(r.content)
    np.testing.assert_array_equal(strip[2:30, 2:30], generators["cond"].generate([1], labels=5)[0])
    for body, status in [
        ({"seed_a": 1, "seed_b": 2, "steps": 1}, 422),
        ({"seed_a": 1, "seed_b": 2, "steps": 257}, 422),
        ({"seed_a": 1, "steps": 4}, 422),
        ({"seed_a": -5, "seed_b": 2}, 422),
    ]:
        assert httpx.post(f"{uncond_url}/v1/interpolate", json=body).status_code == status
    assert httpx.post(f"{cond_url}/v1/interpolate", json={"seed_a": 1, "seed_b": 2}).status_code == 422


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
    httpx.get(f"{uncond_url}/v1/images/1.png")
    httpx.get(f"{uncond_url}/v1/images/-1.png")
    text = httpx.get(f"{uncond_url}/metrics").text
    assert 'ganops_requests_total{endpoint="/v1/images/{seed}.png",method="GET",status="200"}' in text
    assert 'ganops_requests_total{endpoint="/v1/images/{seed}.png",method="GET",status="422"}' in text
    assert 'ganops_request_latency_seconds_bucket{endpoint="/v1/images/{seed}.png",le="0.005"}' in text
    assert "ganops_batch_size_bucket" in text and "ganops_queue_depth 0.0" in text
    assert "ganops_images_total" in text


def _metric(text: str, name: str) -> float:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return float(line.split()[1])


@pytest.mark.parametrize("micro_batching", [True, False])
def test_concurrent_requests_are_batched(generators, micro_batching):
    g = generators["uncond"]
    app = make_app(g, micro_batching=micro_batching, max_wait_ms=300.0, max_batch=64)
    seeds = list(range(100, 124))
    with running(app) as url:
        before = httpx.get(f"{url}/metrics").text
        with httpx.Client() as client, ThreadPoolExecutor(len(seeds)) as pool:
            responses = list(pool.map(lambda s: client.get(f"{url}/v1/images/{s}.png"), seeds))
        after = httpx.get(f"{url}/metrics").text
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
    app = make_app(generators["uncond"], queue_size=1, max_batch=1, max_wait_ms=0.0)
    with running(app) as url:
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
        assert 'status="503"' in httpx.get(f"{url}/metrics").text


def test_api_key(generators):
    with running(make_app(generators["uncond"], api_key="s3cret")) as url:
        for path in ("/v1/model", "/v1/images/1.png"):
            r = httpx.get(url + path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert "API key" in r.json()["detail"]
            assert httpx.get(url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert httpx.get(url + path, headers={"X-API-Key": "s3cre"}).status_code == 401
            assert httpx.get(url + path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
            assert httpx.get(url + path, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert httpx.post(f"{url}/v1/generate", json={"count": 1}).status_code == 401
        assert httpx.post(f"{url}/v1/generate", json={"count": 1},
                          headers={"X-API-Key": "s3cret"}).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics", "/", "/static/app.js", "/openapi.json"):
            assert httpx.get(url + path).status_code == 200, path


def test_index_page_is_self_contained(uncond_url):
    r = httpx.get(uncond_url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == "default-src 'self'; img-src 'self' blob:"
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in r.text
        assert httpx.get(uncond_url + asset).status_code == 200
    assert "http://" not in r.text and "https://" not in r.text  # no CDN
    assert "http" not in httpx.get(uncond_url + "/static/app.js").text.replace("HTTP ", "")


# --- model check and the command line --------------------------------------------------------


def _copy_model(models, tmp_path: Path, *, sidecar: bool) -> Path:
    path = tmp_path / "generator.onnx"
    path.write_bytes(models["uncond"].read_bytes())
    if sidecar:
        Path(f"{path}.sha256").write_bytes(Path(f"{models['uncond']}.sha256").read_bytes())
    return path


def test_verify_model(models, tmp_path):
    sha = hashlib.sha256(models["uncond"].read_bytes()).hexdigest()
    assert verify_model(model_path=models["uncond"], expect_sha256=None, verify=True) == sha
    assert verify_model(model_path=models["uncond"], expect_sha256=sha.upper(), verify=True) == sha
    with pytest.raises(ModelVerificationError, match="expected sha256"):
        verify_model(model_path=models["uncond"], expect_sha256="0" * 64, verify=True)

    tampered = _copy_model(models, tmp_path, sidecar=True)
    data = bytearray(tampered.read_bytes())
    data[-10] ^= 0xFF  # a byte of the metadata/weights changed after export
    tampered.write_bytes(bytes(data))
    bad = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(ModelVerificationError) as e:
        verify_model(model_path=tampered, expect_sha256=None, verify=False)
    assert sha in str(e.value) and bad in str(e.value) and "re-export" in str(e.value)

    Path(f"{tampered}.sha256").unlink()
    with pytest.raises(ModelVerificationError, match="no sidecar"):
        verify_model(model_path=tampered, expect_sha256=None, verify=True)
    assert verify_model(model_path=tampered, expect_sha256=None, verify=False) == bad
    assert verify_model(model_path=tampered, expect_sha256=bad, verify=True) == bad

    Path(f"{tampered}.sha256").write_text("not a hash\n")
    with pytest.raises(ModelVerificationError, match="sha256sum format"):
        verify_model(model_path=tampered, expect_sha256=None, verify=True)
    with pytest.raises(ModelVerificationError, match="not found"):
        verify_model(model_path=tmp_path / "missing.onnx", expect_sha256=None, verify=True)


def _serve_cmd(model: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ganops.cli", "serve", "--model", str(model), "--port", str(port), *extra]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANOPS_")}
    return {**env, "GANOPS_PROVIDERS": "cpu", **extra}


@pytest.mark.parametrize("case", ["tampered", "no_sidecar", "wrong_expected"])
def test_cli_refuses_before_binding_the_port(models, tmp_path, case):
    model = _copy_model(models, tmp_path, sidecar=case != "no_sidecar")
    extra = []
    if case == "tampered":
        model.write_bytes(model.read_bytes() + b"\0")
    if case == "wrong_expected":
        extra = ["--expect-sha256", "f" * 64]
    port = free_port()
    result = subprocess.run(_serve_cmd(model, port, *extra), env=_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert "refusing to start" in result.stderr
    assert {"tampered": "changed after export", "no_sidecar": "--no-verify",
            "wrong_expected": "f" * 64}[case] in result.stderr
    assert not port_open(port)


def test_cli_serves_with_no_verify_and_reads_the_environment(models, tmp_path):
    model = _copy_model(models, tmp_path, sidecar=False)
    port = free_port()
    params = tmp_path / "params.yaml"
    params.write_text("serve:\n  queue_size: 7\n  max_images: 3\n  max_batch: 5\n")
    env = _env(GANOPS_API_KEY="k3y", GANOPS_MAX_IMAGES="4", GANOPS_MICRO_BATCHING="false")
    # Precedence: flag (max_batch 8) > environment (max_images 4) > --params (queue_size 7).
    cmd = _serve_cmd(model, port, "--no-verify", "--max-batch", "8", "--params", str(params))
    proc = subprocess.Popen(cmd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout=60)
        assert httpx.get(f"{url}/v1/model").status_code == 401
        info = httpx.get(f"{url}/v1/model", headers={"X-API-Key": "k3y"}).json()
        assert info["limits"]["max_images"] == 4
        assert info["micro_batching"] == {"enabled": False, "max_batch": 8, "max_wait_ms": 2.0, "queue_size": 7}
        r = httpx.post(f"{url}/v1/generate", json={"count": 5}, headers={"X-API-Key": "k3y"})
        assert r.status_code == 422 and "at most 4" in r.json()["detail"]
    finally:
        proc.terminate()
        output = proc.communicate(timeout=20)[0]
    assert proc.returncode in (0, -15), output  # uvicorn re-raises SIGTERM after a clean shutdown
    assert "Application shutdown complete" in output
    assert "--no-verify" in output  # the unchecked start is logged


def test_cli_usage_errors(tmp_path):
    assert build_parser().parse_args(["serve", "--model", "m.onnx"]).host is None
    env = _env(GANOPS_PORT="eighty")
    r = subprocess.run([sys.executable, "-m", "ganops.cli", "serve", "--model", "x.onnx"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "GANOPS_PORT='eighty' is not a valid int" in r.stderr
    r = subprocess.run([sys.executable, "-m", "ganops.cli", "serve"], env=_env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "--model" in r.stderr


def test_config_defaults_match_params_and_env_is_documented(capsys):
    assert [f.name for f in dataclasses.fields(ServerConfig)] == [f.name for f in dataclasses.fields(ServeParams)]
    assert dataclasses.asdict(ServerConfig()) == dataclasses.asdict(ServeParams())
    config = config_from_env(ServerConfig(), {"GANOPS_PORT": "9001", "GANOPS_MICRO_BATCHING": "false",
                                              "GANOPS_MAX_WAIT_MS": "0.5", "GANOPS_HOST": "0.0.0.0"})
    assert (config.port, config.micro_batching, config.max_wait_ms, config.host) == (9001, False, 0.5, "0.0.0.0")
    with pytest.raises(ValueError, match="GANOPS_MICRO_BATCHING"):
        config_from_env(ServerConfig(), {"GANOPS_MICRO_BATCHING": "maybe"})
    with pytest.raises(ValueError, match="max_batch"):
        ServerConfig(max_batch=0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = capsys.readouterr().out
    names = ["GANOPS_MODEL", "GANOPS_API_KEY", "GANOPS_MODEL_SHA256"] + [
        "GANOPS_" + f.name.upper() for f in dataclasses.fields(ServerConfig)
    ]
    for name in names:
        assert name in server_module.__doc__, name
        assert name in help_text, name


def test_server_imports_no_torch_dvc_or_mlflow():
    code = ("import sys, ganops.server, ganops.cli; "
            "bad = [m for m in ('torch', 'dvc', 'mlflow', 'yaml') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env())
    assert out.stdout.strip() == "[]", out.stderr


def test_readyz_turns_ready_after_warm_up(generators):
    # The app's own start-up: /readyz answers 200 only once the warm-up batch has run.
    started = time.monotonic()
    with running(make_app(generators["cond"])) as url:
        assert httpx.get(f"{url}/readyz").json()["status"] == "ready"
        text = httpx.get(f"{url}/metrics").text
    assert _metric(text, "ganops_batch_size_count") >= 2  # warm-up: one image, then a full batch
    assert time.monotonic() - started < 30
