"""Test helper: a tiny, fast copy of the whole DVC pipeline in a fresh git+dvc repo in a temp dir.

    from pipeline_repo import make_pipeline_repo

    repo = make_pipeline_repo(tmp_path, stages=["train"], params_overrides={"train.max_steps": 2})
    out = repo.run("dvc repro")          # a string runs in bash (README lines verbatim)
    repo.run(["dvc", "status"])          # a list runs without a shell
    repo.path / "models/gan"             # the repo root

The copy holds `stages/`, the library files the chosen stages list as deps (DVC hashes them; the
code actually run is the installed `ganops` package), `dvc.yaml` reduced to the chosen stages and
their upstream, `params.yaml` with TINY_PARAMS and the overrides, `.dvc/config`, and a synthetic
IDX dataset (200 train / 100 test images, class-structured) outside the repo. The first commit is
made. Commands run with this interpreter's bin directory first on PATH (stage commands call
`python`, DVC's queue calls `dvc`), telemetry off, and MLflow logging into the repo's own
`mlflow.db`.
"""
from __future__ import annotations

import atexit
import functools
import gzip
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from conftest import REPO, synthetic_images
from ganops.data.idx import encode
from ganops.params import parse

# Seconds, not minutes: every stage does the least that still exercises it end to end.
TINY_PARAMS: dict[str, object] = {
    "prepare.subset": 100,
    "prepare.seed": 0,
    "model.width": 8,
    "model.z_dim": 16,
    "train.epochs": 1,
    "train.batch_size": 16,
    "train.max_steps": 4,
    "train.log_every": 2,
    "train.checkpoint_every": 4,
    "classifier.epochs": 1,
    "classifier.batch_size": 50,
    "classifier.width": 8,
    "classifier.feature_dim": 32,
    "evaluate.num_samples": 100,
    "evaluate.batch_size": 50,
    "evaluate.kid_subsets": 2,
    "evaluate.kid_subset_size": 50,
    "evaluate.nearest_k": 3,
    "export.parity_seeds": 8,
}

# Inherited variables that would redirect the copy's DVC/MLflow into the caller's repo or store.
_DROPPED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "DVC_ROOT",
                "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE", "GIT_DIR", "GIT_WORK_TREE")


