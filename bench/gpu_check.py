"""The GPU check of ganops, one command that writes one JSON: AMP training, DDP, ONNX Runtime CUDA, Inception.

    python bench/gpu_check.py --out results.json            # on a CUDA machine: under 5 minutes
    python bench/gpu_check.py --out results.json --dry-run  # every section on the CPU, tiny sizes (~1 min)

Sections, each {"ok": ..., "seconds": ...} plus its measurements, or {"ok": false, "error": ...}:
  environment  GPU name, CUDA capability, bf16 support, torch / onnxruntime versions and providers
  amp          ganops.training.loop.train for a few hundred steps in train.precision auto, fp16 and fp32:
               img/s, peak GPU memory, whether the losses stayed finite
  ddp          torchrun stages/train.py on 2 GPUs; with one GPU, that --nproc_per_node=2 and
               train.device cuda fails with the error that names --nproc_per_node
  onnx         a generator exported by ganops.export: ONNX Runtime CUDA vs CPU parity, img/s
  colour64     train() on 64x64 RGB images in train.precision auto: img/s, peak memory, finite losses;
               its export, ONNX Runtime CUDA vs CPU parity
  serve        `ganops serve --providers cuda` (a real server process): the Open Inference Protocol's
               infer at batch 1 and 256, img/s, and its pixels against ONNX Runtime on the CPU
  inception    ganops.metrics.inception.InceptionPool3 on the GPU: img/s, agreement with the CPU
A CUDA-only part records "skipped: ..." where it cannot run (always in --dry-run). Exit 1 when any
check failed. The JSON is rewritten after every section, so a run stopped at a time limit keeps what
it measured. Uses data/prepared when present, else random images; all other outputs (models,
checkpoints, the MLflow store) go to a temp dir that is removed at the end.

Where no package registry can be reached (a lent GPU machine whose own python3 has torch, onnx and
onnxruntime but not MLflow or prdc), bring those as wheels (about 22 MB) in a git-ignored .gpu/:
    echo /.gpu/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
      -d .gpu/whl $(grep -iE "^($WHEELS)==" requirements.lock)
with WHEELS='mlflow.skinny|mlflow.tracing|sqlalchemy|alembic|mako|prdc|databricks.sdk|google.auth|pyasn1|
pyasn1.modules|cryptography|cffi|pycparser|cachetools|fastapi|starlette|uvicorn|gitpython|gitdb|smmap|
importlib.metadata|opentelemetry.(api|proto|sdk|semantic.conventions)|pydantic|pydantic.core|
annotated.types|typing.inspection|python.dotenv|sqlparse' (one line), and there run
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
    PYTHONPATH=$PWD/src:/tmp/site python3 bench/gpu_check.py --out $OUT/gpu_check.json
"""
from __future__ import annotations

import argparse
import copy
import csv
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import yaml

import ganops
from ganops import params
from ganops.metrics import inception
from ganops.fileio import write_json
from ganops.data.prepared import load_manifest, load_split, write_prepared

TORCHRUN_TIMEOUT_S = 300  # one torchrun of stages/train.py, start-up of both processes included
PARITY_ATOL = 1e-3  # ONNX Runtime CUDA vs CPU, max abs difference on images in [-1, 1]
# pool3 features of the same images on the GPU vs the CPU: max |gpu - cpu| / max |cpu|. cuDNN's
# convolutions run in TF32 by default (what evaluate uses), which is expected to stay well inside this.
INCEPTION_RTOL = 1e-2
ORT_CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class Sizes:
    """How much each section does; FULL on a GPU, DRY on the CPU in about a minute."""
    train_steps: int  # per precision
    ddp_steps: int
    train_images: int  # a prefix of the train split (0: all)
    overrides: dict = field(default_factory=dict)  # params.yaml sections -> keys replaced for every run
    onnx_batches: tuple[int, ...] = (1, 256)
    onnx_seconds: float = 2.0  # timed per provider and batch, after a warm-up
    inception_images: int = 2000  # timed on the GPU
    inception_agree: int = 64  # compared between the GPU and the CPU
    inception_batch: int = 250


