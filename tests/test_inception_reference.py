"""The inception_reference stage: a stage of its own, so toggling evaluate.inception reruns only it
and evaluate (never train); its statistics, and the errors when they do not fit what evaluate needs."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ganops.metrics import distances, inception
from ganops.fileio import sha256_file
from ganops.metrics.inception_reference import (
    INCEPTION_REFERENCE_JSON, build_inception_reference, load_inception_reference)
from ganops.data.prepared import load_split, manifest_hash
from pipeline_repo import make_pipeline_repo

# MLflow 3.17 itself triggers this SQLAlchemy deprecation when it opens a store.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


class _StandIn(torch.nn.Module):
    """The Inception file's interface ([N, 3, 299, 299] -> [N, 2048, 1, 1]) in a network small enough
    for the enabled path to run through DVC in seconds. The real network is tested with the shipped
    weights (test_evaluation.py, test_metrics.py)."""

    def __init__(self):
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d(8)
        self.fc = torch.nn.Linear(3 * 8 * 8, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1)).reshape(x.shape[0], 2048, 1, 1)


def standin_weights(path: Path, seed: int = 0) -> Path:
    """A TorchScript file evaluate.inception_weights can name; another seed, other weights."""
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.x flags TorchScript as deprecated
        torch.manual_seed(seed)
        torch.jit.script(_StandIn()).save(str(path))
    return path


def _ran(stdout: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w-]+)'", stdout))


def test_disabled_writes_only_a_json_saying_so(tiny_prepared, tmp_path):
    out = tmp_path / "inception_reference"
    # Off, the weights are never read: a path that does not exist is no error.
    meta = build_inception_reference(prepared_dir=tiny_prepared, out_dir=out, inception=False,
                                     inception_weights=str(tmp_path / "absent.pt"))
    assert meta == {"inception": False, "inception_weights_sha256": None, "num_test": 100,
                    "data_manifest_sha256": manifest_hash(tiny_prepared)}
    assert sorted(p.name for p in out.iterdir()) == [INCEPTION_REFERENCE_JSON]
    assert json.loads((out / INCEPTION_REFERENCE_JSON).read_text()) == meta
    with pytest.raises(ValueError, match=r"no Inception statistics: rerun the inception_reference stage "
                                         r"with evaluate.inception: true \(dvc repro inception_reference\)"):
        load_inception_reference(out, inception_weights=str(standin_weights(tmp_path / "w.pt")))


def test_enabled_writes_the_pool3_statistics_of_the_test_set(tiny_prepared, tmp_path):
    weights = standin_weights(tmp_path / "w.pt")
    out = tmp_path / "inception_reference"
    meta = build_inception_reference(prepared_dir=tiny_prepared, out_dir=out, inception=True,
                                     inception_weights=str(weights))
    assert meta == {"inception": True, "inception_weights_sha256": sha256_file(weights), "num_test": 100,
                    "data_manifest_sha256": manifest_hash(tiny_prepared)}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [INCEPTION_REFERENCE_JSON, "inception_test_mu.npy", "inception_test_sigma.npy"])
    ref = load_inception_reference(out, inception_weights=str(weights),
                                   data_manifest_sha256=manifest_hash(tiny_prepared))
    assert ref.meta == meta and ref.weights == weights
    assert ref.test_mu.dtype == ref.test_sigma.dtype == np.float64
    assert ref.test_mu.shape == (2048,) and ref.test_sigma.shape == (2048, 2048)
    test_x, _ = load_split(tiny_prepared, "test")
    mu, sigma = distances.gaussian_stats(inception.InceptionPool3(weights, processes=1).features(test_x))
    np.testing.assert_allclose(ref.test_mu, mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref.test_sigma, sigma, rtol=1e-4, atol=1e-6)

    # Turned off again, the directory is replaced whole: no statistics left behind to be used.
    build_inception_reference(prepared_dir=tiny_prepared, out_dir=out, inception=False)
    assert sorted(p.name for p in out.iterdir()) == [INCEPTION_REFERENCE_JSON]


def test_statistics_that_do_not_fit_are_clear_errors(tiny_prepared, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run the inception_reference stage first "
                                                r"\(dvc repro inception_reference\)"):
        load_inception_reference(tmp_path / "absent")
    made_with, configured = standin_weights(tmp_path / "a.pt", 0), standin_weights(tmp_path / "b.pt", 1)
    out = tmp_path / "inception_reference"
    build_inception_reference(prepared_dir=tiny_prepared, out_dir=out, inception=True,
                              inception_weights=str(made_with))
    # Names both: the weights the statistics were made with and the configured ones.
    pattern = (rf"other Inception weights \(sha256 {sha256_file(made_with)[:12]}\) than the configured "
               rf"{re.escape(str(configured))} \(sha256 {sha256_file(configured)[:12]}\): rerun the "
               r"inception_reference stage \(dvc repro -f inception_reference\)")
    with pytest.raises(ValueError, match=pattern):
        load_inception_reference(out, inception_weights=str(configured))
    with pytest.raises(ValueError, match=r"from other data .* \(dvc repro inception_reference\)"):
        load_inception_reference(out, inception_weights=str(made_with), data_manifest_sha256="0" * 64)


@pytest.mark.slow
def test_toggling_evaluate_inception_reruns_only_inception_reference_and_evaluate(tmp_path: Path):
    """The issue's user: a trained model, then Inception FID turned on. DVC must not retrain it."""
    repo = make_pipeline_repo(tmp_path, stages=["evaluate"])
    first = repo.run("dvc repro")
    assert _ran(first.stdout) == {"download", "prepare", "classifier", "reference", "inception_reference",
                                  "train", "evaluate"}, first.stdout
    off = json.loads((repo.path / "data/inception_reference" / INCEPTION_REFERENCE_JSON).read_text())
    assert off["inception"] is False and off["inception_weights_sha256"] is None
    assert "fid_inception" not in json.loads((repo.path / "reports/evaluate/metrics.json").read_text())
    repo.run("git add -A && git commit -q -m baseline")

    weights = standin_weights(tmp_path / "inception.pt")
    params = yaml.safe_load((repo.path / "params.yaml").read_text())
    params["evaluate"].update(inception=True, inception_weights=str(weights))
    (repo.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(repo.run("dvc status --json").stdout)
    assert set(status) == {"inception_reference", "evaluate"}, status

    again = repo.run("dvc repro")
    assert _ran(again.stdout) == {"inception_reference", "evaluate"}, again.stdout
    assert "Stage 'train' didn't change, skipping" in again.stdout, again.stdout
    on = json.loads((repo.path / "data/inception_reference" / INCEPTION_REFERENCE_JSON).read_text())
    assert on["inception_weights_sha256"] == sha256_file(weights) and on["num_test"] == 100
    metrics = json.loads((repo.path / "reports/evaluate/metrics.json").read_text())
    assert metrics["fid_inception"] > 0 and np.isfinite(metrics["fid_inception"])
    assert "Data and pipelines are up to date" in repo.run("dvc status").stdout
