"""Train the study's finalists on a GPU and score them (Inception FID included): results.csv + results.json.

    python study/gpu_finalists.py --out OUT                         # study/configs.yaml's group `final`
    python study/gpu_finalists.py --out OUT --only final-deep-s0        # some of them
    python study/gpu_finalists.py --out OUT --dry-run --group screen --only s05-resize   # CPU, ~1 min

Each configuration is params.yaml plus its `section.key=value` overrides (what `dvc exp run -S` takes;
the values are YAML), trained with ganops.training.loop.train and scored with ganops.metrics.evaluate.evaluate
with evaluate.inception on, against the test set's Inception statistics built once
(ganops.metrics.inception_reference, as the inception_reference stage makes them). Inputs are the
pipeline's data/prepared and models/classifier; where absent they are made in the work directory as
the download (trying each --mirror first), prepare and classifier stages would. Everything but the
results goes to --work (default: a new temp dir), MLflow store included.

OUT gets, after every configuration: results.csv (study/results.csv's columns, so its rows can be
appended there; wall_s is this machine's), results.json (overrides, device, precision, img/s, timings,
every metric, errors) and generators-<i>.tar (each run's generator, losses, quality curve, metrics,
samples; at most 15 MiB a file). --no-inception skips fid_inception (e.g. where the Inception
weights are not at hand): evaluate the generators brought back with evaluate.inception on later.
A name already in OUT/results.csv is skipped: a rerun continues where the last one stopped.
--dry-run: the first 2,000 train / 500 test images, at most 20 steps, 200 evaluation samples, no
Inception. Exit 2 when the group does not exist, 1 when any configuration failed.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from ganops import params
from ganops.metrics.inception import inception_weights_path
from ganops.metrics.classifier import train_classifier
from ganops.data.datasets import fetch
from ganops.metrics.evaluate import evaluate
from ganops.metrics.reference import build_reference
from ganops.fileio import sha256_file, write_json
from ganops.data.prepare import prepare
from ganops.metrics.inception_reference import INCEPTION_REFERENCE_JSON, build_inception_reference
from ganops.data.prepared import load_manifest, load_split, write_prepared
from ganops.training.loop import train
from run import METRICS, append, done_names  # study/run.py, beside this file: study/results.csv's columns

CONFIGS = Path(__file__).parent / "configs.yaml"
RUN_FILES = ("gan/generator.pt", "gan/generator.json", "train/losses.csv", "train/quality.csv",
             "evaluate/metrics.json", "evaluate/samples.png")
TAR_BYTES = 15 * 2**20  # the device tool brings back files of up to 16 MiB
DRY_TRAIN, DRY_TEST = 2000, 500  # images kept by --dry-run
# --dry-run: one short epoch, a small evaluation (KID subsets must fit in its 200 samples), no Inception.
DRY_OVERRIDES = ["train.epochs=1", "train.max_steps=20", "train.curve_samples=200", "evaluate.num_samples=200",
                 "evaluate.kid_subsets=10", "evaluate.kid_subset_size=100", "evaluate.inception=false"]


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """A copy of params.yaml's mapping with `section.key=value` overrides, each value read as YAML:

        apply_overrides(raw, ["train.lr_d=4.0e-4", "train.augment=[translation]"])
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        name, eq, value = item.partition("=")
        section, dot, key = name.partition(".")
        if not (eq and dot and section and key):
            raise params.ParamsError(f"override {item!r} is not section.key=value")
        if not isinstance(out.setdefault(section, {}), dict):
            raise params.ParamsError(f"override {item!r}: section '{section}' of params.yaml is not a mapping")
        out[section][key] = yaml.safe_load(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for results.csv, results.json, generators-<i>.tar")
    parser.add_argument("--group", default="final", help="a top-level key of study/configs.yaml")
    parser.add_argument("--only", nargs="*", default=None, help="run only these configuration names")
    parser.add_argument("--dry-run", action="store_true", help="tiny data, few steps, no Inception")
    parser.add_argument("--work", type=Path, default=None, help="models, checkpoints, MLflow store (default: a temp dir)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--classifier", type=Path, default=Path("models/classifier"))
    parser.add_argument("--mirror", action="append", default=[],
                        help="a directory or URL holding the dataset's IDX .gz files, tried first (repeatable)")
    parser.add_argument("--inception-weights", default="",
                        help="TorchScript Inception; default evaluate.inception_weights, else the package's")
    parser.add_argument("--no-inception", action="store_true",
                        help="domain metrics only (fid_inception later, from the generators brought back)")
    args = parser.parse_args()
    inception = not (args.dry_run or args.no_inception)

    groups = yaml.safe_load(CONFIGS.read_text()) or {}
    if args.group not in groups:
        print(f"gpu_finalists: {CONFIGS} has no group '{args.group}' (it has: {', '.join(groups) or 'none'}); "
              f"add the finalists there as `{args.group}: {{name: [section.key=value, ...]}}`", file=sys.stderr)
        return 2
    configs = {name: list(overrides or []) for name, overrides in groups[args.group].items()
               if not args.only or name in args.only}
    unknown = sorted(set(args.only or []) - set(groups[args.group]))
    if unknown:
        print(f"gpu_finalists: no configuration {', '.join(unknown)} in group '{args.group}'", file=sys.stderr)
        return 2
    raw = yaml.safe_load(args.params.read_text())
    base = params.parse(raw)
    # Checked before any training: the parameters of every configuration, and the Inception weights.
    for name, overrides in configs.items():
        params.parse(apply_overrides(raw, overrides))
    weights = "" if not inception else str(inception_weights_path(
        args.inception_weights or base.evaluate.inception_weights))

    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_finalists-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work.resolve() / 'mlflow.db'}"
    print(f"gpu_finalists: {len(configs)} configuration(s) of '{args.group}', work dir {work}", file=sys.stderr)
    prepared, classifier, inputs = _inputs(args, base, work)
    reference = work / "reference"
    if not (reference / "reference.json").exists():
        build_reference(prepared_dir=prepared, classifier_dir=classifier, out_dir=reference)
    inputs["reference"] = json.loads((reference / "reference.json").read_text())
    inception_reference = work / "inception_reference"
    inception_json = inception_reference / INCEPTION_REFERENCE_JSON
    # Built again when missing, or when Inception is on and it lacks statistics of these weights.
    if not inception_json.exists() or (
            inception and json.loads(inception_json.read_text())["inception_weights_sha256"] != sha256_file(weights)):
        build_inception_reference(prepared_dir=prepared, out_dir=inception_reference, inception=inception,
                                  inception_weights=weights)
    inputs["inception_reference"] = json.loads(inception_json.read_text())

    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"group": args.group, "dry_run": args.dry_run, "inception": inception, "inputs": inputs, "runs": {}}
    if (args.out / "results.json").exists():
        summary["runs"] = json.loads((args.out / "results.json").read_text())["runs"]
    done = done_names(args.out / "results.csv")
    failed = []
    for name, overrides in configs.items():
        if name in done:
            print(f"gpu_finalists: {name}: already in {args.out / 'results.csv'}; skipped", file=sys.stderr)
            continue
        p = params.parse(apply_overrides(raw, [*overrides, *(DRY_OVERRIDES if args.dry_run else [])]))
        p = replace(p, evaluate=replace(p.evaluate, inception=inception, inception_weights=weights))
        record = {"overrides": overrides, "dry_run_overrides": DRY_OVERRIDES if args.dry_run else []}
        print(f"gpu_finalists: {name}: {' '.join(overrides)}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            record.update(_run_one(p, run_dir=work / name, prepared=prepared, classifier=classifier,
                                   reference=reference, inception_reference=inception_reference))
        except Exception as e:  # the next configuration still runs
            record.update(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=-4))
            failed.append(name)
        record["wall_s"] = round(time.perf_counter() - start, 1)
        summary["runs"][name] = record
        write_json(args.out / "results.json", summary)
        if "metrics" in record:
            command = shlex.join(["python", "study/gpu_finalists.py", "--out", "OUT", "--group", args.group,
                                  "--only", name])
            append(results=args.out / "results.csv", row={
                "name": name, "group": args.group, "command": command, "wall_s": f"{record['wall_s']:.0f}",
                **{k: (f"{record['metrics'][k]:.4f}" if isinstance(record["metrics"].get(k), float) else "")
                   for k in METRICS}})
            _write_tars(args.out, work, [n for n in summary["runs"] if (work / n / "gan").exists()])
            m = record["metrics"]
            inception = f", fid_inception {m['fid_inception']:.2f}" if "fid_inception" in m else ""
            print(f"gpu_finalists: {name}: fid {m['fid']:.2f}{inception}, {record['train']['img_per_s']:.0f} img/s "
                  f"on {record['train']['device']} in {record['train']['precision']}, {record['wall_s']:.0f}s",
                  file=sys.stderr, flush=True)
        else:
            print(f"gpu_finalists: {name} FAILED: {record['error']}", file=sys.stderr, flush=True)
    print(f"gpu_finalists: wrote {args.out}" + (f"; FAILED: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def _run_one(p: params.Params, *, run_dir: Path, prepared: Path, classifier: Path, reference: Path,
             inception_reference: Path) -> dict:
    start = time.perf_counter()
    s = train(params=p, prepared_dir=prepared, classifier_dir=classifier, reference_dir=reference,
              model_dir=run_dir / "gan", checkpoint_dir=run_dir / "checkpoints", report_dir=run_dir / "train")
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    results = evaluate(model_dir=run_dir / "gan", classifier_dir=classifier, reference_dir=reference,
                       inception_reference_dir=inception_reference, run_id_path=run_dir / "train" / "mlflow_run.json",
                       out_dir=run_dir / "evaluate", params=p.evaluate)
    return {
        "train": {k: s[k] for k in ("steps", "epochs", "resumed_at", "img_per_s", "device", "world_size",
                                    "precision", "fid_curve", "run_id")},
        "train_s": round(train_s, 1), "evaluate_s": round(time.perf_counter() - start, 1),
        "metrics": results,
    }


def _inputs(args, base: params.Params, work: Path) -> tuple[Path, Path, dict]:
    """data/prepared and models/classifier, made in `work` where absent; --dry-run keeps a prefix."""
    prepared = args.prepared
    if not (prepared / "manifest.json").exists():
        raw_dir, prepared = work / "raw", work / "prepared"
        if not (prepared / "manifest.json").exists():
            data = replace(base.data, mirrors=(*args.mirror, *base.data.mirrors))
            fetch(params=data, out_dir=raw_dir)
            prepare(raw_dir=raw_dir, out_dir=prepared, params=base.prepare)
    if args.dry_run:
        prepared = _prefix(prepared, work / "prepared-dry", {"train": DRY_TRAIN, "test": DRY_TEST})
    classifier = args.classifier
    if not (classifier / "classifier.pt").exists():
        classifier, c = work / "classifier", base.classifier
        if not (classifier / "classifier.pt").exists():
            train_classifier(prepared_dir=prepared, model_dir=classifier, report_path=work / "classifier.json",
                             seed=c.seed, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, width=c.width,
                             feature_dim=c.feature_dim)
    manifest = load_manifest(prepared)
    return prepared, classifier, {
        "prepared": str(prepared), "dataset": manifest["dataset"], "train_count": manifest["train"]["count"],
        "classifier": str(classifier), "classifier_meta": json.loads((classifier / "classifier.json").read_text()),
    }


def _prefix(source: Path, dest: Path, counts: dict[str, int]) -> Path:
    """The first `counts[split]` images of each split of `source`, as a prepared dir at `dest`."""
    manifest = load_manifest(source)
    splits = {}
    for split, n in counts.items():
        x, y = load_split(source, split)
        splits[split] = (x[:n], y[:n].astype(np.uint8))
    write_prepared(dest, splits=splits, dataset=f"{manifest['dataset']} (prefix)",
                   num_classes=int(manifest["num_classes"]), sources={})
    return dest


def _write_tars(out: Path, work: Path, names: list[str]) -> None:
    """Each run's generator and its small reports (enough to re-evaluate or export it elsewhere), in
    out/generators-<i>.tar of at most TAR_BYTES each (a run larger than that gets a tar of its own)."""
    parts: list[list[Path]] = [[]]
    size = 0
    for name in names:
        files = [work / name / rel for rel in RUN_FILES if (work / name / rel).exists()]
        run_bytes = sum(f.stat().st_size for f in files)
        if parts[-1] and size + run_bytes > TAR_BYTES:
            parts.append([])
            size = 0
        parts[-1].extend(files)
        size += run_bytes
    for old in out.glob("generators-*.tar"):
        old.unlink()
    for i, files in enumerate(parts, 1):
        tmp = out / f".generators-{i}.tar.tmp"
        with tarfile.open(tmp, "w") as tar:
            for f in files:
                tar.add(f, arcname=str(f.relative_to(work)))
        tmp.replace(out / f"generators-{i}.tar")


if __name__ == "__main__":
    sys.exit(main())
