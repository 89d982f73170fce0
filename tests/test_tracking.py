"""Tracker, store location and lineage against real MLflow SQLite stores and real git repos."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from ganops.params import Params, flatten, params_hash, parse
from ganops.lineage import lineage_tags
from ganops.tracking import (
    Tracker,
    TrackingError,
    read_run_id,
    repo_root,
    tracking_uri,
    write_run_id,
)

# MLflow 3.17 itself triggers this SQLAlchemy deprecation when it opens a store.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

GIT_ENV = dict(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    # One SQLite store per module: creating one runs MLflow's migrations (about a second).
    return tmp_path_factory.mktemp("store")


@pytest.fixture
def uri(store_dir: Path, monkeypatch) -> str:
    value = f"sqlite:///{store_dir / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", value)
    for name in ("DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    return value


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True,
                         env={**os.environ, **GIT_ENV})
    return out.stdout.strip()


def test_params_metrics_tags_round_trip(uri: str):
    params = parse({"train": {"lr_g": 1e-3}, "data": {"mirrors": ["/m"]}})
    tracker = Tracker.start(run_name="rt", tags={"stage": "train", "git_commit": "abc123"})
    tracker.log_params(params)
    tracker.set_tags({"extra": 7})
    for step in (0, 50, 100):
        tracker.log_metrics({"loss_d": step / 10, "loss_g": -step}, step=step)
    client = mlflow.MlflowClient(uri)
    assert client.get_metric_history(tracker.run_id, "loss_d") == []  # still buffered
    tracker.close()

    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "rt"
    assert client.get_experiment(run.info.experiment_id).name == "ganops"
    assert len(run.data.params) == len(flatten(params))
    assert run.data.params["train.lr_g"] == "0.001"
    assert run.data.params["data.mirrors"] == '["/m"]'
    assert run.data.params["model.conditional"] == "false"
    assert run.data.params["evaluate.max_fid"] == "null"
    assert run.data.params["model.arch"] == "dcgan"
    tags = run.data.tags
    assert (tags["stage"], tags["extra"], tags["dvc_exp_name"]) == ("train", "7", "")
    assert tags["mlflow.source.git.commit"] == "abc123"
    history = client.get_metric_history(tracker.run_id, "loss_d")
    assert [(m.step, m.value) for m in history] == [(0, 0.0), (50, 5.0), (100, 10.0)]
    assert [m.value for m in client.get_metric_history(tracker.run_id, "loss_g")] == [0, -50, -100]


def test_metrics_sent_when_buffer_full(uri: str):
    tracker = Tracker.start(run_name="batch")
    for step in range(501):  # 1002 metrics: one full batch of 1000 goes out on its own
        tracker.log_metrics({"a": step, "b": -step}, step=step)
    client = mlflow.MlflowClient(uri)
    sent = len(client.get_metric_history(tracker.run_id, "a")) + len(
        client.get_metric_history(tracker.run_id, "b"))
    assert sent == 1000
    tracker.flush()
    history = client.get_metric_history(tracker.run_id, "a")
    assert sorted((m.step, m.value) for m in history) == [(s, float(s)) for s in range(501)]
    tracker.close()


def test_log_image_with_steps(uri: str, tmp_path: Path):
    tracker = Tracker.start(run_name="img")
    images = {step: np.arange(28 * 28, dtype=np.uint8).reshape(28, 28) + step for step in (0, 5)}
    for step, image in images.items():
        tracker.log_image(image, key="samples", step=step)
    with pytest.raises(ValueError, match="uint8"):
        tracker.log_image(np.zeros((28, 28), np.float32), key="samples", step=1)
    tracker.close()

    client = mlflow.MlflowClient(uri)
    pngs = [a.path for a in client.list_artifacts(tracker.run_id, "images") if a.path.endswith(".png")]
    assert sorted(p.split("+")[2] for p in pngs) == ["0", "5"]
    for path in pngs:
        assert Path(path).name.startswith("samples+step+")
        step = int(path.split("+")[2])
        local = client.download_artifacts(tracker.run_id, path, str(tmp_path))
        np.testing.assert_array_equal(np.asarray(Image.open(local)), images[step])


def test_artifacts_land_beside_store_whatever_the_cwd(uri: str, store_dir: Path, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a DVC queue copy is a cwd that gets deleted
    (elsewhere / "report.json").write_text('{"fid": 1.5}')
    (elsewhere / "dir").mkdir()
    (elsewhere / "dir" / "a.txt").write_text("a")
    tracker = Tracker.start(run_name="art")
    tracker.log_artifact(elsewhere / "report.json")
    tracker.log_artifact(elsewhere / "dir", artifact_path="more")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        tracker.log_artifact(elsewhere / "missing.json")
    tracker.close()

    run_dir = store_dir / "mlartifacts" / tracker.run_id / "artifacts"
    assert (run_dir / "report.json").read_text() == '{"fid": 1.5}'
    assert (run_dir / "more" / "a.txt").read_text() == "a"
    assert not (elsewhere / "mlruns").exists()


def test_resume_logs_into_same_run(uri: str):
    first = Tracker.start(run_name="resumed")
    first.log_params({"train.epochs": 5})
    first.log_metrics({"loss": 1.0}, step=1)
    first.close()
    client = mlflow.MlflowClient(uri)
    experiment_id = client.get_run(first.run_id).info.experiment_id
    count = len(client.search_runs([experiment_id]))

    again = Tracker.resume(first.run_id)
    assert again.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "RUNNING"
    again.log_params({"train.epochs": 5, "evaluate.seed": 3})  # identical values are skipped
    with pytest.raises(TrackingError, match="train.epochs"):
        again.log_params({"train.epochs": 6})
    again.log_metrics({"loss": 0.5}, step=2)
    again.set_tags({"fid": "1.0"})
    again.close()

    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train.epochs": "5", "evaluate.seed": "3"}
    assert run.data.tags["fid"] == "1.0"
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "loss")] == [
        (1, 1.0), (2, 0.5)]
    assert len(client.search_runs([experiment_id])) == count


def test_resume_unknown_run_names_store(uri: str):
    with pytest.raises(TrackingError, match="0123456789abcdef.*not found in sqlite"):
        Tracker.resume("0123456789abcdef")


def test_context_manager_marks_failed_runs(uri: str):
    with pytest.raises(RuntimeError, match="boom"):
        with Tracker.start(run_name="crash") as tracker:
            tracker.log_metrics({"loss": 2.0}, step=3)
            raise RuntimeError("boom")
    run = mlflow.MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.metrics == {"loss": 2.0}  # buffered metrics are not lost on a crash


def test_dvc_exp_name_tags_and_names_run(uri: str, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-lark")
    tracker = Tracker.start()
    tracker.close()
    run = mlflow.MlflowClient(uri).get_run(tracker.run_id)
    assert run.data.tags["dvc_exp_name"] == "lucky-lark"
    assert run.info.run_name == "lucky-lark"


def test_tracking_uri_env_wins(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////somewhere/else.db")
    assert tracking_uri() == "sqlite:////somewhere/else.db"


def test_tracking_uri_default_is_repo_root(tmp_path: Path, monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    root = (tmp_path / "repo").resolve()
    (root / ".dvc").mkdir(parents=True)
    (root / "src" / "pkg").mkdir(parents=True)
    monkeypatch.chdir(root / "src" / "pkg")
    assert tracking_uri() == f"sqlite:///{root}/mlflow.db"
    assert tracking_uri().startswith("sqlite:////")  # absolute path

    # A queue copy has its own .dvc/; the path still leads back to the main repo.
    copy = root / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    (copy / ".dvc").mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert repo_root() == root
    assert tracking_uri() == f"sqlite:///{root}/mlflow.db"

    # DVC_ROOT (set by DVC for every stage; the parent repo for queued runs) wins over the path.
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("DVC_ROOT", str(other))
    assert tracking_uri() == f"sqlite:///{other.resolve()}/mlflow.db"


def test_lineage_tags_clean_and_dirty(tmp_path: Path, tiny_prepared: Path, monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "train.py").write_text("print(1)\n")
    (repo / "dvc.lock").write_text("a: 1\n")
    (repo / ".gitignore").write_text("/out\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "init")
    params = Params()

    clean = lineage_tags(manifest_dir=tiny_prepared, params=params, repo_dir=repo)
    assert clean == {
        "git_commit": _git(repo, "rev-parse", "HEAD"),
        "git_dirty": "false",
        "dvc_exp_name": "",
        "data_manifest_sha256": hashlib.sha256((tiny_prepared / "manifest.json").read_bytes()).hexdigest(),
        "params_sha256": params_hash(params),
        "params_sha256_sections": "data,prepare,model,train",
    }
    # DVC rewrites dvc.lock and .gitignore during repro: not a code change.
    (repo / "dvc.lock").write_text("a: 2\n")
    (repo / ".gitignore").write_text("/out\n/more\n")
    assert lineage_tags(manifest_dir=tiny_prepared, params=params, repo_dir=repo)["git_dirty"] == "false"
    (repo / "train.py").write_text("print(2)\n")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-x")
    dirty = lineage_tags(manifest_dir=tiny_prepared, params=params, repo_dir=repo)
    assert (dirty["git_dirty"], dirty["dvc_exp_name"]) == ("true", "exp-x")
    (repo / "train.py").write_text("print(1)\n")
    (repo / "new_module.py").write_text("x = 1\n")
    assert lineage_tags(manifest_dir=tiny_prepared, params=params, repo_dir=repo)["git_dirty"] == "true"

    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    tags = lineage_tags(manifest_dir=tiny_prepared, params=params, repo_dir=outside)
    assert (tags["git_commit"], tags["git_dirty"]) == ("unknown", "unknown")

    with pytest.raises(FileNotFoundError, match="prepare"):
        lineage_tags(manifest_dir=tmp_path / "nothing", params=params, repo_dir=repo)


def test_run_id_file_round_trip(tmp_path: Path, uri: str):
    path = tmp_path / "reports" / "train" / "mlflow_run.json"
    write_run_id(path, "abc")
    assert read_run_id(path) == "abc"
    # The store lies outside any repository here: only its name is written (no machine paths).
    assert json.loads(path.read_text()) == {
        "run_id": "abc", "experiment": "ganops", "tracking_uri": "sqlite:///<outside the repository>/mlflow.db"}
    first = path.read_bytes()
    write_run_id(path, "abc")
    assert path.read_bytes() == first

    with pytest.raises(FileNotFoundError, match=r"missing\.json.*dvc repro train"):
        read_run_id(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"bad\.json"):
        read_run_id(bad)
