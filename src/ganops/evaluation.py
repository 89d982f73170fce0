"""The reference and evaluate stages: generated vs real images in the classifier's feature space
(and, with evaluate.inception, in Inception's: data/inception_reference, see inception_reference.py).

    data/reference/                    (reference stage; a DVC output)
      reference.json                   test class histogram, sizes, feature_extractor_version, ...
      test_features.npy                float32 [N, D] real test features (k-NN metrics, KID)
      test_mu.npy, test_sigma.npy      float64 mean [D] and covariance [D, D] of them (FID)
      train_features.npy               float32 [N, D] a random same-size sample of the train split
      train_labels.npy, train_predicted.npy   int64 [N] its labels and the classifier's predictions
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ganops import metrics as m
from ganops.plots import class_histogram_png
from ganops.classifier import extract, load_classifier
from ganops.fileio import atomic_dir, write_bytes, write_json
from ganops.inception_reference import load_inception_reference
from ganops.networks import Generator, load_generator
from ganops.params import EvaluateParams
from ganops.prepared import load_manifest, load_split, manifest_hash
from ganops.sampling import grid, latents, png_bytes, to_uint8
from ganops.tracking import Tracker, find_run, model_lineage_tags, read_run_id

REFERENCE_JSON = "reference.json"
TRAIN_SAMPLE_SEED = 0  # which train images form the *_real floor sample; fixed so the floor is stable
GRID_COLUMNS = 10


class QualityGateError(RuntimeError):
    """A metric exceeded its limit (evaluate.max_fid)."""


# --- reference -----------------------------------------------------------------------------------


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
    if num_classes != classifier.cfg.num_classes:
        raise ValueError(
            f"{prepared_dir} has {num_classes} classes but the classifier in {classifier_dir} was "
            f"trained on {classifier.cfg.num_classes}: rerun the classifier stage (dvc repro classifier)"
        )
    test_x, test_y = load_split(prepared_dir, "test")
    train_x, train_y = load_split(prepared_dir, "train")
    n = len(test_y)
    if len(train_y) < n:
        raise ValueError(
            f"{prepared_dir}: the train split ({len(train_y)}) is smaller than the test split ({n}); "
            "the *_real floor needs a same-size train sample: lower prepare.subset's reduction"
        )
    # A random order, so every prefix is itself a random sample (evaluate takes num_samples of it).
    pick = np.random.Generator(np.random.PCG64(TRAIN_SAMPLE_SEED)).permutation(len(train_y))[:n]
    test_f, _ = extract(classifier, test_x, batch_size=batch_size, desc="reference: test")
    train_f, train_pred = extract(classifier, train_x[pick], batch_size=batch_size, desc="reference: train")
    mu, sigma = m.gaussian_stats(test_f)
    meta = {
        "dataset": manifest.get("dataset"),
        "classes": manifest.get("classes"),
        "num_classes": num_classes,
        "num_test": n,
        "class_histogram": m.class_histogram(test_y, num_classes).tolist(),
        "train_sample_seed": TRAIN_SAMPLE_SEED,
        "data_manifest_sha256": manifest_hash(prepared_dir),
        "feature_extractor_version": cmeta["feature_extractor_version"],
    }
    arrays = {
        "test_features": test_f, "test_mu": mu, "test_sigma": sigma,
        "train_features": train_f, "train_labels": train_y[pick], "train_predicted": train_pred,
    }
    with atomic_dir(out_dir) as tmp:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)
        write_json(tmp / REFERENCE_JSON, meta)
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


# --- evaluate ------------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    generator: Generator, *, num_samples: int, seed: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images [N, 28, 28] from seeds seed .. seed+N-1 (labels i % num_classes when conditional).

    Images are quantised to uint8 like every served image, so the metrics judge what users get.
    """
    cfg = generator.cfg
    labels = np.arange(num_samples, dtype=np.int64) % cfg.num_classes if cfg.conditional else None
    out = np.empty((num_samples, 28, 28), dtype=np.uint8)
    starts = range(0, num_samples, batch_size)
    for start in tqdm(starts, desc="generate", unit="batch", leave=False):
        stop = min(start + batch_size, num_samples)
        z = torch.from_numpy(latents(range(seed + start, seed + stop), cfg.z_dim))
        y = torch.from_numpy(labels[start:stop]) if labels is not None else None
        out[start:stop] = to_uint8(generator(z, y).numpy())
    return out, labels


def sample_metrics(
    *,
    real: Reference,
    features: np.ndarray,
    predicted: np.ndarray,
    labels: np.ndarray | None,
    params: EvaluateParams,
) -> tuple[dict[str, float], np.ndarray]:
    """Every feature-space metric of one sample set against the real test set; also its class histogram."""
    num_classes = int(real.meta["num_classes"])
    mu, sigma = m.gaussian_stats(features)
    kid_mean, kid_std = m.kid(
        real.test_features, features,
        subsets=params.kid_subsets, subset_size=params.kid_subset_size, seed=params.seed,
    )
    hist = m.class_histogram(predicted, num_classes)
    out = {
        "fid": m.frechet_distance(mu, sigma, real.test_mu, real.test_sigma),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        **m.prdc(real.test_features, features, nearest_k=params.nearest_k),
        "class_coverage": m.class_coverage(hist, np.asarray(real.meta["class_histogram"])),
    }
    if labels is not None:
        out["class_accuracy"] = float((predicted == labels).mean())
    return out, hist


