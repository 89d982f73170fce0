"""Honest lineage: what params_sha256 covers, run files without machine paths, readable run names,
and stages after training that carry on into a new MLflow run when the training run is gone."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml

from ganops.params import LINEAGE_SECTIONS, params_hash, parse
from ganops.lineage import model_lineage_tags
from ganops.tracking import (
    Tracker,
    TrackingError,
    find_run,
    run_name,
    store_description,
    write_run_id,
)
from pipeline_repo import make_pipeline_repo, migrated_store

# MLflow 3.17 itself triggers this SQLAlchemy deprecation when it opens a store.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


@pytest.fixture
def uri(tmp_path: Path, monkeypatch) -> str:
    (tmp_path / "store").mkdir()
    shutil.copy(migrated_store(), tmp_path / "store" / "mlflow.db")
    value = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", value)
    for name in ("DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    return value


# --- params_sha256 ------------------------------------------------------------------------------


def test_params_hash_covers_the_sections_that_shape_the_model_and_only_them():
    assert LINEAGE_SECTIONS == ("data", "prepare", "model", "train")
    base = params_hash(parse({}))
    elsewhere = {"serve": {"port": 9000}, "evaluate": {"seed": 7}, "export": {"parity_seeds": 8},
                 "classifier": {"epochs": 1}}
    for section, change in elsewhere.items():
        assert params_hash(parse({section: change})) == base, section
    shaping = {"data": {"dataset": "mnist"}, "prepare": {"subset": 100}, "model": {"width": 32},
               "train": {"lr_g": 5e-4}}  # not the default (1e-3)
    hashes = {section: params_hash(parse({section: change})) for section, change in shaping.items()}
    assert base not in hashes.values() and len(set(hashes.values())) == len(shaping)
    # Another choice of sections is another hash; a section that does not exist is an error.
    assert params_hash(parse({}), ("evaluate",)) != params_hash(parse({"evaluate": {"seed": 7}}), ("evaluate",))
    with pytest.raises(ValueError, match="nonsense"):
        params_hash(parse({}), ("train", "nonsense"))
    with pytest.raises(ValueError, match="non-empty"):
        params_hash(parse({}), ())


# --- no machine paths in tracked files ----------------------------------------------------------


def test_run_file_is_the_same_bytes_wherever_the_repository_lies(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    files = []
    for where in ("a/checkout", "b/elsewhere/checkout"):
        root = tmp_path / where
        (root / ".dvc").mkdir(parents=True)
        monkeypatch.setenv("DVC_ROOT", str(root))  # as DVC sets it for a stage
        write_run_id(root / "mlflow_run.json", "0123abcd")
        files.append((root / "mlflow_run.json").read_bytes())
    assert files[0] == files[1]
    assert json.loads(files[0]) == {"run_id": "0123abcd", "experiment": "ganops",
                                    "tracking_uri": "sqlite:///mlflow.db"}


def test_store_description_keeps_servers_and_drops_paths_and_passwords(tmp_path: Path, monkeypatch):
    root = tmp_path / "repo"
    (root / ".dvc").mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(root))
    assert store_description(f"sqlite:///{root}/mlflow.db") == "sqlite:///mlflow.db"
    assert store_description(f"sqlite:///{root}/sub/x.db") == "sqlite:///sub/x.db"
    assert store_description("sqlite:////srv/shared/runs.db") == "sqlite:///<outside the repository>/runs.db"
    assert store_description("sqlite:///relative.db") == "sqlite:///relative.db"
    assert store_description("http://mlflow-host:5000") == "http://mlflow-host:5000"
    assert (store_description("postgresql+psycopg2://ml:s3cret@db:5432/mlflow")
            == "postgresql+psycopg2://ml@db:5432/mlflow")


# --- run names -------------------------------------------------------------------------------------


def test_run_names_say_what_the_run_trains(monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert run_name(parse({})) == "dcgan-non_saturating-5ep"
    assert run_name(parse({"model": {"arch": "mlp", "conditional": True},
                           "train": {"loss": "hinge", "max_steps": 40}})) == "mlp-conditional-hinge-40steps"
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-lark")  # DVC sets it for `dvc exp run`, queued or not
    assert run_name(parse({})) == "lucky-lark"


def test_start_uses_the_run_name(uri: str):
    tracker = Tracker.start(run_name=run_name(parse({"train": {"epochs": 2}})), tags={})
    tracker.close()
    assert mlflow.MlflowClient(uri).get_run(tracker.run_id).info.run_name == "dcgan-non_saturating-2ep"


# --- stages after training: the training run, or a new run that names it -------------------------


def test_for_stage_resumes_the_training_run_when_the_store_has_it(uri: str, capsys):
    training = Tracker.start(run_name="train", tags={})
    training.close()
    assert find_run(training.run_id)
    with Tracker.for_stage(training.run_id, stage="evaluate", tags={"git_commit": "abc"}) as tracker:
        tracker.log_metrics({"fid": 12.5}, step=0)
    assert tracker.run_id == training.run_id
    run = mlflow.MlflowClient(uri).get_run(training.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics == {"fid": 12.5}
    assert "train_run_id" not in run.data.tags
    assert capsys.readouterr().err == ""


def test_for_stage_carries_on_in_a_new_run_when_the_training_run_is_gone(uri: str, capsys):
    gone = "0123456789abcdef0123456789abcdef"
    assert not find_run(gone)
    lineage = model_lineage_tags({"lineage": {"git_commit": "abc", "params_sha256": "p" * 64,
                                              "mlflow_run_id": gone}})
    assert lineage == {"git_commit": "abc", "params_sha256": "p" * 64}
    with Tracker.for_stage(gone, stage="export", tags=lineage) as tracker:
        tracker.log_metrics({"export.size_bytes": 10.0}, step=0)
    assert tracker.run_id != gone
    run = mlflow.MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run-01234567-export"
    tags = run.data.tags
    assert (tags["train_run_id"], tags["stage"], tags["git_commit"]) == (gone, "export", "abc")
    assert run.data.metrics == {"export.size_bytes": 10.0}
    err = capsys.readouterr().err
    assert f"export: MLflow run {gone} of the training is not in sqlite:///" in err
    assert f"new run {tracker.run_id}, tagged train_run_id={gone}" in err


def test_a_deleted_training_run_is_gone_too_and_a_deleted_experiment_is_an_error(uri: str):
    client = mlflow.MlflowClient(uri)
    training = Tracker.start(run_name="train", tags={})
    training.close()
    client.delete_run(training.run_id)
    assert not find_run(training.run_id)  # MLflow refuses to log into a deleted run
    client.delete_experiment(client.get_experiment_by_name("ganops").experiment_id)
    with pytest.raises(TrackingError, match="is deleted: restore it"):
        find_run(training.run_id)


@pytest.mark.slow
def test_evaluate_and_export_carry_on_when_mlflow_db_is_gone(tmp_path: Path):
    """The issue's user: models from `dvc pull` but no git-ignored mlflow.db, then a param change."""
    repo = make_pipeline_repo(tmp_path, stages=["evaluate", "export"])
    repo.run("dvc repro")
    record = json.loads((repo.path / "reports/train/mlflow_run.json").read_text())
    train_run_id = record["run_id"]
    assert record == {"run_id": train_run_id, "experiment": "ganops", "tracking_uri": "sqlite:///mlflow.db"}
    # Nothing a user would commit after the run names where the repository lies (the params name
    # data.idx_dir, outside it: that path is the user's own setting).
    to_commit = repo.run("git ls-files -z -mo --exclude-standard").stdout.split("\0")
    assert "reports/train/mlflow_run.json" in to_commit and "dvc.lock" in to_commit
    with_paths = [f for f in filter(None, to_commit) if str(repo.path).encode() in (repo.path / f).read_bytes()]
    assert with_paths == [], f"files to commit that hold {repo.path}: {with_paths}"

    (repo.path / "mlflow.db").unlink()
    shutil.rmtree(repo.path / "mlartifacts", ignore_errors=True)
    params = yaml.safe_load((repo.path / "params.yaml").read_text())
    params["evaluate"]["seed"] += 1
    params["export"]["parity_seeds"] += 1
    (repo.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = repo.run("dvc repro")

    assert "Running stage 'evaluate'" in again.stdout and "Running stage 'export'" in again.stdout
    assert "Running stage 'train'" not in again.stdout
    for stage in ("evaluate", "export"):
        assert (f"{stage}: MLflow run {train_run_id} of the training is not in sqlite:///mlflow.db"
                in again.stderr), again.stderr
    client = mlflow.MlflowClient(repo.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("ganops").experiment_id])
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert sorted(by_stage) == ["evaluate", "export"] and len(runs) == 2
    metrics = json.loads((repo.path / "reports/evaluate/metrics.json").read_text())
    assert by_stage["evaluate"].data.metrics["fid"] == metrics["fid"]
    export_run = by_stage["export"]
    assert all(r.data.tags["train_run_id"] == train_run_id for r in runs)
    assert export_run.data.tags["params_sha256"] == json.loads(
        (repo.path / "models/gan/generator.json").read_text())["lineage"]["params_sha256"]
    report = json.loads((repo.path / "reports/export.json").read_text())
    assert "mlflow_run_id" not in report["metadata"]  # not inside the model: its bytes depend on the weights only
    run_file = json.loads((repo.path / "models/generator.onnx.run.json").read_text())
    assert run_file["mlflow_run_id"] == report["mlflow_run_id"] == train_run_id  # still names its training
    assert run_file["model_run_id"] == export_run.info.run_id
    (version,) = client.search_model_versions("name='ganops-generator'")
    assert version.run_id == export_run.info.run_id and report["registered_version"] == int(version.version)
