"""The prepare stage: data/raw's IDX files or image folder -> validated data/prepared arrays."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ganops.data.folder import Entry, FolderError, Inventory, decode, split_indices
from ganops.data.idx import SPLIT_FILES, IdxError, read_split
from ganops.data.prepared import write_prepared, write_prepared_rows
from ganops.params import PrepareParams

DECODE_CHUNK = 2000  # images per task of the decoding processes


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


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    bad = np.flatnonzero(labels >= num_classes)
    if len(bad):
        raise IdxError(f"{path}: label {labels[bad[0]]} at index {bad[0]} is outside 0..{num_classes - 1} "
                       f"({num_classes} classes): fix the labels file")


def prepare(*, raw_dir: str | Path, out_dir: str | Path, params: PrepareParams) -> dict:
    """Validate data/raw and write data/prepared (see ganops.data.prepared); return its manifest.

    IDX datasets: the class count is that of the built-in dataset, or for idx the largest train label
    + 1. Dataset "folder": the images of data/raw's inventory, decoded at params.resolution and
    params.channels (ganops.data.folder). params.subset > 0 keeps a stratified subset of the train
    split, seeded by params.seed. Same input -> same bytes.
    """
    raw = Path(raw_dir)
    sources_path = raw / "sources.json"
    if not sources_path.is_file():
        raise IdxError(f"{sources_path} not found: run the download stage first (dvc repro download)")
    sources = json.loads(sources_path.read_text())
    if sources["dataset"] == "folder":
        return _prepare_folder(sources, params, Path(out_dir))
    if (params.resolution, params.channels) != (28, 1):
        raise IdxError(f"prepare.resolution {params.resolution} / prepare.channels {params.channels}: IDX "
                       "datasets are 28x28 grayscale; set them to 28 and 1, or write the images out as a "
                       "folder (data.dataset: folder) to pad, crop or resize them")
    splits, num_classes, extra, checksums = _idx_splits(raw, sources)
    if params.subset:
        train_images, train_labels = splits["train"]
        keep = stratified_subset(train_labels, size=params.subset, seed=params.seed)
        splits["train"] = (train_images[keep], train_labels[keep])
        extra["train_subset"] = {"size": params.subset, "seed": params.seed}
    extra.update(resolution=params.resolution, channels=params.channels)
    # Only content checksums go into the manifest (not which mirror served them), so the
    # manifest, a lineage tag, is the same for the same data.
    return write_prepared(out_dir, splits=splits, dataset=sources["dataset"], num_classes=num_classes,
                          sources=dict(sorted(checksums.items())), extra=extra)


def _decode_chunk(job: tuple[Path, tuple[Entry, ...], PrepareParams]) -> tuple[np.ndarray, int]:
    """Decode a run of inventoried images, each checked against its SHA-256: (pixels, upscaled count)."""
    root, entries, params = job
    shape = (params.resolution, params.resolution) + ((3,) if params.channels == 3 else ())
    images, upscaled = np.empty((len(entries), *shape), np.uint8), 0
    for i, entry in enumerate(entries):
        path = root / entry.path
        try:
            blob = path.read_bytes()  # read once: the bytes checked are the bytes decoded
        except OSError as e:
            raise FolderError(f"cannot read {path} ({e.strerror}): it was inventoried by the download stage; "
                              "rerun dvc repro (download first)") from e
        if hashlib.sha256(blob).hexdigest() != entry.sha256:
            raise FolderError(f"{path} changed after the download stage inventoried it: rerun dvc repro, "
                              "which inventories the folder again")
        images[i], up = decode(path, resolution=params.resolution, channels=params.channels,
                               transform=params.transform, resample=params.resample, background=params.background,
                               data=blob)
        upscaled += up
    return images, upscaled


def _idx_splits(raw: Path, sources: dict) -> tuple[dict, int, dict, dict]:
    splits, checksums = {}, {}
    for split in SPLIT_FILES:
        images, labels, sums = read_split(raw, split, sources)
        splits[split] = (images, labels)
        checksums.update(sums)
    classes = sources.get("classes")
    num_classes = len(classes) if classes else int(splits["train"][1].max(initial=0)) + 1
    for split, (_, labels) in splits.items():
        _check_labels(raw / SPLIT_FILES[split][1], labels, num_classes)
    return splits, num_classes, ({"classes": list(classes)} if classes else {}), checksums


def _prepare_folder(sources: dict, params: PrepareParams, out_dir: Path) -> dict:
    """Split the inventory, then decode the images each split keeps (each checked against its SHA-256
    first) straight into the memory-mapped arrays of data/prepared: no split is held in memory."""
    inventory = Inventory.from_json(sources["inventory"])
    root, entries = Path(sources["folder"]), inventory.entries
    labelled = inventory.classes is not None
    if labelled and len(inventory.classes) > 256:
        raise FolderError(f"{root} has {len(inventory.classes)} class folders; prepared labels are uint8, so at "
                          "most 256: merge classes, or leave the images unlabelled (directly in the folder)")
    labels = np.array([entry.label for entry in entries], np.int64)
    if entries[0].split is not None:  # the folder's own train/ and test/
        train = np.array([i for i, e in enumerate(entries) if e.split == "train"], np.int64)
        test = np.array([i for i, e in enumerate(entries) if e.split == "test"], np.int64)
    else:
        if labelled:
            counts = np.bincount(labels, minlength=len(inventory.classes))
            for name, count in zip(inventory.classes, counts):
                if count < 2:
                    raise FolderError(
                        f"class folder {root / name} has {count} image(s); held-out test images need at "
                        "least 2 per class: add images, remove the folder, or give the folder train/ and test/")
        train, test = split_indices(labels, test_fraction=params.test_fraction, seed=params.seed)
    stored = labels if labelled else np.zeros_like(labels)  # unlabelled: one class, 0
    extra: dict[str, object] = {"classes": list(inventory.classes) if labelled else None, "labelled": labelled}
    if params.subset:  # decided before decoding: the images left out are never read
        train = train[stratified_subset(stored[train], size=params.subset, seed=params.seed)]
        extra["train_subset"] = {"size": params.subset, "seed": params.seed}
    extra.update(resolution=params.resolution, channels=params.channels)

    # Where each kept entry goes: its split and row. Entries are decoded in inventory order, in chunks.
    split_of, row_of = np.full(len(entries), -1, np.int64), np.zeros(len(entries), np.int64)
    for code, rows in enumerate((train, test)):
        split_of[rows], row_of[rows] = code, np.arange(len(rows))
    kept = np.flatnonzero(split_of >= 0)
    chunks = [kept[i : i + DECODE_CHUNK] for i in range(0, len(kept), DECODE_CHUNK)]
    jobs = [(root, tuple(entries[i] for i in chunk), params) for chunk in chunks]

    def fill(images: dict[str, np.ndarray]) -> dict:
        targets, upscaled = (images["train"], images["test"]), 0
        with tqdm(total=len(kept), desc="prepare: decode", unit="img", leave=False, file=sys.stderr) as bar:
            for chunk, (pixels, up) in zip(chunks, _decode_all(jobs)):
                for code, target in enumerate(targets):
                    mine = split_of[chunk] == code
                    target[row_of[chunk[mine]]] = pixels[mine]
                upscaled += up
                bar.update(len(chunk))
        return {"prepare_report": {"images": len(entries), "upscaled": upscaled,
                                   "skipped_hidden": inventory.skipped["hidden"],
                                   "skipped_not_an_image": inventory.skipped["not_an_image"]}}

    side, shape = params.resolution, (3,) if params.channels == 3 else ()
    blob = json.dumps(sources["inventory"], sort_keys=True).encode()
    return write_prepared_rows(
        out_dir, labels={"train": stored[train], "test": stored[test]}, image_shape=(side, side, *shape),
        fill=fill, dataset="folder", num_classes=len(inventory.classes) if labelled else 1,
        sources={"inventory": hashlib.sha256(blob).hexdigest()}, extra=extra)


def _decode_all(jobs: list) -> Iterator[tuple[np.ndarray, int]]:
    """_decode_chunk of each job, in order: in this process for one chunk, else one process per core."""
    if len(jobs) <= 1:
        yield from map(_decode_chunk, jobs)
        return
    # Decoding is CPU-bound Python and Pillow; spawn, not fork: the parent may hold threads (tqdm, torch).
    with ProcessPoolExecutor(min(os.cpu_count() or 1, len(jobs)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_decode_chunk, jobs)
