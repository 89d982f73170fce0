"""Shared test fixtures: a tiny prepared dataset and a clean, offline environment."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ganops.data.prepared import write_prepared

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("DVC_NO_ANALYTICS", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")


def synthetic_images(n: int, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent 28x28 uint8 images: class k is a bright bar at row 2k+4, plus noise.

    Easy enough for a classifier to learn in a few steps, so metric tests have real structure.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.uint8) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        row = 2 * int(k) + 4
        images[i, row : row + 3, 4:24] = 200 + rng.integers(0, 55, dtype=np.uint8)
    return images, labels


@pytest.fixture
def tiny_prepared(tmp_path: Path) -> Path:
    """A prepared dataset (data/prepared format) with 200 train and 100 test images."""
    directory = tmp_path / "prepared"
    write_prepared(
        directory,
        splits={"train": synthetic_images(200, 0), "test": synthetic_images(100, 1)},
        dataset="synthetic",
        num_classes=10,
        sources={},
    )
    return directory


def pytest_collection_modifyitems(config, items):
    """Files with end-to-end (`slow`) tests run first, the README tour (the longest, minutes) first of all.

    `make test` spreads whole files over the cores (pytest-xdist, in this order): long files started
    early overlap the many short ones, instead of one core running the tour alone at the end.
    Tests keep their order within a file.
    """
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.path.name != "test_readme.py", item.path not in slow))
