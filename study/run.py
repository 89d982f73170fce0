"""Run the quality study's configurations with `dvc exp run --temp`, one row per finished run.

    python study/run.py screen              # every configuration of study/configs.yaml's `screen`
    python study/run.py final --jobs 2      # through `dvc exp run --queue`, two at a time
    python study/run.py final --only final-deep-s0
    python study/run.py final --workspace   # in order in the workspace: 20 epochs resume the 5-epoch run

Each finished experiment appends a row to study/results.csv (its name, the exact command, wall
time, and the evaluate metrics), so an interrupted study continues where it stopped: a name that
already has a row is skipped. study/table.py turns the file into the README table.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
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


def done_names(results: Path = RESULTS) -> set[str]:
    if not results.exists():
        return set()
    with results.open() as f:
        return {row["name"] for row in csv.DictReader(f)}


def append(row: dict, results: Path = RESULTS) -> None:
    new = not results.exists()
    with results.open("a", newline="") as f:
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


def _overrides(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("-S", o)]


def _row(name: str, group: str, cmd: list[str], wall: float) -> dict:
    metrics = exp_results(name)
    return {"name": name, "group": group, "command": shlex.join(cmd), "wall_s": f"{wall:.0f}",
            **{k: (f"{metrics[k]:.4f}" if isinstance(metrics.get(k), float) else "") for k in METRICS}}


def run_one_by_one(todo: dict, group: str, *, workspace: bool = False) -> None:
    """`dvc exp run --temp` per configuration: the whole machine for each, in turn. workspace=True:
    in the workspace instead, one after another on top of each other's results, so a run with more
    train.epochs resumes the checkpoint the previous one left in models/checkpoints."""
    for name, overrides in todo.items():
        cmd = ["dvc", "exp", "run", *([] if workspace else ["--temp"]), "-n", name, *_overrides(overrides)]
        print(f"study: {name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        if subprocess.run(cmd).returncode != 0:
            print(f"study: {name} failed; continuing", file=sys.stderr)
            continue
        row = _row(name, group, cmd, time.perf_counter() - start)
        append(row)
        print(f"study: {name}: fid {row['fid']} in {row['wall_s']}s", file=sys.stderr, flush=True)


def run_queued(todo: dict, group: str, jobs: int, *, start: bool = True, queue: bool = True) -> None:
    """Queue every configuration, run the queue `jobs` at a time with one thread each share of the
    cores, and record each experiment as it lands. wall_s is then the train stage's own time.
    start=False: queue behind workers that are already running; queue=False: only wait for and
    record experiments queued earlier (after this script was interrupted)."""
    for name, overrides in todo.items() if queue else ():
        cmd = ["dvc", "exp", "run", "--queue", "-n", name, *_overrides(overrides)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        print(f"study: queued {name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}
    if start:
        subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], check=True, env=env)
    pending = dict(todo)
    while pending:
        time.sleep(30)
        status = subprocess.run(["dvc", "queue", "status"], capture_output=True, text=True).stdout
        for name in list(pending):
            line = next((ln for ln in status.splitlines() if re.search(rf"\b{re.escape(name)}\b", ln)), "")
            if "Success" in line:
                logs = subprocess.run(["dvc", "queue", "logs", name], capture_output=True, text=True).stdout
                took = re.findall(r"train: wrote .* in ([0-9.]+)s", logs)
                cmd = ["dvc", "exp", "run", "--queue", "-n", name, *_overrides(pending.pop(name))]
                row = _row(name, group, cmd, float(took[-1]) if took else 0.0)
                append(row)
                print(f"study: {name}: fid {row['fid']}, train {row['wall_s']}s", file=sys.stderr, flush=True)
            elif "Failed" in line:
                pending.pop(name)
                print(f"study: {name} failed: see `dvc queue logs {name}`", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("group", help="a top-level key of study/configs.yaml (screen, final, ...)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these configuration names")
    parser.add_argument("--jobs", type=int, default=1, help="experiments at a time (> 1: through the queue)")
    parser.add_argument("--no-start", action="store_true", help="with --jobs: the queue's workers already run")
    parser.add_argument("--collect", action="store_true", help="with --jobs: only record experiments queued before")
    parser.add_argument("--workspace", action="store_true",
                        help="run in the workspace, in order: more train.epochs resumes the last checkpoint")
    args = parser.parse_args()
    groups = yaml.safe_load((HERE / "configs.yaml").read_text())
    if args.group not in groups:
        parser.error(f"no group {args.group!r} in study/configs.yaml; it has: {', '.join(groups)}")
    configs = groups[args.group]
    unknown = sorted(set(args.only or ()) - set(configs))
    if unknown:  # a typo would otherwise run nothing and say nothing
        parser.error(f"not in group {args.group!r} of study/configs.yaml: {', '.join(unknown)}; "
                     f"it has: {', '.join(configs)}")
    done = done_names()
    todo = {name: o for name, o in configs.items() if name not in done and (not args.only or name in args.only)}
    if args.jobs > 1:
        run_queued(todo, args.group, args.jobs, start=not (args.no_start or args.collect),
                   queue=not args.collect)
    else:
        run_one_by_one(todo, args.group, workspace=args.workspace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
