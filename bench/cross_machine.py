"""Benchmark: how far the pipeline's metrics move between machines, emulated on this one.

    .venv/bin/python bench/cross_machine.py [--until classifier|evaluate] [--set train.epochs=1 ...]
                                            [--variants here,threads1,avx2] [--worktree] [--json out.json]

Each variant is a fresh `git clone` of this repository's HEAD (with --worktree: a copy of the
working tree's tracked and untracked, non-ignored files), reproduced with `dvc repro UNTIL` under
one thing that differs between CPUs:

- here:     this machine as it is (torch's default threads, its widest vector ISA, bf16 if native);
- threads1: one thread (OMP_NUM_THREADS=1): other reduction orders, as on a machine with other cores;
- avx2:     PyTorch, oneDNN and MKL kernels capped at AVX2, as on a CPU without AVX-512, and so
            `train.precision: fp32`, what `auto` picks on a CPU without native bf16.

It prints each variant's metrics (reports/classifier.json, reports/evaluate/metrics.json) and their
spread (max - min). On one machine the same code and data give the same bytes
(tests/test_reproducible.py); the spread here is what to expect of the same commit elsewhere.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# variant -> (environment, params overrides)
VARIANTS: dict[str, tuple[dict[str, str], dict[str, object]]] = {
    "here": ({}, {}),
    "threads1": ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, {}),
    "avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
             {"train.precision": "fp32"}),
}
METRIC_FILES = {"classifier": ["reports/classifier.json"],
                "evaluate": ["reports/classifier.json", "reports/evaluate/metrics.json"]}
# What the caller's environment must not pass on: it would point the clone at another repo or store.
DROPPED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "DVC_ROOT", "DVC_EXP_NAME",
               "DVC_EXP_BASELINE_REV", "DVC_STAGE", "GIT_DIR", "GIT_WORK_TREE", "PYTHONPATH",
               "OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
               "MKL_ENABLE_INSTRUCTIONS")


def parse_set(items: list[str]) -> dict[str, object]:
    """["train.epochs=1"] -> {"train.epochs": 1} (values read as YAML, like `dvc exp run -S`)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set {item!r}: want section.key=value, e.g. train.epochs=1")
        out[key] = yaml.safe_load(value)
    return out


def snapshot(dest: Path, *, worktree: bool) -> None:
    """A new repository at `dest`: a clone of HEAD, or a one-commit copy of the working tree."""
    if not worktree:
        subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True)
        return
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (REPO / rel).is_file():  # a deleted, not yet committed file is listed too
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    who = ["-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    for args in (["init", "-q"], ["add", "-A"], [*who, "commit", "-q", "-m", "working tree"]):
        subprocess.run(["git", *args], cwd=dest, check=True)


def run_variant(name: str, *, until: str, overrides: dict[str, object], work: Path,
                worktree: bool) -> dict[str, float]:
    """Copy the repo into `work/name`, apply the variant, `dvc repro UNTIL`; return its metrics."""
    env_extra, variant_overrides = VARIANTS[name]
    clone = work / name
    snapshot(clone, worktree=worktree)
    params_path = clone / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    for key, value in {**overrides, **variant_overrides}.items():
        section, _, field = key.partition(".")
        if field not in params.get(section, {}):
            raise SystemExit(f"{key}: no such key in params.yaml")
        params[section][field] = value
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env.update(env_extra)
    # The clone's own code (not the checkout the venv's editable install points at), the venv's tools.
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", PYTHONPATH=str(clone / "src"),
               DVC_NO_ANALYTICS="true", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    log = work / f"{name}.log"
    start = time.perf_counter()
    with open(log, "wb") as out:
        done = subprocess.run([str(BIN / "dvc"), "repro", until], cwd=clone, env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"variant {name}: dvc repro {until} exited {done.returncode}; its log ({log}):\n"
                 f"{log.read_text(errors='replace')[-3000:]}")
    metrics: dict[str, float] = {"seconds": time.perf_counter() - start}
    for rel in METRIC_FILES[until]:
        prefix = "classifier." if "classifier" in rel else ""
        for key, value in json.loads((clone / rel).read_text()).items():
            if isinstance(value, (int, float)):
                metrics[prefix + key] = float(value)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--until", choices=sorted(METRIC_FILES), default="evaluate",
                        help="last stage to reproduce (classifier: accuracy only, minutes faster)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="params override for every variant, e.g. train.epochs=1")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--worktree", action="store_true",
                        help="reproduce the working tree (uncommitted changes too), not HEAD")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", type=Path, help="keep the clones and logs in this directory")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or len(names) < 2:
        raise SystemExit(f"--variants {args.variants!r}: want two or more of {', '.join(VARIANTS)}")
    overrides = parse_set(args.set)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()
    source = f"working tree of {head}" if args.worktree else f"commit {head}"
    print(f"{source}, dvc repro {args.until}, overrides {overrides or 'none'}", flush=True)

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ganops-cross-machine-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in names:
            results[name] = run_variant(name, until=args.until, overrides=overrides, work=work,
                                        worktree=args.worktree)
            print(f"  {name}: done in {results[name]['seconds']:.0f}s", flush=True)

    keys = [k for k in results[names[0]] if k != "seconds"]
    print(f"\n{'metric':<30}" + "".join(f"{n:>12}" for n in names) + f"{'spread':>12}{'spread %':>10}")
    spread = {}
    for key in keys:
        values = [results[n][key] for n in names]
        spread[key] = max(values) - min(values)
        scale = max(abs(v) for v in values)
        percent = f"{100 * spread[key] / scale:9.2f}%" if scale else f"{'-':>10}"
        print(f"{key:<30}" + "".join(f"{v:12.4f}" for v in values) + f"{spread[key]:12.4f}{percent}")
    if args.json:
        args.json.write_text(json.dumps({"source": source, "until": args.until, "overrides": overrides,
                                         "results": results, "spread": spread}, indent=2) + "\n")


if __name__ == "__main__":
    main()
