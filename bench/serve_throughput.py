"""Serving throughput: `ganops serve` under wrk, against ONNX Runtime's ceilings and a reference server.

    .venv/bin/python bench/serve_throughput.py [--model models/generator.onnx] [--seconds 10]
        [--serve-args '--workers 1' --serve-args '--workers 2 --batch-threads 2' ... | --levers]

Everything in one run, on this machine:
  1. raw ONNX Runtime at batch 256, images/s (the session alone);
  2. ONNX Runtime + PNG encoding at batch 64 in one process, images/s: the ceiling of any server
     here, since every image must be drawn and encoded;
  3. bench/reference_server.py, a plain Starlette app calling the session per request: the anchor;
  4. `ganops serve` with its defaults, or once per --serve-args (each its extra flags), in that order;
     --levers runs the README's set (LEVERS: workers, overlapping batches, ONNX Runtime threads);
3 and 4 under wrk (Debian's `wrk`: one thread, keep-alive connections, a random seed per request,
GET /v1/images/{seed}.png) at concurrency 1 and 32: requests/s, p50, p99, and the CPU time each
image cost (the server's, all threads of all its processes, and wrk's), which depends far less than requests/s
on what else the machine is running. wrk costs little CPU, but it still shares the cores with the
server. Without --model (or when models/generator.onnx is
absent) the model is a freshly initialised generator of params.yaml's model section, exported:
speed does not depend on the weights. Prints the machine's load before the run, then a Markdown
table (the README's). The goal, for the first `ganops serve`: at c=32, >= 60% of the ceiling with
p99 <= 15 ms, ahead of 3.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from ganops.serving.inference import OnnxGenerator
from ganops.png import png
from ganops.sampling import latents, to_uint8

REPO = Path(__file__).resolve().parents[1]
# The README's table: the settings measured for issue 29, best first, then the defaults.
LEVERS = ["--workers 2 --max-wait-ms 0", "--workers 2", "--workers 2 --batch-threads 2", "--ort-threads 0",
          "--batch-threads 2", ""]
WRK_SCRIPT = """
math.randomseed(%d)
request = function()
  return wrk.format("GET", "/v1/images/" .. math.random(0, 2147483647) .. ".png%s")
