"""Run the quality study's configurations with `dvc exp run --temp`, one row per finished run.

    python study/run.py screen          # every configuration of study/configs.yaml's `screen`
    python study/run.py final --only cond20-s0

Each finished experiment appends a row to study/results.csv (its name, the exact command, wall
time, and the evaluate metrics), so an interrupted study continues where it stopped: a name that
already has a row is skipped. study/table.py turns the file into the README table.
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).parent
RESULTS = HERE / "results.csv"
METRICS = ("fid", "precision", "recall", "density", "coverage", "class_coverage", "class_accuracy",
           "fid_inception", "fid_real")
COLUMNS = ("name", "group", "command", "wall_s", *METRICS)


def done_names() -> set[str]:
    if not RESULTS.exists():
        return set()
    with RESULTS.open() as f:
        return {row["name"] for row in csv.DictReader(f)}


def append(row: dict) -> None:
    new = not RESULTS.exists()
    with RESULTS.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in COLUMNS})


def exp_results(name: str) -> dict:
    """The evaluate metrics that experiment `name` committed (read from its git ref: `dvc exp show`
    also lists running and failed entries that carry the baseline's numbers)."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], capture_output=True,
                          text=True, check=True).stdout.split()
    matches = [ref for ref in refs if ref.rsplit("/", 1)[-1] == name]
    if len(matches) != 1:
        raise RuntimeError(f"experiment {name}: expected one git ref, found {matches}")
    out = subprocess.run(["git", "show", f"{matches[0]}:reports/evaluate/metrics.json"], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("group", help="a top-level key of study/configs.yaml (screen, final, ...)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these configuration names")
    args = parser.parse_args()
    configs = yaml.safe_load((HERE / "configs.yaml").read_text())[args.group]
    done = done_names()
    for name, overrides in configs.items():
        if (args.only and name not in args.only) or name in done:
            continue
        cmd = ["dvc", "exp", "run", "--temp", "-n", name, *[a for o in overrides for a in ("-S", o)]]
        print(f"study: {name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = subprocess.run(cmd)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            print(f"study: {name} failed (exit {result.returncode}); continuing", file=sys.stderr)
            continue
        metrics = exp_results(name)
        append({"name": name, "group": args.group, "command": shlex.join(cmd), "wall_s": f"{wall:.0f}",
                **{k: (f"{metrics[k]:.4f}" if isinstance(metrics.get(k), float) else "") for k in METRICS}})
        print(f"study: {name}: fid {metrics['fid']:.2f} in {wall:.0f}s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
