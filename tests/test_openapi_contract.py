"""The OpenAPI document tells the truth: a schema-based fuzzer, every check on, finds nothing.

Schemathesis (20 examples per operation and phase, a fixed seed, a few seconds a run) drives a real server built for an
unconditional model and, with an API key, for a conditional one: every documented operation (/v1 and the
Open Inference Protocol's /v2), valid and invalid data, undocumented methods, missing and wrong credentials.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from _serving import running, shared_model

from ganops.serving.inference import OnnxGenerator
from ganops.serving.app import create_app
from ganops.params import ServeParams

SCHEMATHESIS = Path(sys.executable).parent / "st"
# The protocol's infer rules that JSON Schema cannot state (a tensor's data matches its shape; 'seed' or
# 'z'; the binary part is what binary_data_size announces) are answered 400, and a valid body of many
# latents can pass serve.max_body_bytes (413): infer may refuse schema-valid data with those two, and
# refuses schema-violating data with 413 too. Every other check stays on for every operation.
INFER_CONFIG = """
[[operations]]
include-path-regex = "/infer$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "413"]
checks.negative_data_rejection.expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413",
                                                    "415", "422", "428", "429"]
"""


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    return {"uncond": shared_model(conditional=False), "cond": shared_model(conditional=True)}


def test_documented_errors_and_methods(models):
    app = create_app(generator=OnnxGenerator.from_onnx(models["cond"], providers="cpu"),
                     config=ServeParams(providers="cpu"), api_key=None)
    with running(app) as url:
        spec = httpx.get(f"{url}/openapi.json").json()
    for path in ("/v1/generate", "/v1/interpolate"):
        assert set(spec["paths"][path]) == {"post"}
        assert {"200", "400", "413", "415", "422", "503"} <= set(spec["paths"][path]["post"]["responses"])
    image = spec["paths"]["/v1/images/{seed}.png"]["get"]
    assert {"200", "304", "422", "503"} <= set(image["responses"])
    # The model's own rules are in the schema: this one needs a label in [0, 9].
    (label,) = [p for p in image["parameters"] if p["name"] == "label"]
    assert label["required"] and label["schema"] == {"type": "integer", "minimum": 0, "maximum": 9}
    body = spec["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    seeds_form, range_form = body["oneOf"]
    assert {"seeds", "labels"} <= set(seeds_form["required"]) and not seeds_form["additionalProperties"]
    assert range_form["properties"]["count"]["maximum"] == 256
    assert spec["components"]["schemas"]["ValidationErrorBody"]["properties"]["detail"]["type"] == "array"
    infer = spec["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert {"200", "400", "404", "413", "415", "503"} <= set(infer["responses"])
    assert set(infer["responses"]["200"]["content"]) == {"application/json", "application/octet-stream"}
    request = infer["requestBody"]["content"]["application/json"]["schema"]
    assert "$defs" not in request and "$ref" not in str(request)  # inlined: it resolves inside the document
    (label,) = [t for t in request["properties"]["inputs"]["items"]["oneOf"] if t["properties"]["name"]["const"] == "label"]
    assert label["properties"]["data"]["items"] == {"type": "integer", "minimum": 0, "maximum": 9}
    assert spec["components"]["schemas"]["OipErrorBody"]["required"] == ["error"]


@pytest.mark.parametrize(("kind", "api_key"), [("uncond", None), ("cond", "s3cret")])
def test_schemathesis_finds_no_failures(models, tmp_path, kind, api_key):
    if not SCHEMATHESIS.exists():
        pytest.fail(f"{SCHEMATHESIS} missing: install requirements.lock (schemathesis is pinned there)")
    app = create_app(generator=OnnxGenerator.from_onnx(models[kind], providers="cpu"),
                     config=ServeParams(providers="cpu"), api_key=api_key)
    with running(app) as url:
        (tmp_path / "schemathesis.toml").write_text(INFER_CONFIG)
        cmd = [str(SCHEMATHESIS), "--config-file", str(tmp_path / "schemathesis.toml"), "run", f"{url}/openapi.json", "--checks", "all", "--mode", "all",
               "--max-examples", "20", "--seed", "1", "--workers", "1",
               "--generation-database", "none", "--no-color", "--continue-on-failure"]
        if api_key:
            cmd += ["--header", f"Authorization: Bearer {api_key}"]
        # cwd: schemathesis keeps a cache folder where it runs, which belongs in no checkout.
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and "No issues found" in done.stdout, done.stdout[-6000:] + done.stderr[-2000:]
    assert "17 selected / 17 total" in done.stdout  # every operation was fuzzed: 8 of /v1, 9 of /v2