def _grid_image(images: np.ndarray, conditional: bool, num_classes: int) -> np.ndarray:
    """One row per class when conditional (sample i has class i % num_classes), else the first 100."""
    if conditional:
        per_class = min(GRID_COLUMNS, len(images) // num_classes)
        if per_class >= 1:
            order = [c + num_classes * j for c in range(num_classes) for j in range(per_class)]
            return grid(images[order], ncol=per_class)
    return grid(images[: GRID_COLUMNS * GRID_COLUMNS], ncol=GRID_COLUMNS)


def evaluate(
    *,
    model_dir: str | Path,
    classifier_dir: str | Path,
    reference_dir: str | Path,
    inception_reference_dir: str | Path,
    run_id_path: str | Path,
    out_dir: str | Path,
    params: EvaluateParams,
) -> dict[str, float]:
    """Score the generator in `model_dir`, write `out_dir`/{metrics.json, details.json, samples.png,
    class_histogram.png}, log the metrics into the training MLflow run, then apply the quality gate.
    `inception_reference_dir` is read only when params.inception (fid_inception).

    When the store lacks the training run, the metrics go to a new run tagged with its id
    (Tracker.for_stage). Returns the metrics; raises QualityGateError (after writing and logging)
    when fid > max_fid.
    """
    # Everything that can be checked is checked before the long work, not after it.
    run_id = read_run_id(run_id_path)
    find_run(run_id)  # raises when the store is unusable; a run missing from it is handled below
    generator, gmeta = load_generator(model_dir)
    classifier, cmeta = load_classifier(classifier_dir)
    version = cmeta["feature_extractor_version"]
    real = load_reference(reference_dir, feature_extractor_version=version)
    n = min(params.num_samples, len(real.train_features))  # the *_real floor's sample size
    n_real = len(real.test_features)
    m.check_kid_sizes(n_real=n_real, n_fake=n, subsets=params.kid_subsets, subset_size=params.kid_subset_size)
    m.check_nearest_k(n_real=n_real, n_fake=n, nearest_k=params.nearest_k)
    num_classes = int(real.meta["num_classes"])
    if generator.cfg.num_classes != num_classes:
        raise ValueError(
            f"the generator in {model_dir} has {generator.cfg.num_classes} classes, the data "
            f"{num_classes}: retrain it on this data (dvc repro train)"
        )
    inception = inception_real = None
    if params.inception:
        inception_real = load_inception_reference(
            inception_reference_dir, inception_weights=params.inception_weights,
            data_manifest_sha256=real.meta["data_manifest_sha256"],
        )
        inception = m.InceptionPool3(inception_real.weights)

    images, labels = generate(
        generator, num_samples=params.num_samples, seed=params.seed, batch_size=params.batch_size
    )
    feats, predicted = extract(classifier, images, batch_size=params.batch_size, desc="features")
    results, gen_hist = sample_metrics(
        real=real, features=feats, predicted=predicted, labels=labels, params=params
    )
    # The floor: real train images scored exactly like the generated ones (same count).
    floor, train_hist = sample_metrics(
        real=real,
        features=real.train_features[:n],
        predicted=real.train_predicted[:n],
        labels=real.train_labels[:n] if labels is not None else None,
        params=params,
    )
    results.update({f"{k}_real": v for k, v in floor.items()})
    if inception is not None:
        mu, sigma = m.gaussian_stats(inception.features(images, desc="inception"))
        results["fid_inception"] = m.frechet_distance(
            mu, sigma, inception_real.test_mu, inception_real.test_sigma
        )

    classes = real.meta.get("classes") or [str(k) for k in range(num_classes)]
    out_dir = Path(out_dir)
    sample_grid = _grid_image(images, generator.cfg.conditional, num_classes)
    write_json(out_dir / "metrics.json", results)
    write_json(out_dir / "details.json", {
        "feature_extractor_version": version,
        "classes": classes,
        "class_histogram_generated": gen_hist.tolist(),
        "class_histogram_real_test": real.meta["class_histogram"],
        "class_histogram_real_train_sample": train_hist.tolist(),
        "num_samples": params.num_samples,
        "seeds": [params.seed, params.seed + params.num_samples - 1],
        "params": asdict(params),
        "generator_lineage": gmeta.get("lineage", {}),
        "inception_weights_sha256": (
            inception_real.meta["inception_weights_sha256"] if inception_real is not None else None),
    })
    write_bytes(out_dir / "samples.png", png_bytes(sample_grid))
    real_hist = np.asarray(real.meta["class_histogram"])
    write_bytes(
        out_dir / "class_histogram.png",
        class_histogram_png(gen_hist, real_hist, classes, results["class_coverage"]),
    )

    gate_failed = params.max_fid is not None and results["fid"] > params.max_fid
    with Tracker.for_stage(run_id, stage="evaluate", tags=model_lineage_tags(gmeta)) as tracker:
        tracker.log_metrics(results, step=0)
        tracker.log_image(sample_grid, key="evaluate_samples", step=0)
        tracker.log_artifact(out_dir / "class_histogram.png", "evaluate")
        tracker.log_artifact(out_dir / "details.json", "evaluate")
        tracker.set_tags({
            "feature_extractor_version": version,
            "quality_gate": "none" if params.max_fid is None else ("failed" if gate_failed else "passed"),
        })
    if gate_failed:
        raise QualityGateError(
            f"quality gate failed: fid {results['fid']:.4f} exceeds evaluate.max_fid {params.max_fid} "
            f"(metrics written to {out_dir / 'metrics.json'})"
        )
    return results
