"""Benchmark: peak memory (RSS) of training on a prepared set larger than that RSS (memory-mapped split).

Writes a prepared set of random 64x64 RGB images (uint8, written row block by row block, never held
whole in memory), trains a few steps on it with ganops.training.loop.train in a child process, and
prints the set's size against the child's peak RSS (ru_maxrss). A second child loads the same split
whole into memory first, as training did before the split was memory-mapped: the baseline.

    .venv/bin/python bench/train_memory.py                    # 400,000 images = 4.9 GB, ~3 minutes
    .venv/bin/python bench/train_memory.py --images 50000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import json, resource, sys
import numpy as np
from ganops import params
from ganops.training.loop import train
prepared, out, whole = sys.argv[1], sys.argv[2], sys.argv[3] == "whole"
held = np.load(f"{prepared}/train_images.npy") if whole else None  # the old way: the set in memory
p = params.parse({"model": {"width": 16, "z_dim": 32}, "train": {
    "batch_size": 64, "max_steps": 30, "checkpoint_every": 1000, "log_every": 10, "curve_samples": 0,
    "device": "cpu", "precision": "fp32"}})
s = train(params=p, prepared_dir=prepared, classifier_dir="none", reference_dir="none",
          model_dir=f"{out}/gan", checkpoint_dir=f"{out}/ckpt", report_dir=f"{out}/reports")
print(json.dumps({"steps": s["steps"], "img_per_s": s["img_per_s"],
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_prepared_set(directory: Path, n: int, side: int = 64, block: int = 10000) -> int:
    """train/test images and labels as .npy, written block by block; returns the train images' bytes."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", 1000)):
        images = np.lib.format.open_memmap(directory / f"{split}_images.npy", mode="w+", dtype=np.uint8,
                                           shape=(count, side, side, 3))
        for start in range(0, count, block):
            stop = min(start + block, count)
            images[start:stop] = rng.integers(0, 256, (stop - start, side, side, 3), dtype=np.uint8)
        images.flush()
        del images
        np.save(directory / f"{split}_labels.npy", (np.arange(count) % 10).astype(np.uint8))
    manifest = {"dataset": "random", "num_classes": 10, "resolution": side, "channels": 3, "labelled": True,
                "sources": {}, "train": {"count": n}, "test": {"count": 1000}}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return (directory / "train_images.npy").stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400000)
    ap.add_argument("--write-only", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_only:
        write_prepared_set(args.write_only, args.images)
        return
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared"
        # Written by another process: a child forked from a process that touched the whole set would
        # start with its memory counted in ru_maxrss (measured: 4.8 GB for a 4.7 GB set).
        subprocess.run([sys.executable, __file__, "--images", str(args.images), "--write-only", str(prepared)],
                       check=True)
        size = (prepared / "train_images.npy").stat().st_size
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "OMP_NUM_THREADS": "2"}
        print("| how the split is read | set on disk MB | peak RSS MB | set / RSS | img/s |\n| --- | ---: | ---: | ---: | ---: |")
        for how in ("mmap", "whole"):
            out = subprocess.run([sys.executable, "-c", CHILD, str(prepared), f"{tmp}/{how}", how],
                                 capture_output=True, text=True, env=env, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rss = result["max_rss_mb"]
            label = "memory-mapped (train today)" if how == "mmap" else "loaded whole first (the baseline)"
            print(f"| {label} | {size / 2**20:,.0f} | {rss:,.0f} | {size / 2**20 / rss:.1f}x | {result['img_per_s']:.0f} |")


if __name__ == "__main__":
    main()