end
"""


def images_per_second(run, batch: int, min_seconds: float) -> tuple[float, float]:
    """Calls `run()` (one batch) until `min_seconds` have passed (and at least 5 times):
    images per second, and CPU microseconds (all threads) per image."""
    for _ in range(3):
        run()
    calls, start, cpu = 0, time.perf_counter(), time.process_time()
    while calls < 5 or time.perf_counter() - start < min_seconds:
        run()
        calls += 1
    images = batch * calls
    return images / (time.perf_counter() - start), (time.process_time() - cpu) / images * 1e6


def ceilings(model: Path, min_seconds: float) -> dict[str, tuple[float, float]]:
    g = OnnxGenerator.from_onnx(model, providers="cpu")  # ONNX Runtime's own thread default
    z256, z64 = latents(range(256), g.z_dim), latents(range(64), g.z_dim)
    labels = {n: np.zeros(n, np.int64) if g.conditional else None for n in (256, 64)}
    return {  # the PNG encoder is the server's own
        "ort_b256": images_per_second(lambda: g.run(z256, labels[256]), 256, min_seconds),
        "ort_png_b64": images_per_second(
            lambda: [png(im) for im in to_uint8(g.run(z64, labels[64]))], 64, min_seconds),
    }


def busy_fraction(seconds: float = 2.0) -> float:
    """The share of all cores busy (any process) over `seconds`, from /proc/stat."""
    def sample():
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def _seconds(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its children (workers; all threads), from /proc."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # fields[1]: the parent's pid
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wrk(port: int, *, connections: int, seconds: float, label: str, seed: int, server_pid: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % (seed, label))
    server_cpu, children = cpu_seconds(server_pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", f.name,
             f"http://127.0.0.1:{port}"], capture_output=True, text=True, timeout=seconds + 60, check=True)
    finally:
        os.unlink(f.name)
    server_cpu = cpu_seconds(server_pid) - server_cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    text = done.stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", text, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: (.*)$", text, re.M)
    requests = int(re.search(r"(\d+) requests in", text)[1])
    return {"connections": connections, "req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", text)[1]),
            "server_cpu_us": server_cpu / requests * 1e6, "wrk_cpu_us": wrk_cpu / requests * 1e6,
            "p50_ms": _seconds(latency["50"]) * 1e3, "p99_ms": _seconds(latency["99"]) * 1e3,
            "errors": int(errors[1]) if errors else 0, "socket_errors": socket_errors[1] if socket_errors else ""}


def run_server(cmd: list[str], port: int, ready_path: str, *, seconds: float, label: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANOPS_")}
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd} did not get ready: {server.stderr.read()[-2000:] if server.poll() is not None else ''}")
            time.sleep(0.2)
        rows = []
        for i, connections in enumerate((1, 32)):
            wrk(port, connections=connections, seconds=2, label=label, seed=100 + i, server_pid=server.pid)  # warm up
            rows.append(wrk(port, connections=connections, seconds=seconds, label=label, seed=i,
                            server_pid=server.pid))
        return rows
    finally:
        server.terminate()
        server.wait(30)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_model(directory: Path) -> Path:
    """params.yaml's model section, freshly initialised and exported (needs the pipeline's torch)."""
    import torch

    from ganops.export import export_onnx
    from ganops.networks import Generator as TorchGenerator
    from ganops.networks import NetConfig, save_generator
    from ganops.params import load

    m = load(REPO / "params.yaml").model
    torch.manual_seed(0)
    fields = {f: getattr(m, f) for f in NetConfig.__dataclass_fields__ if hasattr(m, f)}
    save_generator(directory / "gan", TorchGenerator(NetConfig(**fields)).eval())
    export_onnx(model_dir=directory / "gan", onnx_path=directory / "generator.onnx", opset=18,
                lineage={}, parity_seeds=8)
    return directory / "generator.onnx"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an exported generator (default: models/generator.onnx, else a fresh one)")
    parser.add_argument("--seconds", type=float, default=15.0, help="wrk duration per measurement")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="time per ONNX Runtime measurement")
    parser.add_argument("--serve-args", action="append",
                        help="extra `ganops serve` flags, e.g. '--workers 1'; repeat it to compare settings in "
                        "one run (default: one server with its defaults)")
    parser.add_argument("--levers", action="store_true", help="compare the README's settings (LEVERS) in one run")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: this bench measures with Debian's wrk (apt-get install -y wrk)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="ganops-bench-") as tmp:
        model = Path(args.model) if args.model else REPO / "models" / "generator.onnx"
        if not args.model and not model.exists():
            model = fresh_model(Path(tmp))
        g = OnnxGenerator.from_onnx(model, providers="cpu")
        label = "?label=0" if g.conditional else ""
        busy = busy_fraction()
        print(f"model {model} ({g!r}); {os.cpu_count()} CPUs, {busy:.0%} busy before the run "
              f"(load average {os.getloadavg()[0]:.2f})", file=sys.stderr)
        runtime = ceilings(model, args.min_seconds)
        port = free_port()
        reference = run_server([sys.executable, str(REPO / "bench" / "reference_server.py"), "--model",
                                str(model), "--port", str(port)], port, f"/v1/images/0.png{label}",
                               seconds=args.seconds, label=label)
        ganops = {}
        for extra in LEVERS if args.levers else args.serve_args or [""]:
            port = free_port()
            ganops[extra] = run_server([sys.executable, "-m", "ganops.cli", "serve", "--model", str(model), "--port",
                                        str(port), "--providers", "cpu", "--log-level", "warning", "--no-verify",
                                        *extra.split()], port, "/readyz", seconds=args.seconds, label=label)
        busy_after = busy_fraction()

    ceiling, ceiling_cpu = runtime["ort_png_b64"]
    print(f"\nwrk -t1, {args.seconds:g} s per row, GET /v1/images/{{seed}}.png, random seeds; "
          f"{busy:.0%} / {busy_after:.0%} of the CPUs busy before / after\n")
    print("| what | concurrency | img/s | of the ceiling | p50 ms | p99 ms | CPU µs per image | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| ONNX Runtime, batch 256 | - | {runtime['ort_b256'][0]:.0f} | - | - | - | {runtime['ort_b256'][1]:.0f} | - |")
    print(f"| ONNX Runtime + PNG, batch 64: the ceiling | - | {ceiling:.0f} | 100% | - | - | {ceiling_cpu:.0f} | - |")
    servers = [("reference server", reference)]
    servers += [(f"`ganops serve{' ' + extra if extra else ''}`", rows) for extra, rows in ganops.items()]
    for name, rows in servers:
        for r in rows:
            errors = f"{r['errors']}{' ' + r['socket_errors'] if r['socket_errors'] else ''}"
            print(f"| {name} | {r['connections']} | {r['req_per_s']:.0f} | {r['req_per_s'] / ceiling:.0%} | "
                  f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['server_cpu_us']:.0f} (+ wrk {r['wrk_cpu_us']:.0f}) | "
                  f"{errors} |")
    first, rows = next(iter(ganops.items()))
    c32 = rows[1]
    goal = c32["req_per_s"] >= 0.6 * ceiling and c32["p99_ms"] <= 15 and c32["req_per_s"] > reference[1]["req_per_s"]
    print(f"\ngoal for `ganops serve {first}` (c=32: >= 60% of the ceiling, p99 <= 15 ms, ahead of the reference): "
          f"{'met' if goal else 'not met'} ({c32['req_per_s'] / ceiling:.0%}, p99 {c32['p99_ms']:.1f} ms, "
          f"{c32['req_per_s'] / reference[1]['req_per_s']:.2f}x the reference)")
    if args.out:
        Path(args.out).write_text(json.dumps({"runtime": runtime, "reference": reference, "ganops": ganops,
                                              "busy_before": busy, "busy_after": busy_after}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
