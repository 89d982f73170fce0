"""End to end: `dvc repro` of the download and prepare stages in a fresh git+dvc repo, on IDX files."""
from __future__ import annotations

import json

import numpy as np
import yaml

from conftest import synthetic_images
from ganops.data.prepared import load_split
from pipeline_repo import make_pipeline_repo

STAGES = ("download", "prepare")


def test_dvc_repro_download_and_prepare(tmp_path):
    repo = make_pipeline_repo(tmp_path, stages=["prepare"], params_overrides={"prepare.subset": 50, "prepare.seed": 1})
    root, idx_dir, test = repo.path, repo.idx_dir, synthetic_images(100, 1)

    first = repo.run("dvc repro")
    assert "download: wrote data/raw (idx, 4 files, 0.2 MB decompressed, verified by none)" in first.stdout
    assert "prepare: wrote data/prepared (idx, 50 train / 100 test images of 28x28x1, 10 classes)" in first.stdout

    manifest = json.loads((root / "data/prepared/manifest.json").read_text())
    assert manifest["dataset"] == "idx" and manifest["num_classes"] == 10
    assert (manifest["resolution"], manifest["channels"]) == (28, 1)
    assert manifest["train"]["class_histogram"] == [5] * 10
    assert manifest["test"]["count"] == 100
    images, labels = load_split(root / "data/prepared", "test")
    np.testing.assert_array_equal(images, test[0])
    np.testing.assert_array_equal(labels, test[1])
    sources = json.loads((root / "data/raw/sources.json").read_text())
    assert sources["files"]["train-images-idx3-ubyte"]["source"] == str(idx_dir / "train-images-idx3-ubyte.gz")

    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    assert lock["stages"]["download"]["params"]["params.yaml"] == {
        "data.dataset": "idx", "data.idx_dir": str(idx_dir), "data.folder": "data/images",
    }
    assert lock["stages"]["prepare"]["params"]["params.yaml"]["prepare"] == {
        "subset": 50, "seed": 1, "resolution": 28, "channels": 1, "transform": "pad", "resample": "lanczos",
        "background": "black", "test_fraction": 0.1,
    }
    for name in STAGES:
        (out,) = lock["stages"][name]["outs"]
        assert out["md5"].endswith(".dir") and out["nfiles"] == 5

    second = repo.run("dvc repro")
    assert "Stage 'download' didn't change, skipping" in second.stdout
    assert "Stage 'prepare' didn't change, skipping" in second.stdout
    assert "wrote" not in second.stdout
    assert yaml.safe_load((root / "dvc.lock").read_text()) == lock