FULL = Sizes(train_steps=300, ddp_steps=200, train_images=0)
DRY = Sizes(train_steps=3, ddp_steps=2, train_images=512,
            overrides={"model": {"width": 8}, "train": {"batch_size": 16}, "export": {"parity_seeds": 16}},
            onnx_batches=(1, 16), onnx_seconds=0.2, inception_images=2, inception_agree=2, inception_batch=2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="the results JSON")
    parser.add_argument("--dry-run", action="store_true", help="everything on the CPU, tiny sizes")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the base params")
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"),
                        help="training images (random ones when absent)")
    parser.add_argument("--inception-weights", default="",
                        help="TorchScript Inception; default evaluate.inception_weights, else the package's")
    args = parser.parse_args()
    sizes = DRY if args.dry_run else FULL
    cuda = torch.cuda.is_available() and not args.dry_run
    raw = _merge(yaml.safe_load(args.params.read_text()), sizes.overrides)
    params.parse(raw)  # a bad params.yaml fails here, not once per section
    stage_train = Path("stages/train.py").resolve()
    results: dict = {"dry_run": args.dry_run, "sizes": asdict(sizes)}

    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"  # never the repo's store
        prepared = _prepared(args.prepared, work / "prepared", sizes.train_images)
        weights = args.inception_weights or params.parse(raw).evaluate.inception_weights
        sections = {
            "environment": environment,
            "amp": lambda: check_amp(raw=raw, prepared=prepared, work=work / "amp", sizes=sizes, cuda=cuda),
            "ddp": lambda: check_ddp(raw=raw, prepared=prepared, work=work / "ddp", sizes=sizes, cuda=cuda,
                                     dry_run=args.dry_run, stage_train=stage_train),
            "onnx": lambda: check_onnx(raw=raw, work=work / "onnx", sizes=sizes, cuda=cuda),
            "colour64": lambda: check_colour64(raw=raw, work=work / "colour64", sizes=sizes, cuda=cuda),
            "serve": lambda: check_serve(raw=raw, work=work / "serve", sizes=sizes, cuda=cuda),
            "inception": lambda: check_inception(prepared=prepared, weights=weights, sizes=sizes, cuda=cuda),
        }
        for name, run in sections.items():
            start = time.perf_counter()
            try:
                result = run()
            except Exception as e:  # one section's failure must not lose the others' results
                result = {"ok": False, "error": f"{type(e).__name__}: {e}",
                          "traceback": traceback.format_exc(limit=-4)}
            result["seconds"] = round(time.perf_counter() - start, 1)
            results[name] = result
            write_json(args.out, results)
            print(f"gpu_check: {name}: {_summary(result)}", file=sys.stderr, flush=True)
    failed = [name for name in sections if not results[name]["ok"]]
    print(f"gpu_check: wrote {args.out}; " + (f"FAILED: {', '.join(failed)}" if failed else "all ok"),
          file=sys.stderr)
    return 1 if failed else 0


# --- sections ------------------------------------------------------------------------------------


