"""MLflow tracking: runs, batched metrics, run-id files, one store at the repo root (also for queued exps)."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from ganops.fileio import write_json
from ganops.lineage import git_commit
from ganops.params import Params, flatten

DEFAULT_EXPERIMENT = "ganops"
STORE_NAME = "mlflow.db"
ARTIFACTS_NAME = "mlartifacts"  # beside mlflow.db; git-ignored
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit

# DVC runs queued/temp experiments in copies at <repo>/.dvc/tmp/exps/<random>/ (see
# dvc/repo/experiments/executor/local.py: mkdtemp(dir=<repo>/.dvc/tmp/exps)).
_EXPS_PARTS = (".dvc", "tmp", "exps")


class TrackingError(RuntimeError):
    """The tracking store or a run is missing or unusable."""


def _mlflow():
    """Import mlflow lazily: `ganops.tracking` stays cheap to import for code that only reads run ids.
    Importing this module changes nothing; the first use of MLflow sets its quiet defaults."""
    # No usage pings from runs or tests; mlflow reads only "true" for DO_NOT_TRACK ("1" is left as is).
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    # Creating a SQLite store logs alembic migrations at INFO; keep stage output to its one-line summary.
    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import mlflow  # noqa: PLC0415

    return mlflow


def repo_root(start: str | Path | None = None) -> Path:
    """The main repository root, the same from the workspace and from DVC's experiment copies.

    1. `DVC_ROOT`: DVC sets it for every stage command; for queued/temp experiments it is set to
       the *parent* repo's root (dvc/repo/experiments/queue/base.py, `_stash_exp`), not the copy's.
    2. Otherwise, if the path lies inside `<repo>/.dvc/tmp/exps/...`, that `<repo>` (a copy's own
       `.dvc/` would otherwise be found first).
    3. Otherwise the nearest ancestor holding `.dvc/` or `.git`; else the start directory itself.
    """
    env_root = os.environ.get("DVC_ROOT", "")
    if env_root and Path(env_root).is_dir():
        return Path(env_root).resolve()
    here = Path(start or os.getcwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - len(_EXPS_PARTS) + 1):
        if parts[i : i + len(_EXPS_PARTS)] == _EXPS_PARTS and i > 0:
            return Path(*parts[:i])
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir() or (candidate / ".git").exists():
            return candidate
    return here


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else `sqlite:///<repo root>/mlflow.db` (absolute path)."""
    env_uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if env_uri:
        return env_uri
    return f"sqlite:///{repo_root() / STORE_NAME}"


def store_description(uri: str) -> str:
    """`uri` as a tracked file may hold it: without this machine's paths or a password.

    A SQLite file inside the repository becomes relative to its root (`sqlite:///mlflow.db`, what
    MLflow reads from the root); one outside keeps only its name (`sqlite:///<outside the
    repository>/x.db`); a server's URI stays as it is, less any password.
    """
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        db_path = Path(uri[len(prefix) :])
        if not db_path.is_absolute():
            return uri
        try:
            return prefix + db_path.resolve().relative_to(repo_root().resolve()).as_posix()
        except ValueError:
            return f"{prefix}<outside the repository>/{db_path.name}"
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}@" if parts.username else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=user + netloc))


def run_name(params: Params) -> str:
    """A training run's MLflow name: the DVC experiment's when DVC runs one, else what it trains.

        Tracker.start(run_name=run_name(p), tags=...)   # "lucky-lark" or "dcgan-non_saturating-5ep"
    """
    exp_name = os.environ.get("DVC_EXP_NAME", "")
    if exp_name:
        return exp_name
    m, t = params.model, params.train
    length = f"{t.max_steps}steps" if t.max_steps else f"{t.epochs}ep"
    return "-".join([m.arch, *(["conditional"] if m.conditional else []), t.loss, length])


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store go in `mlartifacts/` beside the .db file.

    MLflow's default would be `./mlruns` relative to the *current directory*, which inside a
    `dvc exp run --queue` copy is deleted with the copy. Other stores (a server) choose themselves.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    db_path = Path(uri[len(prefix) :])
    if not db_path.is_absolute():
        db_path = Path.cwd() / db_path
    return (db_path.parent / ARTIFACTS_NAME).as_uri()


def _param_value(value: object) -> str:
    # JSON spelling (false, null, [..]) matches params.yaml better than Python's str().
    return value if isinstance(value, str) else json.dumps(value)


def _client(uri: str):
    return _mlflow().MlflowClient(tracking_uri=uri)


def mlflow_client(uri: str):
    """An MlflowClient on `uri`, with this module's quiet defaults (for the registry, ganops.registry)."""
    return _client(uri)


