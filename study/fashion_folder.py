"""Fashion-MNIST written out as an image folder: DIR/{train,test}/<class>/<index>.png (28x28 grayscale).

The study's "another size" run prepares it as a folder at 32 px (padded), where the IDX path
only gives 28 px; the official train/test split is kept as the folder's own train/ and test/.

    .venv/bin/python study/fashion_folder.py /tmp/fashion-folder     # 70,000 PNGs, ~1 minute
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

from ganops.data.datasets import fetch
from ganops.data.prepare import prepare
from ganops.data.prepared import load_manifest, load_split
from ganops.params import DataParams, PrepareParams


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the folder to write; must not exist")
    args = ap.parse_args(argv)
    if args.out.exists():
        print(f"{args.out} exists: give a new folder", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        fetch(params=DataParams(dataset="fashion-mnist"), out_dir=Path(tmp) / "raw")
        prepare(raw_dir=Path(tmp) / "raw", out_dir=Path(tmp) / "prepared", params=PrepareParams())
        classes = load_manifest(Path(tmp) / "prepared")["classes"]
        for split in ("train", "test"):
            images, labels = load_split(Path(tmp) / "prepared", split)
            for i, (image, label) in enumerate(zip(images, labels)):
                # Class folder names sort in label order: "0-T-shirt_top", ..., "9-Ankle boot"
                name = f"{label}-{classes[label].replace('/', '_')}"
                path = args.out / split / name / f"{i:05d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image, mode="L").save(path)
    print(f"wrote Fashion-MNIST into {args.out} (train/ and test/, one folder per class)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
