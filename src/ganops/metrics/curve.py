"""The quality curve during training: a cheap domain fid of the EMA generator on a fixed small sample.

A curve to watch, not a model selector: training still keeps its last EMA generator. It uses the
classifier's feature space and the reference stage's test statistics (the evaluate stage's `fid`,
read through metrics.reference),
on `train.curve_samples` images from fixed seeds, so two epochs' points differ only by the model.
With 2,000 samples it reads higher than evaluate's 10,000-sample fid (FID is biased up at small N).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ganops.metrics import distances
from ganops.metrics.classifier import extract, load_classifier
from ganops.metrics.reference import REFERENCE_JSON, load_reference
from ganops.sampling import latents, to_uint8

CURVE_FIRST_SEED = 2_000_000  # apart from the grid (0..63) and evaluate's (1,000,000 ...) seeds


class QualityCurve:
    """`curve = QualityCurve(classifier_dir, reference_dir, num_samples=2000, z_dim=100, num_classes=10,
    conditional=False, device=...)`, then `curve.fid(G_ema)` once per epoch."""

    def __init__(self, classifier_dir: str | Path, reference_dir: str | Path, *, num_samples: int,
                 z_dim: int, num_classes: int, conditional: bool, device: torch.device):
        self.classifier, cmeta = load_classifier(classifier_dir)
        if not (Path(reference_dir) / REFERENCE_JSON).exists():
            raise FileNotFoundError(
                f"{Path(reference_dir) / REFERENCE_JSON} not found: run the reference stage first "
                "(dvc repro reference), or set train.curve_samples: 0"
            )
        real = load_reference(reference_dir, feature_extractor_version=cmeta["feature_extractor_version"])
        if int(real.meta["num_classes"]) != num_classes:
            raise ValueError(f"{reference_dir} has {real.meta['num_classes']} classes, the data {num_classes}: "
                             "rerun the classifier and reference stages (dvc repro reference)")
        self.mu, self.sigma = real.test_mu, real.test_sigma
        self.z = torch.from_numpy(
            latents(range(CURVE_FIRST_SEED, CURVE_FIRST_SEED + num_samples), z_dim)).to(device)
        self.y = (torch.arange(num_samples, device=device) % num_classes) if conditional else None

    @torch.no_grad()
    def fid(self, generator: torch.nn.Module, batch_size: int = 500) -> float:
        """Domain fid of `generator` (in eval mode) on the fixed sample; consumes no random numbers."""
        images = np.concatenate([
            to_uint8(generator(z, None if self.y is None else self.y[i : i + batch_size]).float().cpu().numpy())
            for i, z in zip(range(0, len(self.z), batch_size), self.z.split(batch_size))
        ])
        feats, _ = extract(self.classifier, images, batch_size=batch_size, desc="curve")
        mu, sigma = distances.gaussian_stats(feats)
        return distances.frechet_distance(mu, sigma, self.mu, self.sigma)