def environment() -> dict:
    env = {
        "ok": True, "python": platform.python_version(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers(),
        "ganops": ganops.__version__, "git_commit": _git_commit(), "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(), "cuda_device_count": torch.cuda.device_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu_name=props.name, cuda_capability=f"{props.major}.{props.minor}",
                   gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   bf16_native=torch.cuda.is_bf16_supported(including_emulation=False))
    else:
        env.update(gpu_name=None, cpu_bf16_native=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    return env


def check_amp(*, raw: dict, prepared: Path, work: Path, sizes: Sizes, cuda: bool) -> dict:
    """train() once per precision; each precision fails or passes on its own."""
    from ganops.training.loop import train

    runs = {}
    for precision in ("auto", "fp16", "fp32"):
        if precision == "fp16" and not cuda:
            runs[precision] = {"ok": True, "skipped": "no CUDA (fp16 with a GradScaler needs it)"}
            continue
        try:
            p = params.parse(_merge(raw, {"train": _short_run(sizes.train_steps, precision=precision,
                                                              device="cuda" if cuda else "cpu")}))
            run_dir = work / precision
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            s = train(params=p, prepared_dir=prepared, classifier_dir=work / "unused",
                      reference_dir=work / "unused", model_dir=run_dir / "gan",
                      checkpoint_dir=run_dir / "checkpoints", report_dir=run_dir / "reports")
            wall = time.perf_counter() - start
            finite, last = _losses_finite(run_dir / "reports" / "losses.csv")
            runs[precision] = {
                "ok": finite and s["steps"] == sizes.train_steps, "precision": s["precision"],
                "device": s["device"], "steps": s["steps"], "batch_size": p.train.batch_size,
                "img_per_s": round(s["img_per_s"], 1), "wall_s": round(wall, 1),
                "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
                "losses_finite": finite, "last_losses": last,
            }
        except Exception as e:
            runs[precision] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"ok": all(r["ok"] for r in runs.values()), "runs": runs}


def check_ddp(*, raw: dict, prepared: Path, work: Path, sizes: Sizes, cuda: bool, dry_run: bool,
              stage_train: Path) -> dict:
    gpus = torch.cuda.device_count() if cuda else 0
    if gpus >= 2:
        run = _torchrun(raw=raw, prepared=prepared, work=work / "two-gpus", device="cuda",
                        steps=sizes.ddp_steps, stage_train=stage_train)
        return {"ok": run["ok"], "two_gpus": run}
    if cuda:
        # The clear error of runtime.pick_device, not an invalid device ordinal from deep in CUDA.
        run = _torchrun(raw=raw, prepared=prepared, work=work / "one-gpu", device="cuda", steps=1,
                        stage_train=stage_train)
        output = (work / "one-gpu" / "torchrun.log").read_text(errors="replace")
        lines = [ln for ln in output.splitlines() if "--nproc_per_node" in ln]
        clear = run["returncode"] != 0 and bool(lines)
        return {"ok": clear, "two_gpus": f"skipped: {gpus} GPU",
                "one_gpu_error": {"ok": clear, "returncode": run["returncode"],
                                  "message": lines[0].strip() if lines else output[-2000:]}}
    if dry_run:
        # Two gloo processes on the CPU: the same torchrun command line as on two GPUs.
        run = _torchrun(raw=raw, prepared=prepared, work=work / "cpu", device="cpu", steps=sizes.ddp_steps,
                        stage_train=stage_train)
        return {"ok": run["ok"], "two_processes_cpu": run, "two_gpus": "skipped: no CUDA",
                "one_gpu_error": "skipped: no CUDA"}
    return {"ok": True, "two_gpus": "skipped: no CUDA", "one_gpu_error": "skipped: no CUDA"}


def check_onnx(*, raw: dict, work: Path, sizes: Sizes, cuda: bool) -> dict:
    """Export a fresh generator of params.yaml's model with ganops.export; run it on both providers."""
    from ganops.export import export_onnx
    from ganops.serving.inference import OnnxGenerator
    from ganops.networks import Generator, NetConfig, save_generator
    from ganops.sampling import latents

    p = params.parse(raw)
    mp = p.model
    torch.manual_seed(0)
    G = Generator(NetConfig.from_params(mp, 10)).eval()
    save_generator(work / "gan", G)
    report = export_onnx(model_dir=work / "gan", onnx_path=work / "generator.onnx", opset=p.export.opset,
                         lineage={}, parity_seeds=p.export.parity_seeds, parity_atol=p.export.parity_atol)
    out: dict = {"opset": report["opset"], "torch_vs_ort_cpu_max_abs_diff": report["parity_max_abs_diff"]}

    cpu = OnnxGenerator.from_onnx(work / "generator.onnx", "cpu")
    out["cpu"] = {f"img_per_s_batch_{b}": _ort_img_per_s(cpu, b, sizes.onnx_seconds) for b in sizes.onnx_batches}
    if not cuda:
        out["cuda"] = "skipped: no CUDA"
        return {"ok": True, **out}
    if ORT_CUDA not in ort.get_available_providers():
        out["cuda"] = (f"skipped: this onnxruntime ({ort.__version__}) has no {ORT_CUDA} (available: "
                       f"{', '.join(ort.get_available_providers())}); onnxruntime-gpu has it")
        return {"ok": True, **out}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # checked below: .provider says what runs
        gpu = OnnxGenerator.from_onnx(work / "generator.onnx", "cuda")
    if gpu.provider != ORT_CUDA:
        raise RuntimeError(f"{ORT_CUDA} is available but the session runs on {gpu.provider} "
                           "(check the CUDA and cuDNN libraries that onnxruntime-gpu loads)")
    seeds = max(sizes.onnx_batches)
    z = latents(range(seeds), mp.z_dim)
    labels = np.arange(seeds) % cpu.num_classes if cpu.conditional else None
    diff = float(np.abs(gpu.run(z, labels) - cpu.run(z, labels)).max())
    out["cuda"] = {"provider": gpu.provider, "max_abs_diff_vs_cpu": diff, "seeds": seeds,
                   **{f"img_per_s_batch_{b}": _ort_img_per_s(gpu, b, sizes.onnx_seconds)
                      for b in sizes.onnx_batches}}
    return {"ok": diff <= PARITY_ATOL, "parity_atol": PARITY_ATOL, **out}


def check_colour64(*, raw: dict, work: Path, sizes: Sizes, cuda: bool) -> dict:
    """A 64 px colour set (random pixels: speed and numerics, not quality) through train() and export."""
    from ganops.export import export_onnx
    from ganops.serving.inference import OnnxGenerator
    from ganops.sampling import latents
    from ganops.training.loop import train

    rng = np.random.default_rng(0)
    n = max(sizes.train_images, 1024) if sizes.train_images else 8192
    x, y = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)
    write_prepared(work / "prepared", splits={"train": (x, y), "test": (x[:256], y[:256])}, dataset="random 64x64x3",
                   num_classes=10, sources={}, extra={"resolution": 64, "channels": 3})
    p = params.parse(_merge(raw, {"train": _short_run(sizes.train_steps, device="cuda" if cuda else "cpu")}))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    s = train(params=p, prepared_dir=work / "prepared", classifier_dir=work / "unused", reference_dir=work / "unused",
              model_dir=work / "gan", checkpoint_dir=work / "checkpoints", report_dir=work / "reports")
    finite, last = _losses_finite(work / "reports" / "losses.csv")
    out: dict = {"precision": s["precision"], "device": s["device"], "steps": s["steps"],
                 "img_per_s": round(s["img_per_s"], 1), "losses_finite": finite, "last_losses": last,
                 "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None}
    report = export_onnx(model_dir=work / "gan", onnx_path=work / "generator.onnx", opset=p.export.opset,
                         lineage={}, parity_seeds=p.export.parity_seeds, parity_atol=p.export.parity_atol)
    out["torch_vs_ort_cpu_max_abs_diff"] = report["parity_max_abs_diff"]
    cpu = OnnxGenerator.from_onnx(work / "generator.onnx", "cpu")
    ok = finite and s["steps"] == sizes.train_steps and cpu.image_shape == (64, 64, 3)
    if not cuda or ORT_CUDA not in ort.get_available_providers():
        out["cuda_parity"] = "skipped: no CUDA" if not cuda else f"skipped: no {ORT_CUDA} in this onnxruntime"
        return {"ok": ok, **out}
    gpu = OnnxGenerator.from_onnx(work / "generator.onnx", "cuda")
    z = latents(range(64), cpu.z_dim)
    labels = np.arange(64) % cpu.num_classes if cpu.conditional else None
    out["cuda_parity"] = {"provider": gpu.provider,
                          "max_abs_diff_vs_cpu": float(np.abs(gpu.run(z, labels) - cpu.run(z, labels)).max())}
    return {"ok": ok and out["cuda_parity"]["max_abs_diff_vs_cpu"] <= PARITY_ATOL, "parity_atol": PARITY_ATOL, **out}


def check_serve(*, raw: dict, work: Path, sizes: Sizes, cuda: bool) -> dict:
    """A real `ganops serve` on the CUDA provider (the CPU in --dry-run), called over the Open Inference
    Protocol: img/s per batch size, and its pixels against the CPU session's (uint8: at most 1 apart)."""
    import json
    import socket
    import urllib.request

    from ganops.export import export_onnx
    from ganops.serving.inference import OnnxGenerator
    from ganops.networks import Generator, NetConfig, save_generator

    if cuda and ORT_CUDA not in ort.get_available_providers():
        return {"ok": True, "cuda": f"skipped: no {ORT_CUDA} in this onnxruntime ({ort.__version__})"}
    p = params.parse(raw)
    torch.manual_seed(0)
    save_generator(work / "gan", Generator(NetConfig.from_params(p.model, 10)).eval())
    export_onnx(model_dir=work / "gan", onnx_path=work / "generator.onnx", opset=p.export.opset, lineage={},
                parity_seeds=p.export.parity_seeds, parity_atol=p.export.parity_atol)
    cpu = OnnxGenerator.from_onnx(work / "generator.onnx", "cpu")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = "cuda" if cuda else "cpu"
    cmd = [sys.executable, "-m", "ganops.cli", "serve", "--model", str(work / "generator.onnx"), "--port", str(port),
           "--providers", provider, "--max-images", "256"]
    url = f"http://127.0.0.1:{port}"
    out: dict = {"provider": provider}
    with (work / "serve.log").open("w") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2)
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("ganops serve did not get ready: "
                                           + (work / "serve.log").read_text(errors="replace")[-2000:])
                    time.sleep(0.5)

            def infer(seeds: list[int]) -> np.ndarray:
                body = json.dumps({"inputs": [{"name": "seed", "shape": [len(seeds)], "datatype": "INT64",
                                               "data": seeds}]}).encode()
                request = urllib.request.Request(f"{url}/v2/models/ganops-generator/infer", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=60) as response:
                    tensor = json.loads(response.read())["outputs"][0]
                return np.asarray(tensor["data"], np.int16).reshape(tensor["shape"])

            for batch in sizes.onnx_batches:
                seeds = list(range(batch))
                served = infer(seeds)
                diff = int(np.abs(served - cpu.generate(seeds).astype(np.int16)).max())
                calls, start = 0, time.perf_counter()
                while calls < 3 or time.perf_counter() - start < sizes.onnx_seconds:
                    infer(seeds)
                    calls += 1
                out[f"batch_{batch}"] = {"img_per_s": round(calls * batch / (time.perf_counter() - start), 1),
                                         "max_abs_diff_vs_cpu_uint8": diff}
        finally:
            server.terminate()
            server.wait(timeout=60)
    return {"ok": all(v["max_abs_diff_vs_cpu_uint8"] <= 1 for k, v in out.items() if k.startswith("batch_")), **out}


