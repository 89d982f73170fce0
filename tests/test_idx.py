"""IDX parsing/validation and the prepare step: exact outputs, stratified subsets, clear errors."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_images
from ganops.data.datasets import FILE_NAMES
from ganops.data.idx import IdxError, encode, read_images, read_labels
from ganops.data.prepare import prepare, stratified_subset
from ganops.params import PrepareParams
from ganops.data.prepared import load_manifest, load_split


def write_raw(directory: Path, *, n_train: int = 200, n_test: int = 100, classes=None,
              dataset: str = "synthetic") -> Path:
    """A data/raw directory as the download stage writes it, with synthetic images."""
    directory.mkdir(parents=True, exist_ok=True)
    blobs = {}
    for (images, labels), (image_name, label_name) in (
        (synthetic_images(n_train, 0), FILE_NAMES[:2]),
        (synthetic_images(n_test, 1), FILE_NAMES[2:]),
    ):
        blobs[image_name], blobs[label_name] = encode(images), encode(labels)
    write_files(directory, blobs, dataset=dataset, classes=classes)
    return directory


def write_files(directory: Path, blobs: dict[str, bytes], *, dataset="synthetic", classes=None) -> None:
    files = {}
    for name, blob in blobs.items():
        (directory / name).write_bytes(blob)
        files[name] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    (directory / "sources.json").write_text(json.dumps({"dataset": dataset, "classes": classes, "files": files}))


def raw_blobs(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in FILE_NAMES}


def test_encode_writes_the_idx_header_exactly():
    labels = np.array([3, 1, 4], dtype=np.uint8)
    assert encode(labels) == b"\x00\x00\x08\x01" + b"\x00\x00\x00\x03" + b"\x03\x01\x04"
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    assert encode(images)[:16] == struct.pack(">4I", 2051, 2, 28, 28)


def test_read_roundtrip(tmp_path):
    images, labels = synthetic_images(30, 5)
    (tmp_path / "i").write_bytes(encode(images))
    (tmp_path / "l").write_bytes(encode(labels))
    np.testing.assert_array_equal(read_images(tmp_path / "i"), images)
    np.testing.assert_array_equal(read_labels(tmp_path / "l"), labels)
    assert read_images(tmp_path / "i").dtype == np.uint8


def test_wrong_magic_number_names_file_and_fix(tmp_path):
    images, labels = synthetic_images(10, 0)
    (tmp_path / "labels-as-images").write_bytes(encode(labels))
    with pytest.raises(IdxError, match=r"labels-as-images: magic number 2049, expected 2051.*dvc repro --force download"):
        read_images(tmp_path / "labels-as-images")
    (tmp_path / "still.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(20))
    with pytest.raises(IdxError, match="gzip-compressed: decompress it"):
        read_labels(tmp_path / "still.gz")


def test_truncated_and_overlong_files(tmp_path):
    images, _ = synthetic_images(10, 0)
    blob = encode(images)
    (tmp_path / "short").write_bytes(blob[:-1])
    with pytest.raises(IdxError, match=r"short: the header promises 10 x 28 x 28 images \(7856 bytes\) "
                                       r"but the file has 7855 bytes: it is truncated"):
        read_images(tmp_path / "short")
    (tmp_path / "long").write_bytes(blob + b"\x00\x00")
    with pytest.raises(IdxError, match="it is 2 bytes too long"):
        read_images(tmp_path / "long")
    (tmp_path / "tiny").write_bytes(blob[:6])
    with pytest.raises(IdxError, match="tiny: 6 bytes, shorter than the 16-byte IDX header"):
        read_images(tmp_path / "tiny")


def test_images_must_be_28x28(tmp_path):
    (tmp_path / "big").write_bytes(encode(np.zeros((3, 32, 32), np.uint8)))
    with pytest.raises(IdxError, match="big: images are 32x32, ganops needs 28x28"):
        read_images(tmp_path / "big")


def test_prepare_writes_the_prepared_format(tmp_path):
    raw = write_raw(tmp_path / "raw", classes=[f"c{k}" for k in range(10)])
    manifest = prepare(raw_dir=raw, out_dir=tmp_path / "prepared", params=PrepareParams())
    assert manifest == load_manifest(tmp_path / "prepared")
    assert manifest["dataset"] == "synthetic"
    assert manifest["num_classes"] == 10
    assert manifest["classes"] == [f"c{k}" for k in range(10)]
    assert manifest["train"]["count"] == 200 and manifest["test"]["count"] == 100
    assert manifest["train"]["class_histogram"] == [20] * 10
    assert manifest["sources"] == {
        name: hashlib.sha256((raw / name).read_bytes()).hexdigest() for name in sorted(FILE_NAMES)
    }
    images, labels = load_split(tmp_path / "prepared", "train")
    expected_images, expected_labels = synthetic_images(200, 0)
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels.astype(np.int64))
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir()) == [
        "manifest.json", "test_images.npy", "test_labels.npy", "train_images.npy", "train_labels.npy"
    ]


def test_prepare_is_byte_identical(tmp_path):
    raw = write_raw(tmp_path / "raw")
    for out in ("a", "b"):
        prepare(raw_dir=raw, out_dir=tmp_path / out, params=PrepareParams(subset=50, seed=3))
    for name in ("manifest.json", "train_images.npy", "train_labels.npy", "test_images.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_idx_dataset_infers_class_count(tmp_path):
    raw = write_raw(tmp_path / "raw", dataset="idx", classes=None)
    manifest = prepare(raw_dir=raw, out_dir=tmp_path / "prepared", params=PrepareParams())
    assert manifest["num_classes"] == 10 and "classes" not in manifest
    assert manifest["dataset"] == "idx"


def test_stratified_subset_is_exact_and_seeded():
    labels = np.repeat(np.arange(4, dtype=np.uint8), [50, 30, 15, 5])  # 100 items
    keep = stratified_subset(labels, size=10, seed=0)
    assert len(keep) == 10 and np.all(np.diff(keep) > 0)
    # shares 5, 3, 1.5, 0.5: the half goes to the lower class (2)
    assert np.bincount(labels[keep], minlength=4).tolist() == [5, 3, 2, 0]
    np.testing.assert_array_equal(keep, stratified_subset(labels, size=10, seed=0))
    assert not np.array_equal(keep, stratified_subset(labels, size=10, seed=1))
    np.testing.assert_array_equal(stratified_subset(labels, size=100, seed=0), np.arange(100))
    with pytest.raises(IdxError, match="prepare.subset in params.yaml is 101 but the train split has 100"):
        stratified_subset(labels, size=101, seed=0)


def test_prepare_subset_keeps_class_balance(tmp_path):
    raw = write_raw(tmp_path / "raw")
    manifest = prepare(raw_dir=raw, out_dir=tmp_path / "prepared", params=PrepareParams(subset=50, seed=0))
    assert manifest["train"]["count"] == 50
    assert manifest["train"]["class_histogram"] == [5] * 10
    assert manifest["test"]["count"] == 100  # the test split is never subset
    assert manifest["train_subset"] == {"size": 50, "seed": 0}


def _assert_fails_without_output(raw: Path, out: Path, match: str) -> None:
    with pytest.raises(IdxError, match=match):
        prepare(raw_dir=raw, out_dir=out, params=PrepareParams())
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


def test_count_mismatch_fails_without_output(tmp_path):
    raw = write_raw(tmp_path / "raw")
    blobs = raw_blobs(raw)
    blobs["t10k-labels-idx1-ubyte"] = encode(synthetic_images(99, 1)[1])
    write_files(raw, blobs)
    _assert_fails_without_output(
        raw, tmp_path / "prepared",
        r"t10k-images-idx3-ubyte has 100 images but .*t10k-labels-idx1-ubyte has 99 labels",
    )


def test_label_out_of_range_fails_without_output(tmp_path):
    raw = write_raw(tmp_path / "raw", classes=[str(k) for k in range(10)])
    blobs = raw_blobs(raw)
    labels = synthetic_images(100, 1)[1]
    labels[7] = 12
    blobs["t10k-labels-idx1-ubyte"] = encode(labels)
    write_files(raw, blobs, classes=[str(k) for k in range(10)])
    _assert_fails_without_output(raw, tmp_path / "prepared",
                                 r"t10k-labels-idx1-ubyte: label 12 at index 7 is outside 0..9")


def test_wrong_magic_and_truncation_in_prepare(tmp_path):
    raw = write_raw(tmp_path / "raw")
    blobs = raw_blobs(raw)
    blobs["train-images-idx3-ubyte"] = blobs["train-images-idx3-ubyte"][:1000]
    write_files(raw, blobs)
    _assert_fails_without_output(raw, tmp_path / "prepared", r"train-images-idx3-ubyte: .* it is truncated")
    blobs["train-images-idx3-ubyte"] = b"\x00\x00\x08\x02" + bytes(12)
    write_files(raw, blobs)
    _assert_fails_without_output(raw, tmp_path / "prepared", r"magic number 2050, expected 2051")


def test_raw_changed_after_download_is_caught(tmp_path):
    raw = write_raw(tmp_path / "raw")
    (raw / "train-labels-idx1-ubyte").write_bytes(encode(synthetic_images(200, 9)[1]))
    _assert_fails_without_output(raw, tmp_path / "prepared", "differs from .* in .*sources.json")


def test_missing_raw_says_run_download(tmp_path):
    _assert_fails_without_output(tmp_path / "nothing", tmp_path / "prepared",
                                 r"sources.json not found: run the download stage first \(dvc repro download\)")


def test_failed_prepare_keeps_previous_output(tmp_path):
    raw = write_raw(tmp_path / "raw")
    prepare(raw_dir=raw, out_dir=tmp_path / "prepared", params=PrepareParams())
    before = (tmp_path / "prepared" / "manifest.json").read_bytes()
    (raw / "t10k-images-idx3-ubyte").write_bytes(b"junk")
    with pytest.raises(IdxError):
        prepare(raw_dir=raw, out_dir=tmp_path / "prepared", params=PrepareParams())
    assert (tmp_path / "prepared" / "manifest.json").read_bytes() == before
