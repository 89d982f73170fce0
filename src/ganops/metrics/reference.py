"""The reference stage and its on-disk format: the real data's features in the classifier's space.

    data/reference/                    (a DVC output)
      reference.json                   test class histogram, labelled, sizes, feature_extractor_version, ...
      test_features.npy                float32 [N, D] real test features (k-NN metrics, KID)
      test_mu.npy, test_sigma.npy      float64 mean [D] and covariance [D, D] of them (FID)
      train_features.npy               float32 [N, D] a random same-size sample of the train split
      train_labels.npy, train_predicted.npy   int64 [N] its labels and the classifier's predictions
                                       (unlabelled: labels 0, predictions the rotation seen in upright images)

build_reference writes it, load_reference reads it (evaluate and the training curve alike).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ganops.data.prepared import load_manifest, load_split, manifest_hash
from ganops.fileio import write_arrays
from ganops.metrics import distances
from ganops.metrics.classifier import extract, load_classifier

REFERENCE_JSON = "reference.json"
TRAIN_SAMPLE_SEED = 0  # which train images form the *_real floor sample; fixed so the floor is stable



def build_reference(
    *,
    prepared_dir: str | Path,
    classifier_dir: str | Path,
    out_dir: str | Path,
    batch_size: int = 1000,
) -> dict:
    """Write the real-data statistics that evaluate compares against (layout in the module doc)."""
    classifier, cmeta = load_classifier(classifier_dir)
    manifest = load_manifest(prepared_dir)
    num_classes = int(manifest["num_classes"])
    labelled = bool(manifest.get("labelled", True))
    if classifier.cfg.task != ("classes" if labelled else "rotation") or (
            labelled and num_classes != classifier.cfg.num_classes):
        raise ValueError(
            f"{prepared_dir} ({num_classes} classes, labelled: {labelled}) is not the data the classifier in "
            f"{classifier_dir} was trained on ({classifier.cfg.task}, {classifier.cfg.num_classes} outputs): "
            "rerun the classifier stage (dvc repro classifier)"
        )
    test_x, test_y = load_split(prepared_dir, "test", mmap=True)
    train_x, train_y = load_split(prepared_dir, "train", mmap=True)
    n = len(test_y)
    if len(train_y) < n:
        raise ValueError(
            f"{prepared_dir}: the train split ({len(train_y)}) is smaller than the test split ({n}); "
            "the *_real floor needs a same-size train sample: lower prepare.subset's reduction"
        )
    # A random order, so every prefix is itself a random sample (evaluate takes num_samples of it).
    pick = np.random.Generator(np.random.PCG64(TRAIN_SAMPLE_SEED)).permutation(len(train_y))[:n]
    rows = np.sort(pick)  # read the memory-mapped split in one forward sweep, then restore the order
    train_sample = train_x[rows][np.argsort(np.argsort(pick))]
    test_f, _ = extract(classifier, test_x, batch_size=batch_size, desc="reference: test")
    train_f, train_pred = extract(classifier, train_sample, batch_size=batch_size, desc="reference: train")
    mu, sigma = distances.gaussian_stats(test_f)
    meta = {
        "dataset": manifest.get("dataset"),
        "classes": manifest.get("classes"),
        "num_classes": num_classes,
        "labelled": labelled,
        "num_test": n,
        "class_histogram": distances.class_histogram(test_y, num_classes).tolist(),
        "train_sample_seed": TRAIN_SAMPLE_SEED,
        "data_manifest_sha256": manifest_hash(prepared_dir),
        "feature_extractor_version": cmeta["feature_extractor_version"],
    }
    arrays = {
        "test_features": test_f, "test_mu": mu, "test_sigma": sigma,
        "train_features": train_f, "train_labels": train_y[pick], "train_predicted": train_pred,
    }
    write_arrays(out_dir, arrays, json_name=REFERENCE_JSON, meta=meta)
    return meta


@dataclass(frozen=True)
class Reference:
    meta: dict
    test_features: np.ndarray
    test_mu: np.ndarray
    test_sigma: np.ndarray
    train_features: np.ndarray
    train_labels: np.ndarray
    train_predicted: np.ndarray


def load_reference(directory: str | Path, *, feature_extractor_version: str) -> Reference:
    """Read data/reference, checking it was made with this classifier (else the numbers would mix)."""
    directory = Path(directory)
    path = directory / REFERENCE_JSON
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the reference stage first (dvc repro reference)")
    meta = json.loads(path.read_text())
    if meta["feature_extractor_version"] != feature_extractor_version:
        raise ValueError(
            f"{directory} was computed with feature extractor {meta['feature_extractor_version']} but "
            f"the classifier is {feature_extractor_version}: rerun the reference stage (dvc repro reference)"
        )
    names = ("test_features", "test_mu", "test_sigma", "train_features", "train_labels", "train_predicted")
    arrays = {name: np.load(directory / f"{name}.npy", allow_pickle=False) for name in names}
    return Reference(meta=meta, **arrays)
