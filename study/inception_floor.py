"""The real floor of Inception FID: FID(train[:N], test) with the pipeline's Inception path and the
test statistics of the inception_reference stage (made with evaluate.inception: true).

    python study/inception_floor.py --out study/inception_floor.json
    python study/inception_floor.py --inception-reference DIR --prepared DIR --num 10000

Prints one JSON line: num, fid_inception_real, seconds; --out also writes it to that file, where
study/table.py reads the floor for the README table. Lucic et al.'s protocol compares 10k
generated images with the 10k test images; 10k real training images in their place is the floor
a perfect generator would reach.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from ganops.metrics import distances, inception
from ganops.fileio import write_json
from ganops.metrics.inception_reference import load_inception_reference
from ganops.data.prepared import load_split, manifest_hash


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inception-reference", default="data/inception_reference")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--num", type=int, default=10_000)
    parser.add_argument("--out", default="", help="also write the JSON line to this file")
    args = parser.parse_args()
    if args.num < 2:
        parser.error(f"--num must be at least 2 (a covariance needs two images), got {args.num}")
    ref = load_inception_reference(args.inception_reference, data_manifest_sha256=manifest_hash(args.prepared))
    train, _ = load_split(args.prepared, "train")
    start = time.perf_counter()
    feats = inception.InceptionPool3(ref.weights).features(train[: args.num], desc="train")
    fid = distances.frechet_distance(*distances.gaussian_stats(feats), ref.test_mu, ref.test_sigma)
    result = {"num": len(feats), "fid_inception_real": fid, "seconds": round(time.perf_counter() - start)}
    print(json.dumps(result))
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
