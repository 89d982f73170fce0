"""Benchmark: do the label-free (rotation) features rank image sets like the class features do?

An unlabelled folder's domain metrics use a classifier trained to predict rotations instead of
classes (ganops.metrics.classifier). This trains both on Fashion-MNIST's 60k train images (the
class task with its labels, the rotation task with the same images unlabelled), then scores sets
of 10,000 images whose defects are known (the real train images: the floor; blurred; noisy; half
or nine tenths of the classes missing; a hundred images repeated) against the test set in both
feature spaces, and prints fid in each, the rotation head's upright_rate, the ranks, the time
each classifier took, and Spearman's rank correlation between the two fid columns.

    .venv/bin/python bench/label_free_features.py            # ~5 minutes on 2 cores
    .venv/bin/python bench/label_free_features.py --train 20000

Needs Fashion-MNIST (Debian's dataset-fashion-mnist, or the download stage's other mirrors).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

from ganops import params
from ganops.data.datasets import fetch
from ganops.data.prepare import prepare
from ganops.data.prepared import load_split, write_prepared
from ganops.metrics import distances
from ganops.metrics.classifier import extract, load_classifier, train_classifier
from ganops.metrics.reference import build_reference, load_reference

SAMPLES = 10_000


def defective_sets(train_x: np.ndarray, train_y: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Sets of SAMPLES images, each with one known defect (the first is the real floor)."""
    pick = rng.permutation(len(train_x))[:SAMPLES]
    real = train_x[pick]
    blur = lambda sigma: np.stack([ndimage.gaussian_filter(im.astype(np.float32), sigma) for im in real])
    noise = lambda sigma: real + rng.normal(0, sigma, real.shape)
    few = lambda classes: train_x[rng.choice(np.flatnonzero(train_y < classes), SAMPLES)]
    return {
        "real train images (floor)": real,
        "blur sigma 1 px": blur(1.0),
        "blur sigma 2 px": blur(2.0),
        "noise sigma 16": noise(16),
        "noise sigma 48": noise(48),
        "5 of 10 classes": few(5),
        "1 of 10 classes": few(1),
        "100 images repeated": np.repeat(real[:100], SAMPLES // 100, axis=0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=0, help="train images kept (stratified); 0: all 60,000")
    args = ap.parse_args()
    cp = params.load("params.yaml").classifier
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fetch(params=params.DataParams(dataset="fashion-mnist"), out_dir=tmp / "raw")
        prepare(raw_dir=tmp / "raw", out_dir=tmp / "labelled",
                params=params.PrepareParams(subset=args.train))
        splits = {s: load_split(tmp / "labelled", s) for s in ("train", "test")}
        write_prepared(tmp / "unlabelled", splits={s: (x, np.zeros_like(y)) for s, (x, y) in splits.items()},
                       dataset="fashion-mnist, labels removed", num_classes=1, sources={},
                       extra={"labelled": False, "classes": None, "resolution": 28, "channels": 1})
        spaces = {}
        for name in ("labelled", "unlabelled"):
            start = time.perf_counter()
            report = train_classifier(prepared_dir=tmp / name, model_dir=tmp / f"{name}-cls",
                                      report_path=tmp / f"{name}.json", seed=cp.seed, epochs=cp.epochs,
                                      batch_size=cp.batch_size, lr=cp.lr, width=cp.width, feature_dim=cp.feature_dim)
            seconds = time.perf_counter() - start
            build_reference(prepared_dir=tmp / name, classifier_dir=tmp / f"{name}-cls", out_dir=tmp / f"{name}-ref")
            model, meta = load_classifier(tmp / f"{name}-cls")
            ref = load_reference(tmp / f"{name}-ref", feature_extractor_version=meta["feature_extractor_version"])
            spaces[report["task"]] = (model, ref)
            accuracy = report.get("test_accuracy", report.get("rotation_accuracy"))
            print(f"classifier ({report['task']}): {seconds:.0f} s for {report['train_steps']} steps, "
                  f"test accuracy of its task {accuracy:.4f}")

        sets = defective_sets(*splits["train"], np.random.default_rng(0))
        rows = []
        for name, images in sets.items():
            images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
            row = {"set": name}
            for task, (model, ref) in spaces.items():
                feats, predicted = extract(model, images)
                mu, sigma = distances.gaussian_stats(feats)
                row[task] = distances.frechet_distance(mu, sigma, ref.test_mu, ref.test_sigma)
                if task == "rotation":
                    row["upright_rate"] = float((predicted == 0).mean())
            rows.append(row)

    print(f"\nfid against the 10,000 test images, {SAMPLES:,} images per set")
    print(f"{'set':28} {'fid (classes)':>14} {'fid (rotation)':>15} {'upright_rate':>13}")
    for r in rows:
        print(f"{r['set']:28} {r['classes']:14.2f} {r['rotation']:15.2f} {r['upright_rate']:13.3f}")
    rho = stats.spearmanr([r["classes"] for r in rows], [r["rotation"] for r in rows]).statistic
    print(f"\nSpearman rank correlation of the two fid columns: {rho:.3f} ({len(rows)} sets)")


if __name__ == "__main__":
    main()
