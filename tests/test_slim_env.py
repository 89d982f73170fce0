"""Deploy without PyTorch: the inference path imports no torch/dvc/mlflow, and runs from a fresh slim venv."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from ganops.export import export_onnx
from ganops.serving.inference import OnnxGenerator
from ganops.networks import Generator as TorchGenerator
from ganops.networks import NetConfig, save_generator
from ganops.sampling import grid

REPO = Path(__file__).resolve().parents[1]
# The slim env has none of these; importing any of them on the inference path would break it.
FORBIDDEN = {"torch", "torchvision", "dvc", "mlflow", "onnx", "yaml", "scipy", "pandas"}
ENV = {**os.environ, "DVC_NO_ANALYTICS": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slim-model")
    torch.manual_seed(0)
    g = TorchGenerator(NetConfig(arch="dcgan", z_dim=16, width=8, conditional=False))
    save_generator(root / "gan", g, {"classes": [str(i) for i in range(10)]})
    export_onnx(model_dir=root / "gan", onnx_path=root / "generator.onnx", opset=18, lineage={},
                parity_seeds=8)
    return root / "generator.onnx"


def _imported(importtime_stderr: str) -> set[str]:
    """Top-level packages named in `python -X importtime` output."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header line
                names.add(name.split(".")[0])
    return names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(cmd: list[str], port: int, log: Path) -> Iterator[str]:
    """Run a server command until /healthz answers; yield its base URL; stop it on exit."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"server exited {proc.returncode}: {log.read_text()[-3000:]}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"no /healthz in 90 s: {log.read_text()[-3000:]}"
            time.sleep(0.3)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _check_server(base: str, model: Path) -> None:
    assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    response = httpx.get(f"{base}/v1/images/0.png", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as im:
        assert np.array_equal(np.asarray(im), OnnxGenerator.from_onnx(model).generate([0])[0])


def test_inference_path_imports_no_torch_dvc_mlflow(model, tmp_path):
    py = [sys.executable, "-X", "importtime"]
    api = subprocess.run(
        [*py, "-c", "import ganops; ganops.OnnxGenerator; import ganops.cli, ganops.serving.server; "
         "ganops.cli.build_parser()"],
        capture_output=True, text=True, env=ENV, timeout=120, check=True,
    )
    assert {"ganops", "onnxruntime", "fastapi"} <= _imported(api.stderr)  # the parser works
    assert _imported(api.stderr) & FORBIDDEN == set()

    generate = subprocess.run(
        [*py, "-m", "ganops.cli", "generate", "--model", str(model), "--seeds", "0-3",
         "--out", str(tmp_path / "g.png")],
        capture_output=True, text=True, env=ENV, timeout=120,
    )
    assert generate.returncode == 0, generate.stderr[-3000:]
    assert _imported(generate.stderr) & FORBIDDEN == set()

    port = _free_port()
    log = tmp_path / "serve.log"
    with _serving([*py, "-m", "ganops.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
                   "--port", str(port)], port, log) as base:
        _check_server(base, model)
    imported = _imported(log.read_text())
    assert "uvicorn" in imported and imported & FORBIDDEN == set()


@pytest.mark.slow
def test_fresh_slim_venv_generates_and_serves(model, tmp_path):
    """requirements-serve.lock + `pip install --no-deps` of a copy of the repo, in a new venv."""
    src = tmp_path / "ganops-src"  # a copy, so that no editable link to the checkout can leak in
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    env_dir = tmp_path / "slim"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bin_dir = env_dir / "bin"
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for args in (["-r", str(REPO / "requirements-serve.lock")], ["--no-deps", str(src)]):
        done = subprocess.run([*pip, *args], capture_output=True, text=True, env=ENV, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    frozen = subprocess.run([str(bin_dir / "python"), "-m", "pip", "freeze"], capture_output=True,
                            text=True, env=ENV, timeout=120, check=True).stdout.splitlines()
    locked = [line for line in (REPO / "requirements-serve.lock").read_text().splitlines()
              if line and not line.startswith("#")]
    assert sorted(p for p in frozen if not p.startswith("ganops ")) == sorted(locked)
    for package in ("torch", "mlflow", "dvc", "onnx"):
        missing = subprocess.run([str(bin_dir / "python"), "-c", f"import {package}"],
                                 capture_output=True, env=ENV, timeout=60)
        assert missing.returncode != 0, f"{package} is importable in the slim env"

    deployed = tmp_path / "deploy"
    deployed.mkdir()
    shutil.copy(model, deployed / "generator.onnx")
    shutil.copy(f"{model}.sha256", deployed / "generator.onnx.sha256")
    done = subprocess.run(
        [str(bin_dir / "ganops"), "generate", "--model", str(deployed / "generator.onnx"),
         "--seeds", "0-7", "--out", str(tmp_path / "grid.png")],
        capture_output=True, text=True, env=ENV, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with Image.open(tmp_path / "grid.png") as im:
        assert np.array_equal(np.asarray(im), grid(OnnxGenerator.from_onnx(model).generate(range(8))))

    port = _free_port()
    with _serving([str(bin_dir / "ganops"), "serve", "--model", str(deployed / "generator.onnx"),
                   "--host", "127.0.0.1", "--port", str(port)], port, tmp_path / "serve.log") as base:
        _check_server(base, model)
