"""Inception pool3 on the CPU: one process with every core's threads vs one single-thread process
per core (what ganops.metrics.distances.InceptionPool3 does), with glibc's default allocator in the workers
and with freed memory kept (the default), in img/s and in the FID each gives.

    .venv/bin/python bench/inception_speed.py [--images 200] [--models models/gan other/gan ...]

For each model (default: models/gan, an untrained generator, and real train images as a third
"model"), both paths score `--images` generated images against as many test images; the FIDs must
agree within 0.1 (issue 12's rule for any faster path). Prints a table; exit 1 if they do not agree.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ganops.metrics import distances, inception
from ganops.metrics.evaluate import generate
from ganops.networks import Generator, NetConfig, load_generator
from ganops.data.prepared import load_split


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--models", nargs="*", default=["models/gan"])
    args = parser.parse_args()
    n = args.images
    test, _ = load_split(args.prepared, "test")
    train, _ = load_split(args.prepared, "train")
    sets = {"real train images": train[-n:]}
    for path in args.models:
        if Path(path, "generator.json").exists():
            G, _ = load_generator(path)
            sets[path] = generate(G, num_samples=n, seed=1_000_000, batch_size=100)[0]
    sets["untrained generator"] = generate(Generator(NetConfig()).eval(), num_samples=n, seed=1_000_000,
                                           batch_size=100)[0]
    weights = inception.inception_weights_path("")
    cores = torch.get_num_threads()
    paths = {f"1 process x {cores} threads": inception.InceptionPool3(weights, device="cpu", processes=1),
             f"{cores} processes x 1 thread, memory to the OS": inception.InceptionPool3(
                 weights, device="cpu", processes=cores, reuse_memory=False),
             f"{cores} processes x 1 thread, memory kept": inception.InceptionPool3(weights, device="cpu", processes=cores)}
    ref = {}
    for label, net in paths.items():
        t = time.perf_counter()
        feats = net.features(test[:n], desc=label)
        ref[label] = (distances.gaussian_stats(feats), n / (time.perf_counter() - t))
    print(f"| set ({n} images vs {n} test images) | " + " | ".join(f"FID, {p}" for p in paths)
          + " | largest |diff| |")
    print("| --- | " + " | ".join("---" for _ in paths) + " | --- |")
    worst = 0.0
    rates = {label: [ref[label][1]] for label in paths}
    for name, images in sets.items():
        fids = []
        for label, net in paths.items():
            t = time.perf_counter()
            mu, sigma = distances.gaussian_stats(net.features(images, desc=label))
            rates[label].append(n / (time.perf_counter() - t))
            fids.append(distances.frechet_distance(mu, sigma, *ref[label][0]))
        diff = max(abs(f - fids[0]) for f in fids)
        worst = max(worst, diff)
        print(f"| {name} | " + " | ".join(f"{f:.3f}" for f in fids) + f" | {diff:.2e} |")
    print()
    for label, r in rates.items():
        print(f"{label}: {np.mean(r):.1f} img/s (mean of {len(r)} passes of {n} images)")
    one, before, after = (np.mean(rates[label]) for label in paths)
    print(f"speed-up of the pipeline's path: {after / one:.2f}x over one process, {after / before:.2f}x over "
          f"returning memory to the OS; largest FID difference {worst:.2e} "
          f"({'within' if worst <= 0.1 else 'NOT within'} 0.1)")
    return 0 if worst <= 0.1 else 1


if __name__ == "__main__":
    sys.exit(main())
