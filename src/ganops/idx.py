"""IDX files: parse and validate raw images and labels, and the prepare step that turns data/raw into data/prepared.

IDX (the MNIST format): a big-endian header (magic, then one uint32 per dimension) followed by the
data. Images: magic 2051 (unsigned bytes, 3 dims), count x 28 x 28. Labels: magic 2049 (unsigned
bytes, 1 dim), count. data/raw holds the files decompressed plus sources.json (see ganops.datasets).
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from ganops.prepared import write_prepared

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
SIDE = 28
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_REDOWNLOAD = "re-create it (dvc repro --force download), or fix the file in data.idx_dir"


class IdxError(ValueError):
    """An IDX file (or data/raw as a whole) is malformed."""


def encode(array: np.ndarray) -> bytes:
    """IDX bytes of uint8 labels [N] or images [N, H, W] (the inverse of read_labels/read_images)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = {1: LABELS_MAGIC, 3: IMAGES_MAGIC}[array.ndim]
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes()


def _read(path: Path, *, magic: int, ndim: int, what: str) -> tuple[np.ndarray, bytes]:
    """(uint8 array of the data, whole file bytes) of one IDX file, after checking its header and size."""
    if not path.is_file():
        raise IdxError(f"{path} not found: run the download stage first (dvc repro download)")
    blob = path.read_bytes()
    header = 4 * (1 + ndim)
    if len(blob) < header:
        raise IdxError(f"{path}: {len(blob)} bytes, shorter than the {header}-byte IDX header: "
                       f"the file is truncated; {_REDOWNLOAD}")
    found, *dims = struct.unpack_from(f">{1 + ndim}I", blob)
    if found != magic:
        hint = " (it is gzip-compressed: decompress it)" if blob[:2] == b"\x1f\x8b" else ""
        raise IdxError(f"{path}: magic number {found}, expected {magic} for IDX {what}{hint}; "
                       f"this is not an IDX {what} file: {_REDOWNLOAD}")
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(blob) != expected:
        state = "truncated" if len(blob) < expected else f"{len(blob) - expected} bytes too long"
        raise IdxError(f"{path}: the header promises {' x '.join(map(str, dims))} {what} "
                       f"({expected} bytes) but the file has {len(blob)} bytes: it is {state}; "
                       f"{_REDOWNLOAD}")
    data = np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(dims)
    return data, blob


def _check_side(path: Path, images: np.ndarray) -> None:
    if images.shape[1:] != (SIDE, SIDE):
        raise IdxError(f"{path}: images are {images.shape[1]}x{images.shape[2]}, ganops needs "
                       f"{SIDE}x{SIDE}: resize them to 28x28 grayscale")


def read_images(path: str | Path) -> np.ndarray:
    """uint8 [N, 28, 28] from an IDX image file; IdxError names the file and the problem."""
    images, _ = _read(Path(path), magic=IMAGES_MAGIC, ndim=3, what="images")
    _check_side(Path(path), images)
    return images


def read_labels(path: str | Path) -> np.ndarray:
    """uint8 [N] from an IDX label file; IdxError names the file and the problem."""
    labels, _ = _read(Path(path), magic=LABELS_MAGIC, ndim=1, what="labels")
    return labels


def stratified_subset(labels: np.ndarray, *, size: int, seed: int) -> np.ndarray:
    """Sorted indices of `size` items, each class kept in proportion (largest remainder), seeded."""
    n = len(labels)
    if not 0 < size <= n:
        raise IdxError(f"prepare.subset in params.yaml is {size} but the train split has {n} images: "
                       f"use 1..{n}, or 0 to keep all")
    classes, counts = np.unique(labels, return_counts=True)
    quota, remainder = np.divmod(counts.astype(np.int64) * size, n)  # exact integer shares
    short = size - int(quota.sum())
    quota[np.lexsort((classes, -remainder))[:short]] += 1  # ties go to the lower class
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


def _load_split(raw: Path, split: str, sources: dict) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    image_name, label_name = SPLIT_FILES[split]
    images, image_blob = _read(raw / image_name, magic=IMAGES_MAGIC, ndim=3, what="images")
    _check_side(raw / image_name, images)
    labels, label_blob = _read(raw / label_name, magic=LABELS_MAGIC, ndim=1, what="labels")
    if len(images) != len(labels):
        raise IdxError(f"{raw / image_name} has {len(images)} images but {raw / label_name} has "
                       f"{len(labels)} labels: both must hold the same {split} split; {_REDOWNLOAD}")
    checksums = {}
    for name, blob in ((image_name, image_blob), (label_name, label_blob)):
        checksums[name] = hashlib.sha256(blob).hexdigest()
        recorded = sources.get("files", {}).get(name, {}).get("sha256")
        if recorded != checksums[name]:
            raise IdxError(f"{raw / name}: SHA-256 {checksums[name]} differs from {recorded} in "
                           f"{raw / 'sources.json'}: data/raw changed after download; {_REDOWNLOAD}")
    return images, labels, checksums


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    bad = np.flatnonzero(labels >= num_classes)
    if len(bad):
        raise IdxError(f"{path}: label {labels[bad[0]]} at index {bad[0]} is outside 0..{num_classes - 1} "
                       f"({num_classes} classes): fix the labels file")


def prepare(*, raw_dir: str | Path, out_dir: str | Path, subset: int = 0, seed: int = 0) -> dict:
    """Validate data/raw and write data/prepared (see ganops.prepared); return its manifest.

    The class count is that of the built-in dataset, or for idx the largest train label + 1.
    `subset` > 0 keeps a stratified, seeded subset of the train split. Same input -> same bytes.
    """
    raw = Path(raw_dir)
    sources_path = raw / "sources.json"
    if not sources_path.is_file():
        raise IdxError(f"{sources_path} not found: run the download stage first (dvc repro download)")
    sources = json.loads(sources_path.read_text())
    splits, checksums = {}, {}
    for split in SPLIT_FILES:
        images, labels, sums = _load_split(raw, split, sources)
        splits[split] = (images, labels)
        checksums.update(sums)
    classes = sources.get("classes")
    train_labels = splits["train"][1]
    num_classes = len(classes) if classes else int(train_labels.max(initial=0)) + 1
    for split, (_, labels) in splits.items():
        _check_labels(raw / SPLIT_FILES[split][1], labels, num_classes)
    extra: dict[str, object] = {}
    if classes:
        extra["classes"] = list(classes)
    if subset:
        keep = stratified_subset(train_labels, size=subset, seed=seed)
        splits["train"] = (splits["train"][0][keep], train_labels[keep])
        extra["train_subset"] = {"size": subset, "seed": seed}
    # Only content checksums go into the manifest (not which mirror served them), so the
    # manifest, a lineage tag, is the same for the same data.
    return write_prepared(out_dir, splits=splits, dataset=sources["dataset"], num_classes=num_classes,
                          sources=dict(sorted(checksums.items())), extra=extra)
