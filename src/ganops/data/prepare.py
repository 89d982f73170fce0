"""The prepare stage: data/raw's validated IDX files -> data/prepared (optionally a stratified subset)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ganops.data.idx import SPLIT_FILES, IdxError, read_split
from ganops.data.prepared import write_prepared
from ganops.params import PrepareParams


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

    The class count is that of the built-in dataset, or for idx the largest train label + 1.
    params.subset > 0 keeps a stratified subset of the train split, seeded by params.seed. Same input -> same bytes.
    """
    raw, subset, seed = Path(raw_dir), params.subset, params.seed
    sources_path = raw / "sources.json"
    if not sources_path.is_file():
        raise IdxError(f"{sources_path} not found: run the download stage first (dvc repro download)")
    sources = json.loads(sources_path.read_text())
    splits, checksums = {}, {}
    for split in SPLIT_FILES:
        images, labels, sums = read_split(raw, split, sources)
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
