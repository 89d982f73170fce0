"""`ganops serve`: the model check, flags > environment > --params, one configuration type."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from _serving import port_open, shared_model, wait_ready
from pipeline_repo import free_port

import ganops.params
import ganops.serving.server as server_module
from ganops.cli import build_parser
from ganops.serving.model_source import ModelVerificationError, verify_model
from ganops.params import ServeParams
from ganops.serving.config import with_env


@pytest.fixture(scope="module")
def model() -> Path:
    return shared_model(conditional=False)


def _copy_model(model: Path, tmp_path: Path, *, sidecar: bool) -> Path:
    path = tmp_path / "generator.onnx"
    path.write_bytes(model.read_bytes())
    if sidecar:
        Path(f"{path}.sha256").write_bytes(Path(f"{model}.sha256").read_bytes())
    return path


def test_verify_model(model, tmp_path):
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert verify_model(model_path=model, expect_sha256=None, verify=True) == sha
    assert verify_model(model_path=model, expect_sha256=sha.upper(), verify=True) == sha
    with pytest.raises(ModelVerificationError, match="expected sha256"):
        verify_model(model_path=model, expect_sha256="0" * 64, verify=True)

    tampered = _copy_model(model, tmp_path, sidecar=True)
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
def test_cli_refuses_before_binding_the_port(model, tmp_path, case):
    copy = _copy_model(model, tmp_path, sidecar=case != "no_sidecar")
    extra = []
    if case == "tampered":
        copy.write_bytes(copy.read_bytes() + b"\0")
    if case == "wrong_expected":
        extra = ["--expect-sha256", "f" * 64]
    port = free_port()
    result = subprocess.run(_serve_cmd(copy, port, *extra), env=_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert "refusing to start" in result.stderr
    assert {"tampered": "changed after export", "no_sidecar": "--no-verify",
            "wrong_expected": "f" * 64}[case] in result.stderr
    assert not port_open(port)


def test_cli_serves_with_no_verify_and_reads_the_environment(model, tmp_path):
    copy = _copy_model(model, tmp_path, sidecar=False)
    port = free_port()
    params = tmp_path / "params.yaml"
    params.write_text("serve:\n  queue_size: 7\n  max_images: 3\n  max_batch: 5\n")
    env = _env(GANOPS_API_KEY="k3y", GANOPS_MAX_IMAGES="4", GANOPS_MICRO_BATCHING="false")
    # Precedence: flag (max_batch 8) > environment (max_images 4) > --params (queue_size 7).
    cmd = _serve_cmd(copy, port, "--no-verify", "--max-batch", "8", "--params", str(params))
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout=60)
        assert httpx.get(f"{url}/v1/model").status_code == 401
        info = httpx.get(f"{url}/v1/model", headers={"X-API-Key": "k3y"}).json()
        assert info["limits"]["max_images"] == 4
        assert info["micro_batching"] == {"enabled": False, "max_batch": 8, "max_wait_ms": 2.0, "queue_size": 7}
        r = httpx.post(f"{url}/v1/generate", json={"count": 5}, headers={"X-API-Key": "k3y"})
        assert r.status_code == 422 and "less than or equal to 4" in r.json()["detail"][0]["msg"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    output = log.read_text()
    assert proc.returncode in (0, -15), output  # uvicorn re-raises SIGTERM after a clean shutdown
    assert "Application shutdown complete" in output
    assert "--no-verify" in output  # the unchecked start is logged


def test_cli_usage_errors():
    assert build_parser().parse_args(["serve", "--model", "m.onnx"]).host is None
    r = subprocess.run([sys.executable, "-m", "ganops.cli", "serve", "--model", "x.onnx"],
                       env=_env(GANOPS_PORT="eighty"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "GANOPS_PORT='eighty' is not a valid int" in r.stderr
    r = subprocess.run([sys.executable, "-m", "ganops.cli", "serve"], env=_env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "--model" in r.stderr


def test_one_configuration_type_from_params_env_and_flags(tmp_path, capsys):
    # params.yaml's serve section loads into the very class the server runs on.
    assert ganops.params.ServeParams is ServeParams
    params = tmp_path / "params.yaml"
    params.write_text("serve:\n  port: 9001\n  ort_threads: 2\n")
    assert ganops.params.load(params).serve == ServeParams(port=9001, ort_threads=2)
    config = with_env(ServeParams(), {"GANOPS_PORT": "9001", "GANOPS_MICRO_BATCHING": "false",
                                      "GANOPS_MAX_WAIT_MS": "0.5", "GANOPS_HOST": "0.0.0.0"})
    assert (config.port, config.micro_batching, config.max_wait_ms, config.host) == (9001, False, 0.5, "0.0.0.0")
    with pytest.raises(ValueError, match="GANOPS_MICRO_BATCHING"):
        with_env(ServeParams(), {"GANOPS_MICRO_BATCHING": "maybe"})
    with pytest.raises(ValueError, match="serve.max_batch must be at least 1"):
        ServeParams(max_batch=0)
    with pytest.raises(ValueError, match="serve.max_images must be at least 2"):
        ganops.params.parse({"serve": {"max_images": 1}})
    with pytest.raises(ValueError, match="serve.port"):
        ServeParams(port=70000)
    # Every field is a flag of the same name and a documented GANOPS_ variable.
    flags = vars(build_parser().parse_args(["serve"]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = capsys.readouterr().out
    for f in dataclasses.fields(ServeParams):
        assert f.name in flags, f.name
        name = "GANOPS_" + f.name.upper()
        assert name in server_module.__doc__ and name in help_text, name
    for name in ("GANOPS_MODEL", "GANOPS_API_KEY", "GANOPS_MODEL_SHA256", "GANOPS_CACHE_DIR", "MLFLOW_TRACKING_URI"):
        assert name in server_module.__doc__ and name in help_text, name


def test_server_imports_no_torch_dvc_mlflow_or_yaml():
    code = ("import sys, ganops.serving.server, ganops.cli; "
            "bad = [m for m in ('torch', 'dvc', 'mlflow', 'yaml') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env())
    assert out.stdout.strip() == "[]", out.stderr
