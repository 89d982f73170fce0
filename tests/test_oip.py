"""The Open Inference Protocol (/v2), driven by a third-party client (tritonclient) against a real `ganops serve`.

The images it receives are /v1's PNGs of the same seeds, pixel for pixel; every refusal is the
protocol's {"error": "..."} with a 4xx status, which the client reads as InferenceServerException.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from _serving import decode_png, running, serve_process, shared_model
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from ganops.params import ServeParams
from ganops.sampling import MAX_SEED, latents, to_uint8
from ganops.serving.app import create_app
from ganops.serving.inference import OnnxGenerator

MODEL = "ganops-generator"
KEY = "s3cret"


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}  # a new dict each call: tritonclient adds its headers to it


SEEDS = [0, 7, 123456789, MAX_SEED]
http = httpx.Client(timeout=30)


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    return {"uncond": shared_model(conditional=False), "cond": shared_model(conditional=True)}


@pytest.fixture(scope="module")
def uncond(models):
    """(URL, client) of a server of the unconditional model, with no API key."""
    with serve_process(models["uncond"]) as url:
        yield url, triton.InferenceServerClient(url.removeprefix("http://"))


@pytest.fixture(scope="module")
def cond(models):
    """(URL, client) of a server of the conditional model (10 classes), behind an API key."""
    with serve_process(models["cond"], env={"GANOPS_API_KEY": KEY}) as url:
        yield url, triton.InferenceServerClient(url.removeprefix("http://"))


def tensor(name: str, array, *, binary: bool = True) -> triton.InferInput:
    """An input tensor of `array` (its dtype and shape), sent as binary data or as JSON."""
    array = np.asarray(array)
    x = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    x.set_data_from_numpy(array, binary_data=binary)
    return x


def seeds(values, *, binary: bool = True) -> triton.InferInput:
    return tensor("seed", np.array(values, np.int64), binary=binary)


def v1_pngs(url: str, seeds, *, label: int | None = None, headers=None) -> np.ndarray:
    query = "" if label is None else f"?label={label}"
    return np.stack([decode_png(http.get(f"{url}/v1/images/{s}.png{query}", headers=headers).content)
                     for s in seeds])


def refused(call, status: str) -> str:
    """The message of the protocol error `call` raises; its HTTP status must be `status`."""
    with pytest.raises(InferenceServerException) as e:
        call()
    assert e.value.status() == status, e.value
    return e.value.message()


# --- health and metadata ---------------------------------------------------------------------------


def test_health_and_metadata(uncond, models):
    url, client = uncond
    sha = hashlib.sha256(models["uncond"].read_bytes()).hexdigest()
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, model_version=sha)
    assert not client.is_model_ready("another-model")
    assert client.get_server_metadata() == {"name": "ganops", "version": client.get_server_metadata()["version"],
                                            "extensions": ["binary_tensor_data"]}
    meta = {"name": MODEL, "versions": [sha], "platform": "onnx_onnxv1",
            "inputs": [{"name": "seed", "datatype": "INT64", "shape": [-1]},
                       {"name": "z", "datatype": "FP32", "shape": [-1, 16]}],
            "outputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28]}]}
    assert client.get_model_metadata(MODEL) == meta
    assert client.get_model_metadata(MODEL, model_version=sha) == meta
    live = http.get(f"{url}/v2/health/live")
    assert live.status_code == 200 and live.content == b""  # the protocol: the status is the answer


def test_not_ready_until_the_warm_up_has_run(models):
    # Without the app's lifespan the warm-up never runs: live, but neither the server nor the model is ready.
    app = create_app(generator=OnnxGenerator.from_onnx(models["uncond"], providers="cpu"),
                     config=ServeParams(providers="cpu"), api_key=None)
    with running(app, lifespan="off") as url:
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        assert client.is_server_live() and not client.is_server_ready() and not client.is_model_ready(MODEL)
        ready = http.get(f"{url}/v2/health/ready")
        assert ready.status_code == 400 and ready.content == b""  # the protocol's "4xx is false"


def test_api_key_guards_the_model_routes_not_health(cond):
    url, client = cond
    assert client.is_server_live() and client.is_server_ready()
    assert http.get(f"{url}/v2").status_code == 200
    assert "API key" in refused(lambda: client.get_model_metadata(MODEL), "401")
    assert "API key" in refused(lambda: client.infer(MODEL, [seeds([1])]), "401")
    assert client.get_model_metadata(MODEL, headers=auth())["inputs"][2] == {
        "name": "label", "datatype": "INT64", "shape": [-1]}
    assert client.is_model_ready(MODEL, headers={"X-API-Key": KEY})


# --- inference ---------------------------------------------------------------------------------------


def test_seeds_give_v1s_pixels_binary_and_json(uncond, models):
    url, client = uncond
    expected = v1_pngs(url, SEEDS)
    binary = client.infer(MODEL, [seeds(SEEDS)], request_id="r1")  # tritonclient's default: binary both ways
    assert binary.as_numpy("image").dtype == np.uint8
    np.testing.assert_array_equal(binary.as_numpy("image"), expected)
    sha = hashlib.sha256(models["uncond"].read_bytes()).hexdigest()
    assert binary.get_response() == {
        "model_name": MODEL, "model_version": sha, "id": "r1",
        "outputs": [{"name": "image", "datatype": "UINT8", "shape": [4, 28, 28],
                     "parameters": {"binary_data_size": 4 * 28 * 28}}]}
    as_json = client.infer(MODEL, [seeds(SEEDS, binary=False)],
                           outputs=[triton.InferRequestedOutput("image", binary_data=False)], model_version=sha)
    assert "parameters" not in as_json.get_output("image")
    np.testing.assert_array_equal(as_json.as_numpy("image"), expected)


def test_latents_give_the_generators_images(uncond, models):
    url, client = uncond
    generator = OnnxGenerator.from_onnx(models["uncond"], providers="cpu")
    noise = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    for z, expected in [(latents(SEEDS, 16), v1_pngs(url, SEEDS)),  # a seed's latent draws the seed's image
                        (noise, to_uint8(generator.run(noise)))]:
        for binary in (True, False):
            out = client.infer(MODEL, [tensor("z", z, binary=binary)],
                               outputs=[triton.InferRequestedOutput("image", binary_data=binary)])
            np.testing.assert_array_equal(out.as_numpy("image"), expected)


def test_labels_on_a_conditional_model(cond):
    url, client = cond
    label_3 = tensor("label", np.full(len(SEEDS), 3, np.int64))
    out = client.infer(MODEL, [label_3, seeds(SEEDS)], headers=auth())  # inputs in any order
    np.testing.assert_array_equal(out.as_numpy("image"), v1_pngs(url, SEEDS, label=3, headers=auth()))
    per_image = [0, 9, 4, 4]
    out = client.infer(MODEL, [seeds(SEEDS), tensor("label", np.array(per_image), binary=False)], headers=auth())
    for i, (s, label) in enumerate(zip(SEEDS, per_image, strict=True)):
        np.testing.assert_array_equal(out.as_numpy("image")[i], v1_pngs(url, [s], label=label, headers=auth())[0])

    def infer(*inputs):
        return lambda: client.infer(MODEL, list(inputs), headers=auth())

    assert "conditional: pass a 'label'" in refused(infer(seeds([1])), "400")
    assert "labels must be in [0, 9]" in refused(infer(seeds([1]), tensor("label", np.array([10]))), "400")
    assert "one per image" in refused(infer(seeds([1]), tensor("label", np.array([1, 2]))), "400")


def test_v2_runs_on_v1s_micro_batcher(uncond):
    url, client = uncond

    def counts() -> tuple[float, float]:
        text = http.get(f"{url}/metrics").text
        value = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line[:1] != "#"}
        images = sum(v for k, v in value.items() if k.startswith("ganops_images_total{"))  # by model
        return value["ganops_batch_size_count"], images

    before = counts()
    client.infer(MODEL, [seeds(range(5))])
    after = counts()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 5)  # one batcher call, five images


# --- refusals: the protocol's error body, a 4xx ------------------------------------------------------


def test_bad_requests_get_protocol_errors(uncond, models):
    url, client = uncond
    sha = hashlib.sha256(models["uncond"].read_bytes()).hexdigest()
    one = [seeds([1])]
    assert "unknown model 'nope'" in refused(lambda: client.infer("nope", one), "404")
    assert "unknown model" in refused(lambda: client.get_model_metadata("nope"), "404")
    assert sha in refused(lambda: client.infer(MODEL, one, model_version="0" * 64), "404")
    for inputs, status, message in [
        ([tensor("seed", np.array([1], np.int32))], "400", "Input should be 'INT64'"),  # wrong datatype
        ([tensor("seed", np.array([[1, 2]]))], "400", "shape: List should have at most 1 item"),  # wrong shape
        ([tensor("z", np.zeros((1, 15), np.float32))], "400", "shape[1]: Input should be 16"),
        ([seeds(range(257))], "400", "less than or equal to 256 (serve.max_images"),
        ([*one, tensor("label", np.array([0]))], "400", "unconditional: do not pass a 'label'"),
        ([*one, tensor("z", np.zeros((1, 16), np.float32))], "400", "not both"),
        ([tensor("z", np.full((1, 16), np.nan, np.float32))], "400", "finite"),
        ([seeds([-1])], "400", "seeds must be in"),
    ]:
        assert message in refused(lambda inputs=inputs: client.infer(MODEL, inputs), status)

    def post(body: bytes, status: int, *, headers: dict | None = None) -> str:
        r = http.post(f"{url}/v2/models/{MODEL}/infer", content=body, headers=headers)
        assert r.status_code == status and list(r.json()) == ["error"], r.text
        return r.json()["error"]

    def request(*inputs: dict) -> bytes:
        return json.dumps({"inputs": list(inputs)}).encode()

    seed = {"name": "seed", "datatype": "INT64", "shape": [2], "data": [1, 2]}
    assert "not valid JSON" in post(b"{", 400)
    assert "2 elements" in post(request({**seed, "shape": [3]}), 400)  # shape and data disagree
    assert "no 'data'" in post(request({k: v for k, v in seed.items() if k != "data"}), 400)
    assert "'noise'" in post(request({**seed, "name": "noise"}), 400)
    binary = json.dumps({"inputs": [{"name": "seed", "datatype": "INT64", "shape": [2],
                                     "parameters": {"binary_data_size": 16}}]}).encode()
    assert "ends before" in post(binary + b"\0" * 8, 400, headers={"Inference-Header-Content-Length": str(len(binary))})
    assert "add up to 16" in post(binary + b"\0" * 24, 400, headers={"Inference-Header-Content-Length": str(len(binary))})
    assert "Inference-Header-Content-Length" in post(binary, 400, headers={"Inference-Header-Content-Length": "x"})
    assert "Content-Encoding" in post(gzip.compress(request(seed)), 415, headers={"Content-Encoding": "gzip"})
    assert "65536-byte limit" in post(b" " * 70_000, 413)  # serve.max_body_bytes
