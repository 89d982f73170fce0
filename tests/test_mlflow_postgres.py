"""A team's shared MLflow server on PostgreSQL: the pipeline logs its run, images and model into it.

A throwaway PostgreSQL cluster (initdb in a temp dir, run as the `postgres` user when we are root),
`mlflow server` on it with proxied artifacts, and the tiny pipeline's `dvc repro` pointed at the
server with MLFLOW_TRACKING_URI=http://... . Checked through MlflowClient against the server, and
in PostgreSQL itself.
"""
from __future__ import annotations

import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganops.params import flatten, load
from ganops.data.prepared import manifest_hash
from pipeline_repo import background, free_port, make_pipeline_repo, wait_http

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]


def _postgres_bin() -> Path | None:
    """The directory of initdb/pg_ctl/psql: from PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                                                       reverse=True)), None)
    return Path(found).resolve().parent if found else None


PG_BIN = _postgres_bin()
REGISTERED_MODEL = "ganops-generator"


def _as_postgres(args: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; the Debian package's `postgres` user can.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _check(args: list[str], **kwargs) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120,
                            **kwargs)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster on 127.0.0.1:<free port> with an empty `mlflow` database; its port."""
    if PG_BIN is None:
        pytest.skip("needs PostgreSQL's initdb: apt-get install -y postgresql (`make test` installs it when run as root)")
    # Not under pytest's tmp dir: that is private to root (0700) and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="ganops-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
    try:
        _check(_as_postgres([PG_BIN / "initdb", "-D", data, "-A", "trust", "-U", "postgres",
                             "--no-sync"]))
        _check(_as_postgres([PG_BIN / "pg_ctl", "-D", data, "-l", root / "log", "-w", "start", "-o",
                             f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"]))
        try:
            _check([PG_BIN / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "mlflow"])
            yield port
        finally:
            _check(_as_postgres([PG_BIN / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"]))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _psql(port: int, sql: str) -> str:
    return _check([PG_BIN / "psql", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", "mlflow",
                   "-tAc", sql]).strip()


@pytest.fixture(scope="module")
def shared(postgres, tmp_path_factory):
    """`mlflow server` on the cluster, and the tiny pipeline reproduced against it."""
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("mlflow_postgres")
    port, artifacts, log = free_port(), tmp / "artifacts", tmp / "mlflow-server.log"
    url = f"http://127.0.0.1:{port}"
    # Evaluate and export log into the training run, and export registers the model in the server's registry.
    stages = ["evaluate", "export"]
    # new_store: no local mlflow.db, so the test can tell that nothing logged into one.
    repo = make_pipeline_repo(tmp, stages=stages, params_overrides={"export.register": True}, new_store=True)
    env = {**repo.env, "MLFLOW_TRACKING_URI": url,
           # The GenAI job runners are irrelevant here and slow on 2 cores.
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the lock pins psycopg2-binary.
    command = [Path(sys.executable).parent / "mlflow", "server",
               "--backend-store-uri", f"postgresql+psycopg2://postgres@127.0.0.1:{postgres}/mlflow",
               "--artifacts-destination", artifacts,
               "--host", "127.0.0.1", "--port", port, "--workers", "1"]
    with background(command, env=env, log_path=log, cwd=tmp) as server:
        repo.run("dvc repro prepare", env=env)  # needs no server: overlaps with its start-up
        wait_http(f"{url}/health", proc=server, log_path=log, timeout_s=180)
        reproduced = repo.run("dvc repro", env=env)
        yield {"repo": repo, "url": url, "client": MlflowClient(tracking_uri=url), "stages": stages,
               "artifacts": artifacts, "pg_port": postgres, "stdout": reproduced.stdout}


def _run(shared):
    record = json.loads((shared["repo"].path / "reports/train/mlflow_run.json").read_text())
    assert record["tracking_uri"] == shared["url"]
    return shared["client"].get_run(record["run_id"])


def test_run_with_params_metrics_and_lineage_is_on_the_server(shared):
    repo, run = shared["repo"], _run(shared)
    assert run.info.status == "FINISHED"
    params = load(repo.path / "params.yaml")
    assert run.data.params == {k: v if isinstance(v, str) else json.dumps(v)
                               for k, v in flatten(params).items()}
    assert run.data.params["train.max_steps"] == "4"
    history = shared["client"].get_metric_history(run.info.run_id, "loss_d")
    assert [m.step for m in history] == [2, 4]  # log_every 2, max_steps 4
    head = repo.run(["git", "rev-parse", "HEAD"]).stdout.strip()
    assert run.data.tags["git_commit"] == head
    assert run.data.tags["data_manifest_sha256"] == manifest_hash(repo.path / "data/prepared")


def test_sample_images_and_losses_are_server_artifacts(shared, tmp_path):
    client, run = shared["client"], _run(shared)
    run_id = run.info.run_id
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    pngs = [a.path for a in client.list_artifacts(run_id, "images")
            if a.path.startswith("images/samples+step+4+") and a.path.endswith(".png")]
    assert len(pngs) == 1
    logged = np.asarray(Image.open(io.BytesIO(Path(
        client.download_artifacts(run_id, pngs[0], str(tmp_path))).read_bytes())))
    written = np.asarray(Image.open(shared["repo"].path / "reports/train/samples/epoch_001.png"))
    np.testing.assert_array_equal(logged, written)
    losses = Path(client.download_artifacts(run_id, "train/losses.csv", str(tmp_path)))
    assert losses.read_bytes() == (shared["repo"].path / "reports/train/losses.csv").read_bytes()
    # The bytes live under the server's --artifacts-destination, not in the repo.
    stored = {p.name for p in shared["artifacts"].rglob("*") if p.is_file()}
    assert {Path(pngs[0]).name, "losses.csv"} <= stored
    assert not (shared["repo"].path / "mlartifacts").exists()
    assert not (shared["repo"].path / "mlflow.db").exists()


def test_export_registers_the_model_on_the_server(shared):
    client, run = shared["client"], _run(shared)
    (version,) = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
    assert version.version == "1" and version.run_id == run.info.run_id
    sha256 = (shared["repo"].path / "models/generator.onnx.sha256").read_text().split()[0]
    assert version.tags["model_sha256"] == sha256
    assert f"registered {REGISTERED_MODEL} v1" in shared["stdout"]


def test_evaluation_is_logged_into_the_training_run(shared):
    client, run = shared["client"], _run(shared)
    metrics = json.loads((shared["repo"].path / "reports/evaluate/metrics.json").read_text())
    assert run.data.metrics["fid"] == pytest.approx(metrics["fid"], rel=1e-12)
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert any(p.startswith("images/evaluate_samples+step+0+") for p in images), images


def test_the_store_is_postgresql(shared):
    run = _run(shared)
    port = shared["pg_port"]
    assert _psql(port, "select run_uuid from runs") == run.info.run_id
    assert _psql(port, "select value from params where key = 'train.max_steps'") == "4"
