"""Experiments: the README's sweep (checked on the README tour's own), and shorter runs after a longer one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_repo import make_pipeline_repo

# MLflow 3.17 itself triggers this SQLAlchemy deprecation when it opens a store.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

SWEEP = ("non_saturating", "hinge")  # the README's: dvc exp run --queue -S 'train.loss=non_saturating,hinge'
METRICS_FILE = "reports/evaluate/metrics.json"
EVAL_METRICS = ("fid", "kid_mean", "precision", "recall", "coverage")
QUEUE_TIMEOUT_S = 900


def _experiments(shown: list[dict]) -> dict[str, dict]:
    """{experiment name: its rev's data} from `dvc exp show --json`."""
    return {
        exp["name"]: exp["data"]
        for baseline in shown
        for branch in baseline.get("experiments") or []
        for exp in branch["revs"]
    }


def check_sweep(repo, names: list[str], plots_dir: Path) -> None:
    """The README's sweep, queued as experiments `names` and finished: each in `dvc exp show` with its
    params and evaluation metrics, its own MLflow run in the repo root's store (although queued runs
    execute in copies), and the two compared by `dvc exp diff` and `dvc plots diff`.

    The README tour runs the sweep as the README says and calls this on it (one sweep for both).
    """
    import mlflow

    shown = _experiments(json.loads(repo.run("dvc exp show --json").stdout))
    assert sorted(names) == sorted(n for n in shown if n in names) and len(names) == 2, (names, sorted(shown))
    exps = {name: shown[name] for name in names}
    loss_of = {name: data["params"]["params.yaml"]["data"]["train"]["loss"] for name, data in exps.items()}
    assert sorted(loss_of.values()) == sorted(SWEEP)
    dvc_metrics = {name: data["metrics"][METRICS_FILE]["data"] for name, data in exps.items()}
    for name, metrics in dvc_metrics.items():
        missing = [m for m in EVAL_METRICS if not isinstance(metrics.get(m), float)]
        assert missing == [], f"{name}: {METRICS_FILE} lacks {missing}: {metrics}"

    client = mlflow.MlflowClient(tracking_uri=repo.tracking_uri)
    experiment = client.get_experiment_by_name("ganops")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("dvc_exp_name") in exps]
    by_exp = {r.data.tags["dvc_exp_name"]: r for r in runs}
    assert sorted(by_exp) == sorted(exps) and len(runs) == 2, [r.data.tags for r in runs]
    for name, run in by_exp.items():
        assert run.info.status == "FINISHED", name
        assert run.data.params["train.loss"] == loss_of[name]
        assert run.data.params["model.z_dim"] == "16"
        history = client.get_metric_history(run.info.run_id, "loss_d")
        assert [m.step for m in history] == [2, 4], f"{name}: loss_d history {history}"
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
        assert any(p.endswith(".png") for p in images), f"{name}: no image artifact, got {images}"
        for m in EVAL_METRICS:
            assert run.data.metrics[m] == pytest.approx(dvc_metrics[name][m], rel=1e-9, abs=1e-12), (name, m)

    # Comparing the two: params/metrics diff, and the plots (sample images as files, offline).
    a, b = sorted(exps)
    diff = json.loads(repo.run(f"dvc exp diff {a} {b} --json").stdout)
    assert diff["params"]["params.yaml"]["train.loss"]["old"] in SWEEP
    assert METRICS_FILE in diff["metrics"]
    repo.run(f"dvc plots diff {a} {b} -o {plots_dir}")
    assert (plots_dir / "index.html").is_file()
    pngs = sorted(p.name for p in plots_dir.rglob("*.png"))
    for rev in (a, b):
        # Each revision's epoch grid and evaluation samples, as image files named by revision.
        assert any(rev in p and "samples" in p and "epoch" in p for p in pngs), (rev, pngs)
        assert any(rev in p and "evaluate" in p for p in pngs), (rev, pngs)


@pytest.mark.slow
def test_shorter_experiments_after_a_longer_run_succeed(tmp_path: Path):
    """What users run after `make repro`: quicker experiments than the default, in the workspace and
    queued. The checkpoint directory is a persisted output, so each inherits the longer run's."""
    # 100 images / batch 16 = 6 steps an epoch; the baseline trains 2 epochs (12 steps).
    repo = make_pipeline_repo(tmp_path, stages=["train"], params_overrides={
        "train.epochs": 2, "train.max_steps": 0, "train.curve_samples": 0})
    repo.run("dvc repro")
    repo.run("git add -A && git commit -q -m baseline")
    ckpt = repo.path / "models" / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir() if p.suffix == ".pt") == ["epoch_001.pt", "epoch_002.pt", "last.pt"]

    one = repo.run("dvc exp run -n one-epoch -S train.epochs=1")
    assert "restarting from epoch_001.pt (step 6)" in one.stdout + one.stderr
    repo.run("dvc exp run --queue -n three-steps -S train.max_steps=3")
    try:
        repo.run("dvc queue start")
        status = repo.wait_for_queue(dvc="dvc", timeout_s=QUEUE_TIMEOUT_S)
    finally:
        repo.run("dvc queue stop", check=False, timeout=60)
    assert "Success" in status and "Failed" not in status, status
    logs = repo.run("dvc queue logs three-steps").stdout
    assert "no epoch snapshot is at or before it: training from scratch" in logs, logs
    assert sorted(_experiments(json.loads(repo.run("dvc exp show --json").stdout))) == ["one-epoch", "three-steps"]
