"""The OpenAPI document tells the truth: a schema-based fuzzer, every check on, finds nothing.

Schemathesis (20 examples per operation and phase, a fixed seed, a few seconds a run) drives a real server built for an
unconditional model and, with an API key, for a conditional one: every documented operation, valid
and invalid data, undocumented methods, missing and wrong credentials.
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


@pytest.mark.parametrize(("kind", "api_key"), [("uncond", None), ("cond", "s3cret")])
def test_schemathesis_finds_no_failures(models, tmp_path, kind, api_key):
    if not SCHEMATHESIS.exists():
        pytest.fail(f"{SCHEMATHESIS} missing: install requirements.lock (schemathesis is pinned there)")
    app = create_app(generator=OnnxGenerator.from_onnx(models[kind], providers="cpu"),
                     config=ServeParams(providers="cpu"), api_key=api_key)
    with running(app) as url:
        cmd = [str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks", "all", "--mode", "all",
               "--max-examples", "20", "--seed", "1", "--workers", "1",
               "--generation-database", "none", "--no-color", "--continue-on-failure"]
        if api_key:
            cmd += ["--header", f"Authorization: Bearer {api_key}"]
        # cwd: schemathesis keeps a cache folder where it runs, which belongs in no checkout.
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and "No issues found" in done.stdout, done.stdout[-6000:] + done.stderr[-2000:]
    assert "8 selected / 8 total" in done.stdout  # every operation was fuzzed