def check_inception(*, prepared: Path, weights: str, sizes: Sizes, cuda: bool) -> dict:
    path = inception.inception_weights_path(weights)
    images, _ = load_split(prepared, "test")
    n_agree = min(sizes.inception_agree, len(images))
    start = time.perf_counter()
    cpu_features = inception.InceptionPool3(path, device="cpu", processes=1).features(
        images[:n_agree], batch_size=sizes.inception_batch)
    out: dict = {"weights": str(path), "cpu_img_per_s_incl_load": round(n_agree / (time.perf_counter() - start), 2)}
    if not cuda:
        return {"ok": True, **out, "cuda": "skipped: no CUDA"}

    gpu = inception.InceptionPool3(path, device="cuda")
    batch = images[: sizes.inception_batch]
    gpu.features(batch, batch_size=sizes.inception_batch)  # warm-up: cuDNN picks its kernels
    timed = images[: sizes.inception_images]
    torch.cuda.synchronize()
    start = time.perf_counter()
    gpu.features(timed, batch_size=sizes.inception_batch)
    torch.cuda.synchronize()
    img_per_s = len(timed) / (time.perf_counter() - start)
    agree = {"default": _feature_diff(gpu.features(images[:n_agree], batch_size=sizes.inception_batch),
                                      cpu_features)}
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:  # the same with every convolution in full fp32: what is left is summation order
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        agree["no_tf32"] = _feature_diff(gpu.features(images[:n_agree], batch_size=sizes.inception_batch),
                                         cpu_features)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    return {"ok": agree["default"]["max_rel_diff"] <= INCEPTION_RTOL, **out,
            "cuda": {"img_per_s": round(img_per_s, 1), "images": len(timed), "batch_size": sizes.inception_batch,
                     "agreement_images": n_agree, "rtol": INCEPTION_RTOL, **agree}}


