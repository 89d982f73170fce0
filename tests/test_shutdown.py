"""Shutdown: every request in flight gets an answer, the batch running finishes, the rest get 503."""
from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from _serving import shared_model, wait_ready
from pipeline_repo import free_port

from ganops.serving.batcher import MicroBatcher, ShuttingDown
from ganops.serving.inference import OnnxGenerator
from ganops.png import png
from ganops.sampling import latents, to_uint8
from ganops.serving.prometheus import Metrics


@pytest.fixture(scope="module")
def model() -> Path:
    # Wide enough that 256 images take a while: the queue is still full when shutdown begins.
    return shared_model(conditional=False, width=32)


def _batcher(generator: OnnxGenerator, threads: int = 1) -> MicroBatcher:
    return MicroBatcher(generator=generator, max_batch=256, max_wait_ms=0.0, queue_size=64, enabled=True,
                        metrics=Metrics(), encode_png=png, threads=threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_stop_answers_every_waiting_request_and_finishes_the_running_batch(model, threads):
    g = OnnxGenerator.from_onnx(model, providers="cpu")

    async def scenario():
        batcher = _batcher(g, threads)
        await batcher.start()
        jobs = [asyncio.create_task(batcher.submit(latents(range(256 * i, 256 * (i + 1)), g.z_dim), None))
                for i in range(6)]
        while not batcher.running:  # the first batch is in the worker thread now
            await asyncio.sleep(0.001)
        batcher.close()  # what the server's shutdown hook calls
        with pytest.raises(ShuttingDown):
            await batcher.submit(latents([1], g.z_dim), None)  # nothing new is taken
        await batcher.stop()
        _, pending = await asyncio.wait(jobs, timeout=10)  # resolved by stop(): none is left waiting
        assert not pending
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = asyncio.run(scenario())
    # The batches already running (one per thread, at most) finish; every other request gets 503.
    done = [i for i, r in enumerate(results) if isinstance(r, np.ndarray)]
    assert done[:1] == [0] and len(done) <= threads, done
    for i in done:
        np.testing.assert_array_equal(results[i], to_uint8(g.run(latents(range(256 * i, 256 * (i + 1)), g.z_dim))))
    assert all(isinstance(r, ShuttingDown) for i, r in enumerate(results) if i not in done), results


def test_stop_answers_a_batch_that_outlives_the_grace_period(model):
    g = OnnxGenerator.from_onnx(model, providers="cpu")

    async def scenario():
        batcher = _batcher(g)
        await batcher.start()
        job = asyncio.create_task(batcher.submit(latents(range(256), g.z_dim), None))
        while not batcher.running:
            await asyncio.sleep(0.001)
        await batcher.stop(grace_s=0.0)
        _, pending = await asyncio.wait([job], timeout=10)  # its images, or 503 if still running
        assert not pending
        return await asyncio.gather(job, return_exceptions=True)

    (result,) = asyncio.run(scenario())
    assert isinstance(result, (np.ndarray, ShuttingDown))


def test_sigterm_answers_every_request_in_flight(model, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANOPS_")}
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "ganops.cli", "serve", "--model", str(model), "--port", str(port),
             "--providers", "cpu", "--queue-size", "64"], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=60)
        answers: list[httpx.Response | Exception] = []
        clients = [httpx.Client(timeout=60) for _ in range(32)]  # made first: they are slow to make
        start = threading.Barrier(len(clients))

        def post(i: int) -> None:
            start.wait()
            try:
                answers.append(clients[i].post(f"{url}/v1/generate", json={
                    "count": 256, "start_seed": 256 * i, "format": "npy"}))
            except httpx.HTTPError as e:  # a dropped connection: the bug this test is about
                answers.append(e)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(len(clients))]
        for t in threads:
            t.start()
        while _queue_depth(url) < 8:  # requests the app holds, waiting for the generator
            pass
        server.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert server.wait(30) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
    output = log.read_text()
    assert len(answers) == 32
    assert not any(t.is_alive() for t in threads)
    assert all(isinstance(a, httpx.Response) for a in answers), ([getattr(a, "status_code", a) for a in answers], output[-3000:])
    statuses = sorted({a.status_code for a in answers})
    assert statuses == [200, 503], output[-3000:]
    for a in answers:
        if a.status_code == 200:
            assert np.load(io.BytesIO(a.content)).shape == (256, 28, 28)
        else:
            assert "shutting down" in a.json()["detail"]
            assert a.headers["retry-after"] == "1" and a.headers["connection"] == "close"
    assert "timeout graceful shutdown exceeded" not in output  # nothing was left to be cancelled
    assert "Application shutdown complete" in output


def _queue_depth(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ganops_queue_depth ")]
    return float(line.split()[1])