def _experiment_id(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None and exp.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} (id {exp.experiment_id}) in {uri} is deleted: restore it "
            f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or purge it (mlflow gc)"
        )
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(uri))
    except _mlflow().exceptions.MlflowException:
        # Another process (a parallel queued experiment) created it first.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class Tracker:
    """One MLflow run: params, batched metrics, stepped images, artifacts, tags.

        tracker = Tracker.start(run_name="train", tags=lineage_tags(manifest_dir=..., params=p))
        tracker.log_params(flatten(p))
        tracker.log_metrics({"loss_d": 0.7}, step=50)
        tracker.close()
    """

    def __init__(self, *, client, run_id: str, uri: str):
        self._client = client
        self.run_id = run_id
        self.tracking_uri = uri
        self._metrics: list = []
        self._closed = False

    @classmethod
    def start(
        cls,
        *,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        uri: str | None = None,
    ) -> Tracker:
        """Start a new run in `experiment` (created with artifacts beside the store if absent).

        Always tags `dvc_exp_name` (env DVC_EXP_NAME, "" in the workspace) and MLflow's own
        `mlflow.source.git.commit`; the run is named after the DVC experiment unless `run_name`.
        """
        uri = uri or tracking_uri()
        client = _client(uri)
        experiment_id = _experiment_id(client, experiment, uri)
        all_tags = {"dvc_exp_name": os.environ.get("DVC_EXP_NAME", "")}
        all_tags.update(tags or {})
        commit = all_tags.get("git_commit") or git_commit(os.getcwd())
        if commit and commit != "unknown":
            all_tags.setdefault("mlflow.source.git.commit", commit)
        run_name = run_name or all_tags["dvc_exp_name"] or None
        run = client.create_run(
            experiment_id, tags={k: str(v) for k, v in all_tags.items()}, run_name=run_name
        )
        return cls(client=client, run_id=run.info.run_id, uri=uri)

    @classmethod
    def resume(cls, run_id: str, *, uri: str | None = None) -> Tracker:
        """Continue an existing run (after a crash; evaluate/export log into the training run)."""
        uri = uri or tracking_uri()
        client = _client(uri)
        try:
            client.get_run(run_id)
        except _mlflow().exceptions.MlflowException as e:
            raise TrackingError(
                f"MLflow run {run_id!r} not found in {uri}: the store was reset or is another one; "
                "set MLFLOW_TRACKING_URI to the store that holds it or rerun training "
                "(dvc repro -f train)"
            ) from e
        client.update_run(run_id, status="RUNNING")
        return cls(client=client, run_id=run_id, uri=uri)

    @classmethod
    def for_stage(cls, run_id: str, *, stage: str, tags: Mapping[str, str],
                  uri: str | None = None) -> Tracker:
        """The run a stage after training logs into: the training run `run_id` when the store holds
        it, else (a store reset, or models from `dvc pull` without the git-ignored mlflow.db) a new
        run tagged `train_run_id` = `run_id`, `stage` and `tags`, said so on stderr. A stage's work
        is never lost to bookkeeping.
        """
        uri = uri or tracking_uri()
        if find_run(run_id, uri=uri):
            return cls.resume(run_id, uri=uri)
        exp_name = os.environ.get("DVC_EXP_NAME", "")
        tracker = cls.start(
            run_name=f"{exp_name or 'run-' + run_id[:8]}-{stage}",
            tags={**tags, "train_run_id": run_id, "stage": stage},
            uri=uri,
        )
        print(f"{stage}: MLflow run {run_id} of the training is not in {store_description(uri)} "
              f"(a reset store, or another one); logging {stage} into the new run {tracker.run_id}, "
              f"tagged train_run_id={run_id}", file=sys.stderr)
        return tracker

    def log_params(self, params: Mapping[str, object] | Params) -> None:
        """Log params under their params.yaml names (`train.lr_g`); a Params is flattened first.

        Values already logged identically (e.g. on resume) are skipped; MLflow forbids changing
        a logged value, so a different one raises TrackingError naming the key.
        """
        from mlflow.entities import Param  # noqa: PLC0415

        flat = flatten(params) if isinstance(params, Params) else dict(params)
        existing = self._client.get_run(self.run_id).data.params
        new: list = []
        for key, value in flat.items():
            text = _param_value(value)
            if key in existing:
                if existing[key] != text:
                    raise TrackingError(
                        f"param {key!r} of MLflow run {self.run_id} is already {existing[key]!r}, "
                        f"cannot log {text!r}: log it into a new run, or as a tag/metric instead"
                    )
                continue
            new.append(Param(key, text))
        for i in range(0, len(new), MAX_PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=new[i : i + MAX_PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer metrics at `step`; sent with log_batch when the buffer is full, at flush/close."""
        from mlflow.entities import Metric  # noqa: PLC0415

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            self._metrics.append(Metric(key, float(value), now, int(step)))
        if len(self._metrics) >= MAX_METRICS_PER_BATCH:
            self.flush()

    def log_image(self, image, key: str, step: int) -> None:
        """Log a uint8 [H, W] (or RGB [H, W, 3]) image as a stepped image (the MLflow UI shows a step slider)."""
        import numpy as np  # noqa: PLC0415

        array = np.asarray(image)
        if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
            raise ValueError(
                f"log_image({key!r}) wants a uint8 [H, W] or [H, W, 3] array, got {array.dtype} {array.shape}: "
                "convert with ganops.sampling.to_uint8 / grid"
            )
        self._client.log_image(self.run_id, array, key=key, step=int(step), synchronous=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file (or a directory's contents) into the run's artifacts."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact {path} not found: write it before logging it")
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, object]) -> None:
        from mlflow.entities import RunTag  # noqa: PLC0415

        if tags:
            self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_onnx_model(self, model, *, name: str, inputs: Mapping[str, object], outputs: Mapping[str, object],
                       metadata: Mapping[str, str], registered_name: str | None, sha256: str) -> int | None:
        """Log an ONNX ModelProto (MLflow's onnx flavor, signature from example arrays) to this run;
        with `registered_name`, as a new version tagged `model_sha256`, unless this run already
        registered the same bytes (then that version). Returns the version, or None."""
        mlflow = _mlflow()
        from mlflow.models import infer_signature  # noqa: PLC0415

        if registered_name:
            query = f"name='{registered_name}' and run_id='{self.run_id}'"
            for version in self._client.search_model_versions(query):
                if version.tags.get("model_sha256") == sha256:
                    return int(version.version)
        # The flavor's log_model logs into the active run of MLflow's global state: point it at ours.
        mlflow.set_tracking_uri(self.tracking_uri)
        with mlflow.start_run(run_id=self.run_id):
            info = mlflow.onnx.log_model(model, name=name, signature=infer_signature(dict(inputs), dict(outputs)),
                                         save_as_external_data=False, registered_model_name=registered_name,
                                         metadata={"sha256": sha256, **metadata})
        self.set_tags({"onnx_sha256": sha256})
        if not registered_name:
            return None
        version = str(info.registered_model_version)
        self._client.set_model_version_tag(registered_name, version, "model_sha256", sha256)
        return int(version)

    def flush(self) -> None:
        """Send buffered metrics."""
        while self._metrics:
            batch = self._metrics[:MAX_METRICS_PER_BATCH]
            self._client.log_batch(self.run_id, metrics=batch)
            del self._metrics[: len(batch)]

    def close(self, status: str = "FINISHED") -> None:
        """Flush and end the run with `status` (FINISHED, FAILED, KILLED); idempotent."""
        if self._closed:
            return
        self.flush()
        self._client.set_terminated(self.run_id, status=status)
        self._closed = True

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("FAILED" if exc_type is not None else "FINISHED")


def find_run(run_id: str, *, uri: str | None = None) -> bool:
    """Whether the store holds `run_id` as a run that can be logged into (not deleted).

    Raises TrackingError when the store itself is unusable (a server that fails, a deleted
    experiment), so that a stage can fail before its long work rather than after it.
    """
    uri = uri or tracking_uri()
    client = _client(uri)
    try:
        run = client.get_run(run_id)
    except _mlflow().exceptions.MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise TrackingError(f"MLflow store {store_description(uri)} cannot be read: {e}") from e
        run = None
    if run is not None and run.info.lifecycle_stage == "active":
        return True
    _experiment_id(client, DEFAULT_EXPERIMENT, uri)  # a new run will need its experiment usable
    return False


class NullTracker:
    """What the loop logs through, doing nothing: DDP ranks other than 0 hold one instead of a Tracker."""

    run_id = ""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_image(self, image, key: str, step: int) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


def write_run_id(path: str | Path, run_id: str, *, uri: str | None = None) -> None:
    """Write {"run_id", "experiment", "tracking_uri"} (reports/train/mlflow_run.json) atomically.

    The file is tracked by git, so the store is described without this machine's paths
    (store_description): the same run gives the same bytes wherever the repository lies.
    """
    write_json(path, {"run_id": run_id, "experiment": DEFAULT_EXPERIMENT,
                      "tracking_uri": store_description(uri or tracking_uri())})


def read_run_id(path: str | Path) -> str:
    """The run id from a file written by write_run_id."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: run the train stage first (dvc repro train), which writes it"
        )
    try:
        run_id = json.loads(path.read_text())["run_id"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path} is not a run-id file ({{\"run_id\": ..., \"tracking_uri\": ...}}): "
            "delete it and rerun the train stage (dvc repro -f train)"
        ) from e
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"{path} holds no run id: rerun the train stage (dvc repro -f train)")
    return run_id
