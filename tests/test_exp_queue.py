"""Queued DVC experiments (run in copies under .dvc/tmp/exps) log into the repo root's mlflow.db."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_repo import run_detached_output

VENV_BIN = Path(sys.executable).parent
# MLflow 3.17 itself triggers this SQLAlchemy deprecation when it opens a store.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

# The toy stage: one MLflow run per experiment, plus what the copy looked like from inside.
TOY_SCRIPT = '''
import json, os
import yaml
from ganops.tracking import Tracker, repo_root, tracking_uri

x = yaml.safe_load(open("params.yaml"))["toy"]["x"]
uri = tracking_uri()
dvc_root = os.environ.pop("DVC_ROOT", "")
fallback_root = str(repo_root())  # the path-based detection, without DVC's env var
with Tracker.start(tags={"cwd": os.getcwd(), "dvc_root": dvc_root, "fallback_root": fallback_root,
                         "uri": uri}) as tracker:
    tracker.log_params({"toy.x": x})
    tracker.log_metrics({"y": 2 * x}, step=0)
with open("metrics.json", "w") as f:
    json.dump({"y": 2 * x}, f)
'''

DVC_YAML = f'''stages:
  toy:
    cmd: {sys.executable} toy.py
    deps: [toy.py]
    params: [toy.x]
    metrics:
      - metrics.json:
          cache: false
'''


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV")}
    # DVC spawns its queue worker as plain `dvc` from PATH.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(DVC_NO_ANALYTICS="true", MLFLOW_DISABLE_TELEMETRY="true", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.invalid")
    return env


def _sh(args: list[str], cwd: Path, timeout: float = 120) -> str:
    out = run_detached_output(args, cwd=cwd, env=_env(), timeout=timeout)
    assert out.returncode == 0, f"{args} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.mark.slow
def test_queued_experiments_log_into_root_store(tmp_path: Path):
    import mlflow

    repo = tmp_path / "toy"
    repo.mkdir()
    dvc = str(VENV_BIN / "dvc")
    _sh(["git", "init", "-q", "-b", "main"], repo)
    _sh([dvc, "init", "-q"], repo)
    (repo / "toy.py").write_text(TOY_SCRIPT)
    (repo / "params.yaml").write_text("toy:\n  x: 0\n")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n")
    _sh(["git", "add", "-A"], repo)
    _sh(["git", "commit", "-q", "-m", "toy"], repo)

    _sh([dvc, "exp", "run", "--queue", "-S", "toy.x=1", "--name", "exp-one"], repo)
    _sh([dvc, "exp", "run", "--queue", "-S", "toy.x=2", "--name", "exp-two"], repo)
    try:
        # Starts one queue worker and blocks until every queued experiment is done.
        _sh([dvc, "exp", "run", "--run-all", "-j", "1"], repo, timeout=300)
    finally:
        subprocess.run([dvc, "queue", "stop"], cwd=repo, env=_env(), capture_output=True, timeout=60)

    status = _sh([dvc, "queue", "status"], repo)
    assert "Failed" not in status, status

    db = repo / "mlflow.db"
    assert db.exists(), "queued runs did not create the root store"
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db")), "a store was created in a copy"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("ganops")
    runs = client.search_runs([experiment.experiment_id])
    by_name = {r.data.tags["dvc_exp_name"]: r for r in runs}
    assert sorted(by_name) == ["exp-one", "exp-two"]
    exps_dir = str(repo.resolve() / ".dvc" / "tmp" / "exps")
    for name, x in (("exp-one", 1), ("exp-two", 2)):
        run = by_name[name]
        assert run.info.status == "FINISHED"
        assert run.info.run_name == name
        assert run.data.params == {"toy.x": str(x)}
        assert run.data.metrics == {"y": 2.0 * x}
        # It really ran in a DVC copy, yet both detections found the main repo.
        assert run.data.tags["cwd"].startswith(exps_dir + os.sep)
        assert run.data.tags["dvc_root"] == str(repo.resolve())
        assert run.data.tags["fallback_root"] == str(repo.resolve())
        assert run.data.tags["uri"] == f"sqlite:///{repo.resolve() / 'mlflow.db'}"
        assert run.info.artifact_uri.startswith((repo.resolve() / "mlartifacts").as_uri())

    shown = json.loads(_sh([dvc, "exp", "show", "--json"], repo))
    listed = {
        exp["name"]: exp["data"]["metrics"]["metrics.json"]["data"]["y"]
        for baseline in shown
        for branch in baseline.get("experiments") or []
        for exp in branch["revs"]
    }
    assert listed == {"exp-one": 2, "exp-two": 4}
