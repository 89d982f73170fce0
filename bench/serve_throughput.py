"""Serving speed: ONNX Runtime vs torch eager, and the HTTP server with and without micro-batching.

    .venv/bin/python bench/serve_throughput.py [--model-dir models/gan] [--requests 400]

(a) generator images/s, torch eager vs ONNX Runtime (CPU), at batch 1 and 256;
(b) single-image GET /v1/images/{seed}.png against a real `ganops serve` subprocess on a free
    loopback port, at concurrency 1, 8 and 32 (keep-alive connections, a bounded number of
    requests each), micro-batching on and off: throughput, p50, p99.
Everything is measured in this run and reported as ratios against the baselines of this run; the
client shares the machine with the server, so absolute numbers are a floor. Without --model-dir the
generator is a freshly initialised one of params.yaml's model section (speed does not depend on the
weights).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from ganops.export import export_onnx
from ganops.inference import Generator as OnnxGenerator
from ganops.networks import Generator, NetConfig, load_generator, save_generator
from ganops.params import load
from ganops.sampling import latents

REPO = Path(__file__).resolve().parents[1]


def images_per_second(run, batch: int, min_seconds: float) -> float:
    """Calls `run()` (one batch) until `min_seconds` have passed (and at least 5 times)."""
    for _ in range(3):
        run()
    calls, start = 0, time.perf_counter()
    while calls < 5 or time.perf_counter() - start < min_seconds:
        run()
        calls += 1
    return batch * calls / (time.perf_counter() - start)


def bench_runtimes(torch_g: Generator, onnx_g: OnnxGenerator, min_seconds: float) -> dict[str, float]:
    out = {}
    for batch in (1, 32, 256):
        z = latents(range(batch), onnx_g.z_dim)
        labels = np.zeros(batch, np.int64) if onnx_g.conditional else None
        zt = torch.from_numpy(z)
        lt = None if labels is None else torch.from_numpy(labels)

        def eager(zt=zt, lt=lt):
            with torch.inference_mode():
                torch_g(zt, lt)

        if batch != 32:  # batch 32 only as the server's best case at concurrency 32
            out[f"torch_b{batch}"] = images_per_second(eager, batch, min_seconds)
        out[f"ort_b{batch}"] = images_per_second(lambda z=z, labels=labels: onnx_g.run(z, labels), batch, min_seconds)
    return out


async def _client(port: int, seeds: list[int], label: str, latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for seed in seeds:
            request = f"GET /v1/images/{seed}.png{label} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(int(ln.split(":", 1)[1]) for ln in lines if ln.lower().startswith("content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if not lines[0].startswith("HTTP/1.1 200"):
                errors.append(lines[0])
    finally:
        writer.close()


async def load_test(port: int, *, concurrency: int, requests: int, first_seed: int, label: str) -> dict:
    """`requests` single-image GETs over `concurrency` keep-alive connections."""
    per = [list(range(first_seed + i, first_seed + requests, concurrency)) for i in range(concurrency)]
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    await asyncio.gather(*(_client(port, seeds, label, latencies, errors) for seeds in per))
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "errors": len(errors),
            "img_per_s": len(latencies) / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_server(model: Path, *, micro_batching: bool, requests: int, label: str) -> list[dict]:
    port = free_port()
    cmd = [sys.executable, "-m", "ganops.cli", "serve", "--model", str(model), "--port", str(port),
           "--providers", "cpu", "--log-level", "warning"]
    if not micro_batching:
        cmd.append("--no-micro-batching")
    env = {**os.environ, "DVC_NO_ANALYTICS": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("GANOPS_API_KEY", None)
    server = subprocess.Popen(cmd, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not get ready")
            time.sleep(0.1)
        results = []
        for i, concurrency in enumerate((1, 8, 32)):
            asyncio.run(load_test(port, concurrency=concurrency, requests=min(64, requests),
                                  first_seed=10**9, label=label))  # warm the connections and code paths
            results.append(asyncio.run(load_test(port, concurrency=concurrency, requests=requests,
                                                 first_seed=i * requests, label=label)))
        return results
    finally:
        server.terminate()
        server.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="a saved generator (models/gan); default: a fresh one")
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="time per runtime measurement")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ganops-bench-") as tmp:
        tmp = Path(tmp)
        if args.model_dir:
            torch_g, _ = load_generator(args.model_dir)
            model_dir = Path(args.model_dir)
        else:
            m = load(REPO / "params.yaml").model
            torch.manual_seed(0)
            torch_g = Generator(NetConfig(arch=m.arch, z_dim=m.z_dim, width=m.width, conditional=m.conditional)).eval()
            model_dir = tmp / "gan"
            save_generator(model_dir, torch_g)
        onnx_path = tmp / "generator.onnx"
        export_onnx(model_dir=model_dir, onnx_path=onnx_path, opset=18, lineage={}, parity_seeds=8)
        onnx_g = OnnxGenerator.from_onnx(onnx_path, providers="cpu")
        print(f"model: {torch_g.cfg}; {os.cpu_count()} CPUs; torch {torch.get_num_threads()} threads",
              file=sys.stderr)

        runtimes = bench_runtimes(torch_g, onnx_g, args.min_seconds)
        label = "?label=0" if onnx_g.conditional else ""
        servers = {mode: bench_server(onnx_path, micro_batching=mode == "on", requests=args.requests, label=label)
                   for mode in ("on", "off")}

    print("\n(a) generator, images/s (CPU)")
    print(f"{'batch':>6} {'torch eager':>12} {'onnxruntime':>12} {'ratio':>7}")
    for b in (1, 256):
        t, o = runtimes[f"torch_b{b}"], runtimes[f"ort_b{b}"]
        print(f"{b:>6} {t:>12.0f} {o:>12.0f} {o / t:>6.2f}x")
    print(f"(onnxruntime at batch 32, the most a concurrency-32 server can batch: {runtimes['ort_b32']:.0f} img/s)")

    print("\n(b) server, single-image GET /v1/images/{seed}.png")
    print(f"{'micro-batching':>14} {'conc':>5} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for mode, rows in servers.items():
        for r in rows:
            print(f"{mode:>14} {r['concurrency']:>5} {r['img_per_s']:>8.0f} {r['p50_ms']:>8.2f} "
                  f"{r['p99_ms']:>8.2f} {r['errors']:>7}")

    on32, off32 = servers["on"][2], servers["off"][2]
    ratios = {
        "ort_vs_torch_b1": runtimes["ort_b1"] / runtimes["torch_b1"],
        "ort_vs_torch_b256": runtimes["ort_b256"] / runtimes["torch_b256"],
        "server_c32_vs_raw_ort_b256": on32["img_per_s"] / runtimes["ort_b256"],
        "server_c32_vs_raw_ort_b32": on32["img_per_s"] / runtimes["ort_b32"],
        **{f"micro_on_vs_off_c{on['concurrency']}": on["img_per_s"] / off["img_per_s"]
           for on, off in zip(servers["on"], servers["off"], strict=True)},
    }
    print("\nratios (targets: ort_vs_torch_b1 >= 3; server_c32_vs_raw_ort_b256 >= 0.5 with p99 <= 50 ms)")
    for name, value in ratios.items():
        print(f"  {name:<28} {value:6.2f}")
    print(f"  {'p99_ms_c32_micro_batching':<28} {on32['p99_ms']:6.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"runtimes": runtimes, "servers": servers, "ratios": ratios},
                                             indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