# --- helpers -------------------------------------------------------------------------------------


def _merge(raw: dict, overrides: dict) -> dict:
    """A copy of the params mapping with some keys of some sections replaced."""
    out = copy.deepcopy(raw)
    for section, keys in overrides.items():
        out.setdefault(section, {}).update(keys)
    return out


def _short_run(steps: int, *, precision: str = "auto", device: str) -> dict:
    """train params for a run of exactly `steps` steps: no quality curve, one checkpoint at the end."""
    return {"max_steps": steps, "epochs": 1000, "curve_samples": 0, "log_every": max(1, steps // 10),
            "checkpoint_every": steps, "precision": precision, "device": device}


def _prepared(source: Path, dest: Path, images: int) -> Path:
    """`source` itself, or (a prefix of it, or random images when it is absent) written to `dest`."""
    if (source / "manifest.json").exists():
        if not images:
            return source
        manifest = load_manifest(source)
        splits = {split: load_split(source, split) for split in ("train", "test")}
        num_classes, dataset = int(manifest["num_classes"]), f"{manifest['dataset']} (first {images})"
    else:
        rng = np.random.default_rng(0)
        n = images or 60_000
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        splits = {"train": (x, np.arange(n) % 10), "test": (x, np.arange(n) % 10)}
        num_classes, dataset = 10, "random"
    n = images or len(splits["train"][1])
    write_prepared(dest, splits={k: (x[:n], y[:n].astype(np.uint8)) for k, (x, y) in splits.items()},
                   dataset=dataset, num_classes=num_classes, sources={})
    return dest


def _losses_finite(losses_csv: Path) -> tuple[bool, dict]:
    rows = list(csv.DictReader(losses_csv.open()))
    finite = bool(rows) and all(math.isfinite(float(r[k])) for r in rows for k in ("loss_d", "loss_g"))
    return finite, {k: round(float(rows[-1][k]), 4) for k in ("loss_d", "loss_g")} if rows else {}


def _torchrun(*, raw: dict, prepared: Path, work: Path, device: str, steps: int, stage_train: Path) -> dict:
    """`torchrun --standalone --nproc_per_node=2 stages/train.py ...` in `work`, with its own params.yaml."""
    work.mkdir(parents=True, exist_ok=True)
    # The stage reads params.yaml from its working directory, as under dvc repro.
    (work / "params.yaml").write_text(yaml.safe_dump(_merge(raw, {"train": _short_run(steps, device=device)})))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(stage_train),
           str(prepared.resolve()), "unused", "unused", "gan", "checkpoints", "reports"]
    log = work / "torchrun.log"
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=work, stdout=f, stderr=subprocess.STDOUT)
        try:
            returncode = proc.wait(timeout=TORCHRUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # torchrun starts each worker in a session of its own: only torchrun can stop them, on SIGTERM.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            returncode = f"timeout after {TORCHRUN_TIMEOUT_S} s"
    output = log.read_text(errors="replace")
    result = {"returncode": returncode, "wall_s": round(time.perf_counter() - start, 1),
              "output_tail": output[-4000:]}
    summary = re.search(r"at (\d+) img/s on (\S+) x(\d+) in (\w+)", output)
    if returncode == 0 and summary:
        finite, last = _losses_finite(work / "reports" / "losses.csv")
        result.update(ok=finite and summary[3] == "2", img_per_s=int(summary[1]), device=summary[2],
                      world_size=int(summary[3]), precision=summary[4], losses_finite=finite, last_losses=last)
        del result["output_tail"]
    else:
        result["ok"] = False
    return result


def _ort_img_per_s(generator, batch: int, seconds: float) -> float:
    """Images per second of generator.run on a fixed batch of latents, after 3 warm-up calls."""
    from ganops.sampling import latents

    z = latents(range(batch), generator.z_dim)
    labels = np.arange(batch) % generator.num_classes if generator.conditional else None
    for _ in range(3):
        generator.run(z, labels)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        generator.run(z, labels)
        calls += 1
    return round(calls * batch / (time.perf_counter() - start), 1)


def _feature_diff(a: np.ndarray, b: np.ndarray) -> dict:
    diff = np.abs(a.astype(np.float64) - b)
    return {"max_abs_diff": float(diff.max()), "max_rel_diff": float(diff.max() / np.abs(b).max()),
            # the first term of FID between the two feature sets (the means' squared distance)
            "mean_sq_dist": float(((a.mean(0) - b.mean(0).astype(np.float64)) ** 2).sum())}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _summary(result: dict) -> str:
    if not result["ok"]:
        return f"FAILED: {result.get('error', 'see its entry in the JSON')}"
    skipped = [k for k, v in result.items() if isinstance(v, str) and v.startswith("skipped")]
    return f"ok in {result['seconds']}s" + (f" ({', '.join(skipped)} skipped)" if skipped else "")


if __name__ == "__main__":
    sys.exit(main())
