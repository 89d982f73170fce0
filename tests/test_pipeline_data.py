"""End to end: `dvc repro` of the download and prepare stages in a fresh git+dvc repo, on IDX files."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from conftest import REPO, synthetic_images
from ganops.data.idx import encode
from ganops.data.prepared import load_split

STAGES = ("download", "prepare")


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="true", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    # the stages' `python` must be this interpreter (the venv with ganops installed)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def make_repo(root: Path, idx_dir: Path) -> None:
    """A git+dvc repo holding the two stages, their deps, and params.yaml set to dataset idx."""
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = {name: pipeline["stages"][name] for name in STAGES}
    outs = {out for stage in stages.values() for out in stage["outs"]}
    for stage in stages.values():
        for dep in stage["deps"]:
            if dep not in outs:  # code deps: copied so DVC can hash them (the code run is installed)
                (root / dep).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / dep, root / dep)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(dataset="idx", idx_dir=str(idx_dir))
    params["prepare"].update(subset=50, seed=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")


def test_dvc_repro_download_and_prepare(tmp_path):
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    train, test = synthetic_images(200, 0), synthetic_images(100, 1)
    (idx_dir / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(encode(train[0]), mtime=0))
    (idx_dir / "train-labels-idx1-ubyte").write_bytes(encode(train[1]))
    (idx_dir / "t10k-images-idx3-ubyte").write_bytes(encode(test[0]))
    (idx_dir / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(encode(test[1]), mtime=0))
    root = tmp_path / "repo"
    root.mkdir()
    make_repo(root, idx_dir)

    first = run([sys.executable, "-m", "dvc", "repro"], root)
    assert "download: wrote data/raw (idx, 4 files, 0.2 MB decompressed, verified by none)" in first.stdout
    assert "prepare: wrote data/prepared (idx, 50 train / 100 test images, 10 classes)" in first.stdout

    manifest = json.loads((root / "data/prepared/manifest.json").read_text())
    assert manifest["dataset"] == "idx" and manifest["num_classes"] == 10
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
        "data.dataset": "idx", "data.idx_dir": str(idx_dir)
    }
    assert lock["stages"]["prepare"]["params"]["params.yaml"]["prepare"] == {"subset": 50, "seed": 1}
    for name in STAGES:
        (out,) = lock["stages"][name]["outs"]
        assert out["md5"].endswith(".dir") and out["nfiles"] == 5

    second = run([sys.executable, "-m", "dvc", "repro"], root)
    assert "Stage 'download' didn't change, skipping" in second.stdout
    assert "Stage 'prepare' didn't change, skipping" in second.stdout
    assert "wrote" not in second.stdout
    assert yaml.safe_load((root / "dvc.lock").read_text()) == lock
