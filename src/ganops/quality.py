"""The quality curve during training: a cheap domain fid of the EMA generator on a fixed small sample.

A curve to watch, not a model selector: training still keeps its last EMA generator. It uses the
classifier's feature space and the reference stage's test statistics (the evaluate stage's `fid`),
on `train.curve_samples` images from fixed seeds, so two epochs' points differ only by the model.
With 2,000 samples it reads higher than evaluate's 10,000-sample fid (FID is biased up at small N).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ganops import metrics as m
from ganops.classifier import extract, load_classifier
from ganops.sampling import latents, to_uint8

CURVE_FIRST_SEED = 2_000_000  # apart from the grid (0..63) and evaluate's (1,000,000 ...) seeds
REFERENCE_JSON = "reference.json"


class QualityCurve:
    """`curve = QualityCurve(classifier_dir, reference_dir, num_samples=2000, z_dim=100, num_classes=10,
    conditional=False, device=...)`, then `curve.fid(G_ema)` once per epoch."""

    def __init__(self, classifier_dir: str | Path, reference_dir: str | Path, *, num_samples: int,
                 z_dim: int, num_classes: int, conditional: bool, device: torch.device):
        reference_dir = Path(reference_dir)
        self.classifier, cmeta = load_classifier(classifier_dir)
        ref_json = reference_dir / REFERENCE_JSON
        if not ref_json.exists():
            raise FileNotFoundError(
                f"{ref_json} not found: run the reference stage first (dvc repro reference), "
                "or set train.curve_samples: 0"
            )
        meta = json.loads(ref_json.read_text())
        if meta["feature_extractor_version"] != cmeta["feature_extractor_version"]:
            raise ValueError(
                f"{reference_dir} was made with another classifier than {classifier_dir}: "
                "rerun the reference stage (dvc repro reference)"
            )
        if int(meta["num_classes"]) != num_classes:
            raise ValueError(f"{reference_dir} has {meta['num_classes']} classes, the data {num_classes}: "
                             "rerun the classifier and reference stages (dvc repro reference)")
        self.mu = np.load(reference_dir / "test_mu.npy")
        self.sigma = np.load(reference_dir / "test_sigma.npy")
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
        mu, sigma = m.gaussian_stats(feats)
        return m.frechet_distance(mu, sigma, self.mu, self.sigma)
