"""Test helpers for the server: export a tiny real generator, run a real uvicorn on a free port."""
from __future__ import annotations

import atexit
import contextlib
import functools
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import uvicorn

CLASSES = [f"class-{i}" for i in range(10)]
LINEAGE = {
    "git_commit": "0123456789abcdef0123456789abcdef01234567",
    "data_manifest_sha256": "d" * 64,
    "params_sha256": "e" * 64,
    "dataset": "synthetic",
}


def export_model(directory: Path, *, conditional: bool, z_dim: int = 16, width: int = 8,
                 resolution: int = 28, channels: int = 1) -> Path:
    """A freshly initialised DCGAN generator, saved and exported by the real export code."""
    import torch

    from ganops.export import export_onnx
    from ganops.networks import Generator, NetConfig, save_generator

    torch.manual_seed(1)
    generator = Generator(NetConfig(arch="dcgan", z_dim=z_dim, width=width, conditional=conditional,
                                    resolution=resolution, channels=channels))
    # Random batch-norm statistics, so that images differ visibly from seed to seed.
    for module in generator.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    save_generator(directory / "gan", generator.eval(), {"lineage": LINEAGE, "classes": CLASSES})
    onnx_path = directory / "generator.onnx"
    export_onnx(model_dir=directory / "gan", onnx_path=onnx_path, opset=18,
                lineage={"mlflow_run_id": "run-abc"}, parity_seeds=8)
    return onnx_path


@functools.cache
def shared_model(*, conditional: bool, width: int = 8, resolution: int = 28, channels: int = 1) -> Path:
    """One export per kind for the whole test run (exporting costs seconds); copy it to change it."""
    directory = Path(tempfile.mkdtemp(prefix="ganops-test-model-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return export_model(directory, conditional=conditional, width=width, resolution=resolution, channels=channels)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def running(app, *, lifespan: str = "on") -> Iterator[str]:
    """Run `app` in a real uvicorn server in a thread, on a socket bound to a free loopback port.

    With lifespan="off" the app's start-up (micro-batcher, warm-up) never runs, so it never gets ready.
    The server is `ganops serve`'s own (ganops.serving.server.Server), shutdown hook included.
    """
    from ganops.serving.server import Server

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan=lifespan),
                    on_shutdown=app.state.service.batcher.close)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        url = f"http://127.0.0.1:{port}"
        if lifespan == "on":
            wait_ready(url)
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def wait_ready(url: str, timeout: float = 60.0, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2, headers=headers).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready after {timeout} s")
        time.sleep(0.05)


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.mode in ("L", "RGB")
    return np.asarray(image)


@contextlib.contextmanager
def serve_process(model: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`ganops serve --model <model> --providers cpu <args>` as a process of its own on a free loopback
    port; yields its URL once /readyz answers 200, and stops it (SIGTERM) afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GANOPS_")}
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(
        [sys.executable, "-m", "ganops.cli", "serve", "--model", str(model), "--port", str(port),
         "--providers", "cpu", *args], env={**clean, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"ganops serve did not get ready: {log.read().decode()[-3000:]}")
            time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
