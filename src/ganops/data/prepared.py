"""The prepared-data format: uint8 arrays plus manifest.json, written by prepare, read by later stages.

    data/prepared/
      train_images.npy  uint8 [N, 28, 28]     train_labels.npy  uint8 [N]
      test_images.npy   uint8 [M, 28, 28]     test_labels.npy   uint8 [M]
      manifest.json     dataset, num_classes, resolution, channels, per split: count, class_histogram,
                        SHA-256 of each array; an image folder adds classes, labelled and prepare_report
    (images are uint8 [N, R, R] for one channel, [N, R, R, 3] for RGB)
"""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ganops.fileio import atomic_dir, sha256_file

SPLITS = ("train", "test")


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def write_prepared(
    directory: str | Path,
    *,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    dataset: str,
    num_classes: int,
    sources: dict[str, object],
    extra: dict[str, object] | None = None,
) -> dict:
    """Write every split's arrays and the manifest into `directory`, atomically as a whole.

    `splits` maps "train"/"test" to (images uint8 [N, R, R] or [N, R, R, 3], labels uint8 [N]). Same
    input gives byte-identical files. Returns the manifest.
    """
    def fill(images: dict[str, np.ndarray]) -> None:
        for split in SPLITS:
            images[split][...] = splits[split][0]

    return write_prepared_rows(
        directory, labels={split: splits[split][1] for split in SPLITS},
        image_shape=np.shape(splits["train"][0])[1:], fill=fill, dataset=dataset, num_classes=num_classes,
        sources=sources, extra=extra)


def write_prepared_rows(
    directory: str | Path,
    *,
    labels: dict[str, np.ndarray],
    image_shape: tuple[int, ...],
    fill: Callable[[dict[str, np.ndarray]], dict | None],
    dataset: str,
    num_classes: int,
    sources: dict[str, object],
    extra: dict[str, object] | None = None,
) -> dict:
    """`write_prepared` for sets larger than memory: each split's image array is created on disk at
    its final size (len(labels[split]) rows of `image_shape`) and `fill` writes its rows into the
    memory-mapped arrays it is given (split -> uint8 array), so no split is ever held whole; what it
    returns joins the manifest (what is known only after the rows, e.g. counts). The files are the
    bytes np.save would write. Returns the manifest."""
    manifest: dict[str, object] = {"dataset": dataset, "num_classes": num_classes, "sources": sources}
    manifest.update(extra or {})
    with atomic_dir(directory) as tmp:
        images = {split: np.lib.format.open_memmap(tmp / f"{split}_images.npy", mode="w+", dtype=np.uint8,
                                                   shape=(len(labels[split]), *image_shape))
                  for split in SPLITS}
        manifest.update(fill(images) or {})
        for array in images.values():
            array.flush()
        del images, array  # unmapped before the files are hashed
        for split in SPLITS:
            y = np.asarray(labels[split], dtype=np.uint8)
            blob = _npy_bytes(y)
            (tmp / f"{split}_labels.npy").write_bytes(blob)
            manifest[split] = {
                "count": int(len(y)), "class_histogram": np.bincount(y, minlength=num_classes).tolist(),
                "images_sha256": sha256_file(tmp / f"{split}_images.npy"),
                "labels_sha256": hashlib.sha256(blob).hexdigest(),
            }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def load_manifest(directory: str | Path) -> dict:
    path = Path(directory) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the prepare stage first (dvc repro prepare)")
    return json.loads(path.read_text())


def image_shape(manifest: dict) -> tuple[int, int]:
    """(resolution, channels) of the prepared images; manifests written before both existed: (28, 1)."""
    return int(manifest.get("resolution", 28)), int(manifest.get("channels", 1))


def check_labelled(directory: str | Path, manifest: dict, *, what: str) -> None:
    """A conditional model needs labels: on an unlabelled folder it stops here."""
    if not manifest.get("labelled", True):
        raise ValueError(
            f"{directory} is an unlabelled image folder, but {what} needs labels: put the images in "
            "class folders (data.folder/<class>/...)")


def manifest_hash(directory: str | Path) -> str:
    """SHA-256 of manifest.json: names the exact data a model was trained on (a lineage tag)."""
    return hashlib.sha256((Path(directory) / "manifest.json").read_bytes()).hexdigest()


def load_split(directory: str | Path, split: str, *, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, R, R] or [N, R, R, 3], labels int64 [N]) of one split; `mmap`: the images
    memory-mapped read-only (rows are read from disk when used), not loaded whole."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    directory = Path(directory)
    load_manifest(directory)
    images = np.load(directory / f"{split}_images.npy", allow_pickle=False, mmap_mode="r" if mmap else None)
    labels = np.load(directory / f"{split}_labels.npy", allow_pickle=False).astype(np.int64)
    return images, labels