def run_detached_output(args: list[str], *, cwd: Path, env: dict[str, str],
                        timeout: float) -> subprocess.CompletedProcess:
    """subprocess.run with stdout/stderr in temp files, not pipes.

    `dvc queue start` leaves worker processes that inherit the output; with pipes, reading to EOF
    would wait for those workers to exit, not for the command itself.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.run(args, cwd=cwd, env=env, stdout=out, stderr=err, timeout=timeout)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, proc.returncode, out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))


@dataclass
class PipelineRepo:
    """A temp git+dvc repo holding the pipeline; `run` executes commands in it with `env`."""

    path: Path
    env: dict[str, str] = field(repr=False)
    idx_dir: Path

    def run(self, cmd: str | list[str], *, check: bool = True, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `cmd` in the repo (a string through bash); with `check`, fail showing its output.

        `env` adds to / overrides the repo's environment for this command only.
        """
        full_env = {**self.env, **(env or {})}
        args = ["bash", "-c", cmd] if isinstance(cmd, str) else [str(a) for a in cmd]
        result = run_detached_output(args, cwd=self.path, env=full_env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{cmd!r} exited {result.returncode} in {self.path}:\n"
                                 f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
        return result

    @property
    def tracking_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    def wait_for_queue(self, *, dvc: str = "dvc", timeout_s: float = 900, poll_s: float = 2) -> str:
        """Poll `dvc queue status` until nothing is queued or running; return the last table."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.run(f"{dvc} queue status").stdout
            if not any(word in status for word in ("Queued", "Running")):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"the queue did not finish within {timeout_s}s:\n{status}")
            time.sleep(poll_s)


def write_synthetic_idx(directory: Path, *, n_train: int = 200, n_test: int = 100) -> Path:
    """The four IDX files of a dataset (`data.dataset: idx`) from conftest.synthetic_images.

    Two are gzipped and two are not, as both spellings are accepted by the download stage.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (train_x, train_y), (test_x, test_y) = synthetic_images(n_train, 0), synthetic_images(n_test, 1)
    (directory / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(encode(train_x), mtime=0))
    (directory / "train-labels-idx1-ubyte").write_bytes(encode(train_y))
    (directory / "t10k-images-idx3-ubyte").write_bytes(encode(test_x))
    (directory / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(encode(test_y), mtime=0))
    return directory


def stage_outputs(stage: dict) -> list[str]:
    """Paths a dvc.yaml stage writes: outs, metrics and plots (each a str or a one-key dict)."""
    paths = []
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            paths.append(entry if isinstance(entry, str) else next(iter(entry)))
    return paths


def _with_upstream(pipeline: dict, names: list[str]) -> list[str]:
    """`names` plus every stage whose outputs they (transitively) depend on, in dvc.yaml order."""
    unknown = [n for n in names if n not in pipeline]
    if unknown:
        raise ValueError(f"no stage {unknown} in {REPO / 'dvc.yaml'}: choose from {list(pipeline)}")
    producer = {p: name for name, stage in pipeline.items() for p in stage_outputs(stage)}
    wanted, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            for dep in pipeline[name].get("deps", []):
                out = _produced_by(dep, producer)
                if out is not None:
                    todo.append(producer[out])
    return [name for name in pipeline if name in wanted]


def _produced_by(dep: str, outputs) -> str | None:
    """The output `dep` is, or lies inside (promote reads data/reference/reference.json); else None."""
    return next((out for out in outputs if dep == out or dep.startswith(out.rstrip("/") + "/")), None)


def _set(params: dict, dotted: str, value: object) -> None:
    section, _, key = dotted.partition(".")
    if section not in params or not key:
        raise ValueError(f"params override {dotted!r}: want 'section.key' with a section of params.yaml")
    params[section][key] = value


@functools.cache
def migrated_store() -> Path:
    """An empty SQLite MLflow store, made once per test process: creating one runs MLflow's
    migrations (3 s or more on 2 cores), so tests copy this one instead."""
    from mlflow import MlflowClient

    directory = Path(tempfile.mkdtemp(prefix="ganops-test-store-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    MlflowClient(f"sqlite:///{directory / 'mlflow.db'}").search_experiments()
    return directory / "mlflow.db"


def make_pipeline_repo(tmp_path: Path, *, stages: list[str] | None = None,
                       params_overrides: dict[str, object] | None = None,
                       new_store: bool = False) -> PipelineRepo:
    """Build the tiny pipeline repo at `tmp_path/repo` (IDX data at `tmp_path/idx`) and commit it.

    stages: run only these and their upstream (e.g. ["train"] -> download, prepare, train);
        None keeps every stage of dvc.yaml. A stage whose code is missing raises ValueError.
    params_overrides: {"train.max_steps": 8, ...} applied after TINY_PARAMS; checked by
        ganops.params.parse, so an unknown key fails here rather than in a stage.
    new_store: leave mlflow.db to the first stage that logs, as on a new user's machine; by default
        the repo starts with a copy of `migrated_store()` (git-ignored, as the real one is).
    """
    tmp_path = Path(tmp_path)
    root, idx_dir = tmp_path / "repo", write_synthetic_idx(tmp_path / "idx")
    root.mkdir()
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    names = _with_upstream(pipeline["stages"], stages) if stages is not None else list(pipeline["stages"])
    kept = {name: pipeline["stages"][name] for name in names}
    produced = {p for stage in kept.values() for p in stage_outputs(stage)}

    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    for name, stage in kept.items():
        for dep in stage.get("deps", []):
            if _produced_by(dep, produced) is not None or dep.startswith("${"):  # ${data.folder}: copied below
                continue
            if not (REPO / dep).exists():
                raise ValueError(f"dvc.yaml's stage {name!r} lists {REPO / dep}, which does not exist: "
                                 "fix its deps (tests/test_stage_deps.py says which)")
            if not (root / dep).exists():
                (root / dep).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / dep, root / dep)
    # Top-level metrics/plots only for files the kept stages write (others would only warn).
    reduced: dict = {}
    for key in ("metrics", "plots"):
        entries = [e for e in pipeline.get(key, [])
                   if (e if isinstance(e, str) else next(iter(e))) in produced]
        if entries:
            reduced[key] = entries
    reduced["stages"] = kept
    (root / "dvc.yaml").write_text(yaml.safe_dump(reduced, sort_keys=False))

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    _set(params, "data.dataset", "idx")
    _set(params, "data.idx_dir", str(idx_dir))
    for dotted, value in {**TINY_PARAMS, **(params_overrides or {})}.items():
        _set(params, dotted, value)
    parse(params)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not (root / "data" / "images").exists():  # the default data.folder, a dep of download
        shutil.copytree(REPO / "data" / "images", root / "data" / "images")
    (root / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n/mlruns/\n__pycache__/\n")
    if not new_store:
        shutil.copy(migrated_store(), root / "mlflow.db")

    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        DVC_NO_ANALYTICS="true", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        GIT_AUTHOR_NAME="ganops-test", GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="ganops-test", GIT_COMMITTER_EMAIL="test@example.invalid",
    )
    repo = PipelineRepo(path=root, env=env, idx_dir=idx_dir)
    repo.run(["git", "init", "-q", "-b", "main"])
    repo.run(["dvc", "init", "-q"])
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    repo.run(["git", "add", "-A"])
    repo.run(["git", "commit", "-q", "-m", "tiny ganops pipeline"])
    return repo


# --- Servers the tests start (MLflow UI/server, chromedriver): real processes on 127.0.0.1 ---------

def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it; a race is possible but unlikely)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def background(args: list[str], *, env: dict[str, str], log_path: Path,
               cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """Run `args` in its own process group, output to `log_path`; on exit stop the whole group.

    The group matters: `mlflow ui`/`mlflow server` fork uvicorn (and job runners), which a plain
    terminate() of the parent would leave running.
    """
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(a) for a in args], cwd=cwd, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue


def wait_http(url: str, *, proc: subprocess.Popen, log_path: Path, timeout_s: float = 120) -> None:
    """Poll `url` until it answers 200; fail early (with the log) if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited {proc.returncode} before {url} answered:\n"
                                 f"{log_path.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout_s:.0f}s:\n"
                         f"{log_path.read_text(errors='replace')[-4000:]}")
