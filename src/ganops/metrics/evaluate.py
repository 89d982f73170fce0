"""The evaluate stage: generated vs real images in the classifier's feature space (data/reference)
and, with evaluate.inception, in Inception's (data/inception_reference); the quality gate."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ganops.fileio import write_bytes, write_json
from ganops.lineage import model_lineage_tags
from ganops.metrics import distances
from ganops.metrics.classifier import ROTATIONS, extract, load_classifier
from ganops.metrics.inception import InceptionPool3
from ganops.metrics.inception_reference import load_inception_reference
from ganops.metrics.reference import Reference, load_reference
from ganops.networks import Generator, load_generator
from ganops.params import EvaluateParams
from ganops.plots import class_histogram_png
from ganops.png import png
from ganops.sampling import grid, latents, to_uint8
from ganops.tracking import Tracker, find_run, read_run_id

GRID_COLUMNS = 10  # evaluate's samples.png: 10 x 10, or one row per class


class QualityGateError(RuntimeError):
    """A metric exceeded its limit (evaluate.max_fid)."""


@torch.no_grad()
def generate(
    generator: Generator, *, num_samples: int, seed: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images [N, R, R] (RGB: [N, R, R, 3]) from seeds seed .. seed+N-1 (labels i % num_classes
    when conditional).

    Images are quantised to uint8 like every served image, so the metrics judge what users get.
    """
    cfg = generator.cfg
    labels = np.arange(num_samples, dtype=np.int64) % cfg.num_classes if cfg.conditional else None
    channels, side = cfg.channels, cfg.resolution
    out = np.empty((num_samples, side, side, *((3,) if channels == 3 else ())), dtype=np.uint8)
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
    """Every feature-space metric of one sample set against the real test set; also the histogram of
    what the classifier's head predicts (classes; for an unlabelled set, rotations)."""
    mu, sigma = distances.gaussian_stats(features)
    kid_mean, kid_std = distances.kid(
        real.test_features, features,
        subsets=params.kid_subsets, subset_size=params.kid_subset_size, seed=params.seed,
    )
    out = {
        "fid": distances.frechet_distance(mu, sigma, real.test_mu, real.test_sigma),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        **distances.prdc(real.test_features, features, nearest_k=params.nearest_k),
    }
    if not real.meta.get("labelled", True):
        # No classes to cover; the rotation head says instead how many images look the right way up.
        out["upright_rate"] = float((predicted == 0).mean()) if len(predicted) else 0.0
        return out, distances.class_histogram(predicted, ROTATIONS)
    hist = distances.class_histogram(predicted, int(real.meta["num_classes"]))
    out["class_coverage"] = distances.class_coverage(hist, np.asarray(real.meta["class_histogram"]))
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
    distances.check_kid_sizes(n_real=n_real, n_fake=n, subsets=params.kid_subsets, subset_size=params.kid_subset_size)
    distances.check_nearest_k(n_real=n_real, n_fake=n, nearest_k=params.nearest_k)
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
        inception = InceptionPool3(inception_real.weights)

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
        mu, sigma = distances.gaussian_stats(inception.features(images, desc="inception"))
        results["fid_inception"] = distances.frechet_distance(
            mu, sigma, inception_real.test_mu, inception_real.test_sigma
        )

    labelled = real.meta.get("labelled", True)
    if labelled:
        classes = real.meta.get("classes") or [str(k) for k in range(num_classes)]
        real_hist = np.asarray(real.meta["class_histogram"])
        histogram = class_histogram_png(gen_hist, real_hist, classes,
                                        title=f"class_coverage {results['class_coverage']:.3f}")
    else:  # what the rotation head sees in upright images: real ones (the train sample) vs generated
        classes, real_hist = None, train_hist
        histogram = class_histogram_png(
            gen_hist, real_hist, [f"{90 * k}°" for k in range(ROTATIONS)], real_label="real (train sample)",
            generated_label="generated", ylabel="share seen at this rotation",
            title=f"unlabelled set: upright_rate {results['upright_rate']:.3f} (real {results['upright_rate_real']:.3f})")
    out_dir = Path(out_dir)
    sample_grid = _grid_image(images, generator.cfg.conditional, num_classes)
    write_json(out_dir / "metrics.json", results)
    write_json(out_dir / "details.json", {
        "feature_extractor_version": version,
        "classes": classes,
        # labelled: classes; unlabelled: the rotation (0, 90, 180, 270 degrees) the classifier sees
        "class_histogram_generated": gen_hist.tolist(),
        "class_histogram_real_test": real.meta["class_histogram"] if labelled else None,
        "class_histogram_real_train_sample": train_hist.tolist(),
        "num_samples": params.num_samples,
        "seeds": [params.seed, params.seed + params.num_samples - 1],
        "params": asdict(params),
        "generator_lineage": gmeta.get("lineage", {}),
        "inception_weights_sha256": (
            inception_real.meta["inception_weights_sha256"] if inception_real is not None else None),
    })
    write_bytes(out_dir / "samples.png", png(sample_grid))
    write_bytes(out_dir / "class_histogram.png", histogram)

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
