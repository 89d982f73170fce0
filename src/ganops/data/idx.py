"""The IDX file format: parse and validate raw images and labels (data/raw, written by the download stage).

IDX (the MNIST format): a big-endian header (magic, then one uint32 per dimension) followed by the
data. Images: magic 2051 (unsigned bytes, 3 dims), count x 28 x 28. Labels: magic 2049 (unsigned
bytes, 1 dim), count. data/raw holds the files decompressed plus sources.json (see ganops.data.datasets).
"""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np


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


def read_split(raw: Path, split: str, sources: dict) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """One split's images, labels and the SHA-256 of each file, checked against data/raw/sources.json."""
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
