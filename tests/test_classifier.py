"""The classifier stage's network: deterministic training, save/load round trip, features."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import synthetic_images
from ganops.metrics.classifier import (
    ARCH_VERSION,
    WEIGHTS_FILE,
    extract,
    load_classifier,
    rotate,
    to_input,
    train_classifier,
)
from ganops.metrics.reference import build_reference
from ganops.data.prepared import load_split, write_prepared


def _train(prepared, out, seed=0, max_steps=0):
    return train_classifier(
        prepared_dir=prepared, model_dir=out / "model", report_path=out / "report.json",
        seed=seed, epochs=4, batch_size=32, lr=3e-3, width=8, feature_dim=16, max_steps=max_steps,
    )


def test_training_is_deterministic_and_learns_the_classes(tiny_prepared, tmp_path):
    a = _train(tiny_prepared, tmp_path / "a")
    b = _train(tiny_prepared, tmp_path / "b")
    c = _train(tiny_prepared, tmp_path / "c", seed=1, max_steps=2)
    assert a == b  # same seed: same weights, so the same feature_extractor_version
    assert a["feature_extractor_version"] != c["feature_extractor_version"]
    assert a["feature_extractor_version"].startswith(ARCH_VERSION + "-")
    weights = [(tmp_path / run / "model" / WEIGHTS_FILE).read_bytes() for run in ("a", "b")]
    assert weights[0] == weights[1]  # byte-identical files: DVC caches them once
    assert a["test_accuracy"] >= 0.9  # the synthetic classes are one bright bar each
    report = json.loads((tmp_path / "a/report.json").read_text())
    assert report == {k: a[k] for k in ("test_accuracy", "min_class_accuracy", "train_steps")}
    assert report["train_steps"] == 4 * 7  # 200 images in batches of 32
    assert not torch.are_deterministic_algorithms_enabled()  # the global flag is restored


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(prepared dir, output dir, report) of one tiny classifier shared by the read-only tests."""
    root = tmp_path_factory.mktemp("classifier")
    splits = {"train": synthetic_images(200, 0), "test": synthetic_images(100, 1)}
    write_prepared(root / "prepared", splits=splits, dataset="synthetic", num_classes=10, sources={})
    return root / "prepared", root, _train(root / "prepared", root)


def test_saved_classifier_rebuilds_without_training_code(trained):
    prepared, out, report = trained
    model, meta = load_classifier(out / "model")
    assert meta["config"] == {"num_classes": 10, "width": 8, "feature_dim": 16, "resolution": 28, "channels": 1,
                              "task": "classes"}
    assert meta["feature_extractor_version"] == report["feature_extractor_version"]
    assert meta["data_manifest_sha256"] and meta["dataset"] == "synthetic"
    images, labels = load_split(prepared, "test")
    features, predicted = extract(model, images, batch_size=30)
    assert features.shape == (100, 16) and features.dtype == np.float32
    assert (predicted == labels).mean() == pytest.approx(report["test_accuracy"])
    again, _ = extract(model, images, batch_size=100)  # batching does not change the features
    np.testing.assert_allclose(features, again, rtol=1e-5, atol=1e-6)


def test_corrupt_or_missing_classifier_is_a_clear_error(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro classifier"):
        load_classifier(tmp_path / "nowhere")
    shutil.copytree(trained[1] / "model", tmp_path / "model")
    state = torch.load(tmp_path / "model" / WEIGHTS_FILE, weights_only=True)
    state["head.bias"] += 1.0
    torch.save(state, tmp_path / "model" / WEIGHTS_FILE)
    with pytest.raises(ValueError, match="does not match the weights_sha256"):
        load_classifier(tmp_path / "model")


def test_bad_params_are_rejected(tiny_prepared, tmp_path):
    with pytest.raises(ValueError, match="classifier section of params.yaml"):
        train_classifier(prepared_dir=tiny_prepared, model_dir=tmp_path / "m", report_path=tmp_path / "r",
                         seed=0, epochs=0, batch_size=32, lr=1e-3, width=8, feature_dim=16)


def _upright_shapes(n: int, seed: int, channels: int = 1) -> np.ndarray:
    """Noise with a bright block hanging from the top edge, left of centre: any turn of it shows."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 50, size=(n, 28, 28, 3) if channels == 3 else (n, 28, 28), dtype=np.uint8)
    for i in range(n):
        images[i, : rng.integers(6, 12), rng.integers(2, 6) : rng.integers(10, 14)] = 230
    return images


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("unlabelled")
    splits = {split: (_upright_shapes(n, seed, channels=3), np.zeros(n, np.uint8))
              for split, n, seed in (("train", 240, 0), ("test", 100, 1))}
    write_prepared(root / "prepared", splits=splits, dataset="folder", num_classes=1, sources={},
                   extra={"labelled": False, "classes": None, "resolution": 28, "channels": 3})
    return root / "prepared"


def test_rotate_turns_each_image_like_numpy(unlabelled):
    images, _ = load_split(unlabelled, "test")
    k = torch.tensor([0, 1, 2, 3, 1])
    turned = rotate(to_input(images[:5]), k)
    for i, quarter in enumerate(k.tolist()):
        np.testing.assert_array_equal(turned[i].numpy(), to_input(np.rot90(images[i : i + 1], quarter, axes=(1, 2)))[0].numpy())


def test_an_unlabelled_set_trains_the_rotation_task_deterministically(unlabelled, tmp_path):
    a = _train(unlabelled, tmp_path / "a")
    b = _train(unlabelled, tmp_path / "b")
    assert a == b and a["task"] == "rotation"
    assert a["feature_extractor_version"].startswith(ARCH_VERSION + "-rotation-")  # never mixed with class features
    report = json.loads((tmp_path / "a/report.json").read_text())
    assert set(report) == {"rotation_accuracy", "min_rotation_accuracy", "train_steps"}
    assert report["rotation_accuracy"] >= 0.9 and report["min_rotation_accuracy"] >= 0.75  # chance: 0.25
    model, meta = load_classifier(tmp_path / "a" / "model")
    assert (meta["config"]["task"], meta["config"]["num_classes"], meta["config"]["channels"]) == ("rotation", 4, 3)
    # Upright real images are seen as upright; their features feed the reference like class features do.
    images, _ = load_split(unlabelled, "test")
    _, predicted = extract(model, images)
    assert (predicted == 0).mean() >= 0.9
    ref = build_reference(prepared_dir=unlabelled, classifier_dir=tmp_path / "a" / "model", out_dir=tmp_path / "ref")
    assert ref["labelled"] is False and ref["num_classes"] == 1 and ref["class_histogram"] == [100]


def test_a_classifier_of_the_other_task_is_refused_by_the_reference(unlabelled, trained, tmp_path):
    labelled_prepared, out, _ = trained
    with pytest.raises(ValueError, match=r"labelled: False\) is not the data .* \(classes, 10 outputs\): rerun the classifier"):
        build_reference(prepared_dir=unlabelled, classifier_dir=out / "model", out_dir=tmp_path / "ref")
    assert not (tmp_path / "ref").exists()
