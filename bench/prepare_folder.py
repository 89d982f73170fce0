"""Benchmark: the download + prepare stages on a folder of PNGs against a plain one-process Pillow loop.

Writes Fashion-MNIST's images (Debian's dataset-fashion-mnist, else synthetic 28x28 images) as PNGs
in class folders, then times, in one run on the same files:
  plain    for each file: Image.open, convert("L"), np.asarray (what a hand-written converter does)
  ganops   download (scan: every file read and hashed) + prepare (read, SHA-256 check, decode, split)
then prepares the same folder once more in a child process at 64x64 RGB (arrays 15x the size of
the 28x28 ones) and prints its peak RSS beside the arrays' size: prepare writes memory-mapped
arrays row by row, so the peak stays below the set it writes.

    .venv/bin/python bench/prepare_folder.py                 # 60,000 images, ~3 minutes on 2 cores
    .venv/bin/python bench/prepare_folder.py --images 5000
"""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ganops.data.datasets import fetch
from ganops.data.prepare import prepare
from ganops.params import DataParams, PrepareParams

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
FASHION_LABELS = Path("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz")


def source_images(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    if FASHION.exists():
        images = np.frombuffer(gzip.decompress(FASHION.read_bytes()), np.uint8, offset=16).reshape(-1, 28, 28)
        labels = np.frombuffer(gzip.decompress(FASHION_LABELS.read_bytes()), np.uint8, offset=8)
        if n > len(images):
            raise SystemExit(f"--images {n}: Fashion-MNIST's train split has {len(images)}")
        return images[:n], labels[:n], "Fashion-MNIST"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10, "synthetic"


PEAK_RSS = """
import json, resource, sys, threading, time
from pathlib import Path
from ganops.data.prepare import prepare
from ganops.params import PrepareParams

def rss_anon_mb() -> float:  # memory of its own (heap, arrays), not the file pages it has mapped
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

peak, done = [0.0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss_anon_mb())
        time.sleep(0.02)

if __name__ == "__main__":
    tmp = Path(sys.argv[1])
    sampler = threading.Thread(target=sample)
    sampler.start()
    prepare(raw_dir=tmp / "raw", out_dir=tmp / "big", params=PrepareParams(resolution=64, channels=3))
    done.set()
    sampler.join()
    mb = lambda who: resource.getrusage(who).ru_maxrss / 1024
    print(json.dumps({"array_mb": sum(f.stat().st_size for f in (tmp / "big").glob("*_images.npy")) / 2**20,
                      "rss_mb": mb(resource.RUSAGE_SELF), "anon_mb": peak[0],
                      "children_rss_mb": mb(resource.RUSAGE_CHILDREN)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=60000)
    args = ap.parse_args()
    images, labels, what = source_images(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        files = []
        for i, (image, label) in enumerate(zip(images, labels)):
            path = root / f"class{label}" / f"{i:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(path)
            files.append(path)
        print(f"{len(files)} {what} PNGs in {root}")

        start = time.perf_counter()
        plain = np.stack([np.asarray(Image.open(path).convert("L")) for path in sorted(files)])
        t_plain = time.perf_counter() - start

        start = time.perf_counter()
        fetch(params=DataParams(dataset="folder", folder=str(root)), out_dir=Path(tmp) / "raw")
        t_download = time.perf_counter() - start
        start = time.perf_counter()
        manifest = prepare(raw_dir=Path(tmp) / "raw", out_dir=Path(tmp) / "prepared", params=PrepareParams())
        t_prepare = time.perf_counter() - start
        script = Path(tmp) / "peak_rss.py"  # a file, not -c: the decoding processes are spawned from it
        script.write_text(PEAK_RSS)
        big = json.loads(subprocess.run([sys.executable, str(script), tmp], check=True, capture_output=True,
                                        text=True).stdout)
    n = len(plain)
    assert manifest["train"]["count"] + manifest["test"]["count"] == n
    print("| what | seconds | img/s |\n| --- | ---: | ---: |")
    print(f"| plain one-process Pillow loop (open, convert, asarray) | {t_plain:.1f} | {n / t_plain:,.0f} |")
    print(f"| ganops download (scan + SHA-256) | {t_download:.1f} | {n / t_download:,.0f} |")
    print(f"| ganops prepare (read, check, decode, split, write) | {t_prepare:.1f} | {n / t_prepare:,.0f} |")
    total = t_download + t_prepare
    print(f"| ganops download + prepare | {total:.1f} | {n / total:,.0f} ({t_plain / total:.2f}x the plain loop) |")
    # ru_maxrss counts the output's pages that the process has mapped and written (file pages the kernel
    # writes back and may drop); RssAnon is the memory of its own, what a set larger than memory needs.
    print(f"prepare at 64x64x3: arrays {big['array_mb']:,.0f} MB; peak RssAnon {big['anon_mb']:,.0f} MB, "
          f"peak RSS {big['rss_mb']:,.0f} MB (with the mapped output pages); the largest decoding process "
          f"{big['children_rss_mb']:,.0f} MB")


if __name__ == "__main__":
    main()
