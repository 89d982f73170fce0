"""The inception_reference stage: the real test set's 2015 Inception pool3 statistics, for fid_inception.

    data/inception_reference/          (inception_reference stage; a DVC output)
      inception_reference.json         inception (on/off), inception_weights_sha256 (null when off),
                                       num_test, data_manifest_sha256
      inception_test_mu.npy, inception_test_sigma.npy   float64 mean [2048] and covariance
                                       [2048, 2048] of the pool3 features (evaluate.inception only)

A stage of its own, apart from data/reference: train depends on data/reference, so computing
these there made turning evaluate.inception on retrain the GAN just to score it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ganops.fileio import sha256_file, write_arrays
from ganops.data.prepared import load_manifest, load_split, manifest_hash

INCEPTION_REFERENCE_JSON = "inception_reference.json"


def build_inception_reference(
    *,
    prepared_dir: str | Path,
    out_dir: str | Path,
    inception: bool,
    inception_weights: str = "",
) -> dict:
    """Write `out_dir` (layout in the module doc). With `inception` false only the JSON, saying so,
    in well under a second: the directory always exists, so evaluate can always depend on it."""
    manifest = load_manifest(prepared_dir)
    meta = {
        "inception": inception,
        "inception_weights_sha256": None,
        "num_test": int(manifest["test"]["count"]),
        "data_manifest_sha256": manifest_hash(prepared_dir),
    }
    arrays = {}
    if inception:
        # Imported here: with evaluate.inception off (the default) the stage never loads torch, whose
        # import alone takes seconds.
        from ganops.metrics import distances
        from ganops.metrics.inception import InceptionPool3, inception_weights_path

        path = inception_weights_path(inception_weights)
        test_x, _ = load_split(prepared_dir, "test")
        feats = InceptionPool3(path).features(test_x, desc="inception_reference")
        arrays["inception_test_mu"], arrays["inception_test_sigma"] = distances.gaussian_stats(feats)
        meta["inception_weights_sha256"] = sha256_file(path)
        meta["num_test"] = len(test_x)
    write_arrays(out_dir, arrays, json_name=INCEPTION_REFERENCE_JSON, meta=meta)
    return meta


@dataclass(frozen=True)
class InceptionReference:
    meta: dict
    weights: Path  # the configured Inception file, the one the statistics were made with
    test_mu: np.ndarray
    test_sigma: np.ndarray


def load_inception_reference(
    directory: str | Path, *, inception_weights: str = "", data_manifest_sha256: str | None = None
) -> InceptionReference:
    """Read data/inception_reference, checking that it holds statistics, that they were made with the
    configured weights (evaluate.inception_weights) and, when `data_manifest_sha256` is given, from
    that data: generated pool3 features are only comparable with those of the same network and test set.
    """
    directory = Path(directory)
    path = directory / INCEPTION_REFERENCE_JSON
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: run the inception_reference stage first (dvc repro inception_reference)")
    meta = json.loads(path.read_text())
    recorded = meta["inception_weights_sha256"]
    if recorded is None:
        raise ValueError(
            f"{directory} has no Inception statistics: rerun the inception_reference stage with "
            "evaluate.inception: true (dvc repro inception_reference)"
        )
    from ganops.metrics.inception import inception_weights_path  # torch: see build_inception_reference

    weights = inception_weights_path(inception_weights)
    configured = sha256_file(weights)
    if recorded != configured:
        # -f: DVC sees a changed evaluate.inception_weights path, not a changed file at the same path.
        raise ValueError(
            f"{directory} was computed with other Inception weights (sha256 {recorded[:12]}) than the "
            f"configured {weights} (sha256 {configured[:12]}): rerun the inception_reference stage "
            "(dvc repro -f inception_reference)"
        )
    if data_manifest_sha256 is not None and meta["data_manifest_sha256"] != data_manifest_sha256:
        raise ValueError(
            f"{directory} was computed from other data (manifest sha256 {meta['data_manifest_sha256'][:12]}) "
            f"than the reference ({data_manifest_sha256[:12]}): rerun the inception_reference stage "
            "(dvc repro inception_reference)"
        )
    return InceptionReference(
        meta=meta, weights=weights,
        test_mu=np.load(directory / "inception_test_mu.npy", allow_pickle=False),
        test_sigma=np.load(directory / "inception_test_sigma.npy", allow_pickle=False),
    )
