"""The training loop on tiny data: outputs, MLflow run, every loss, resume rules, kill -9 and resume."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, synthetic_images
from ganops.networks import load_generator
from ganops.params import flatten, params_hash, parse
from ganops.data.prepared import manifest_hash, write_prepared
from ganops.training.loop import CSV_COLUMNS, _epoch_order, train

STAGE = REPO / "stages" / "train.py"
TINY_MODEL = {"arch": "dcgan", "z_dim": 16, "width": 8, "conditional": False}
# The quality curve needs a classifier: tests of it build one; the rest turn it off.
# On the CPU even where CUDA exists: bit-identity is a CPU promise (see test_cuda_*).
TINY_TRAIN = {"batch_size": 16, "epochs": 2, "checkpoint_every": 10, "log_every": 5, "curve_samples": 0,
              "device": "cpu"}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread here and in the subprocesses: tiny nets gain nothing from two, and the
    runs compared bit for bit must use the same thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"OMP_NUM_THREADS": "1"}
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite MLflow store for the module (creating one costs seconds); each test makes own runs."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tracking_env(store, monkeypatch) -> mlflow.MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    return mlflow.MlflowClient(tracking_uri=store)


def _params(model: dict | None = None, **train_keys):
    return parse({"model": {**TINY_MODEL, **(model or {})}, "train": {**TINY_TRAIN, **train_keys}})


def _train(out: Path, prepared: Path, params, classifier: Path | None = None,
           reference: Path | None = None) -> dict:
    # Without a curve the classifier and reference paths are never read: point them nowhere.
    return train(params=params, prepared_dir=prepared, classifier_dir=classifier or out / "no-classifier",
                 reference_dir=reference or out / "no-reference", model_dir=out / "gan",
                 checkpoint_dir=out / "ckpt", report_dir=out / "reports")


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_short_run_writes_outputs_and_tracks_the_run(tmp_path, tiny_prepared, tracking_env):
    client = tracking_env
    params = _params(model={"conditional": True})
    summary = _train(tmp_path, tiny_prepared, params)

    # 200 images / batch 16 = 12 steps per epoch, 2 epochs.
    assert (summary["steps"], summary["resumed_at"], summary["epochs"]) == (24, 0, 2.0)
    rows = _read_csv(tmp_path / "reports" / "losses.csv")
    assert tuple(rows[0]) == CSV_COLUMNS
    # Every log_every steps and at each epoch's end (12 steps per epoch).
    assert [(int(r["step"]), int(r["epoch"])) for r in rows] == [(5, 1), (10, 1), (12, 1), (15, 2), (20, 2), (24, 2)]
    assert all(np.isfinite(float(r[k])) for r in rows for k in CSV_COLUMNS)
    assert all(0.0 < float(r["d_real"]) < 1.0 for r in rows)  # probabilities for the BCE losses

    samples = sorted(p.name for p in (tmp_path / "reports" / "samples").iterdir())
    assert samples == ["epoch_001.png", "epoch_002.png"]
    assert Image.open(tmp_path / "reports" / "samples" / "epoch_002.png").size == (242, 242)  # 8 x 8 grid

    run_id = summary["run_id"]
    assert json.loads((tmp_path / "reports" / "mlflow_run.json").read_text())["run_id"] == run_id
    G, meta = load_generator(tmp_path / "gan")
    assert meta["config"] == {"arch": "dcgan", "z_dim": 16, "width": 8, "conditional": True, "num_classes": 10,
                              "g_upsample": "resize", "d_norm": "batch", "depth": 0, "d_projection": "flat",
                              "resolution": 28, "channels": 1}
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    # No MLflow run id inside the model: the same weights must give the same bytes.
    assert meta["lineage"] == {
        "git_commit": head or "unknown",
        "data_manifest_sha256": manifest_hash(tiny_prepared),
        "params_sha256": params_hash(params),
        "params_sha256_sections": "data,prepare,model,train",
        "dataset": "synthetic",
    }
    assert meta["classes"] is None and meta["dataset"] == "synthetic"
    # models/gan holds the EMA generator, as does the final checkpoint.
    ckpt = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    assert ckpt["step"] == 24
    assert all(torch.equal(v, ckpt["G_ema"][k]) for k, v in G.state_dict().items())
    assert not all(torch.equal(v, ckpt["G"][k]) for k, v in G.state_dict().items())

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "dcgan-conditional-non_saturating-2ep"  # what it trained, outside DVC
    expected = {k: v if isinstance(v, str) else json.dumps(v) for k, v in flatten(params).items()}
    assert run.data.params == expected
    tags = run.data.tags
    assert tags["data_manifest_sha256"] == manifest_hash(tiny_prepared)
    assert tags["params_sha256"] == params_hash(params)
    assert {"git_commit", "git_dirty", "dvc_exp_name"} <= set(tags)
    for key in ("loss_d", "loss_g", "d_real", "d_fake", "grad_norm_d", "grad_norm_g", "img_per_s"):
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == [5, 10, 12, 15, 20, 24], key
        if key != "img_per_s":
            assert [m.value for m in history] == pytest.approx([float(r[key]) for r in rows], rel=1e-5)
    images = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    assert sorted(p.split("+")[2] for p in images) == ["12", "24"]  # one grid per epoch, at its step
    assert [a.path for a in client.list_artifacts(run_id, "train")] == ["train/losses.csv"]


@pytest.mark.parametrize(
    "loss,model,d_steps",
    [
        ("minimax", {"arch": "mlp"}, 1),
        ("non_saturating", {"arch": "mlp", "conditional": True}, 2),
        ("hinge", {"conditional": True}, 1),
        ("wgan_gp", {"conditional": True, "d_norm": "none"}, 2),
    ],
)
def test_every_loss_trains(tmp_path, tiny_prepared, tracking_env, loss, model, d_steps):
    was = torch.are_deterministic_algorithms_enabled()
    params = _params(model=model, loss=loss, d_steps=d_steps, max_steps=4, log_every=2)
    summary = _train(tmp_path, tiny_prepared, params)
    assert summary["steps"] == 4
    assert torch.are_deterministic_algorithms_enabled() == was  # the loop leaves the setting as found
    rows = _read_csv(tmp_path / "reports" / "losses.csv")
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(np.isfinite(float(r[k])) for r in rows for k in CSV_COLUMNS)
    # The partial epoch still leaves a sample grid.
    assert [p.name for p in (tmp_path / "reports" / "samples").iterdir()] == ["epoch_001.png"]


def test_rerun_resumes_a_finished_run_and_changed_params_start_fresh(
    tmp_path, tiny_prepared, tracking_env, capsys
):
    first = _train(tmp_path, tiny_prepared, _params(max_steps=6))
    weights = (tmp_path / "gan" / "generator.pt").read_bytes()

    again = _train(tmp_path, tiny_prepared, _params(max_steps=6))
    assert (again["resumed_at"], again["run_id"]) == (6, first["run_id"])
    assert (tmp_path / "gan" / "generator.pt").read_bytes() == weights
    assert "resuming from" in capsys.readouterr().err

    fresh = _train(tmp_path, tiny_prepared, _params(max_steps=6, lr_g=1e-4))
    assert fresh["resumed_at"] == 0 and fresh["run_id"] != first["run_id"]
    assert "from different params, data or code; starting fresh" in capsys.readouterr().err
    assert tracking_env.get_run(fresh["run_id"]).data.params["train.lr_g"] == "0.0001"


def test_bad_params_fail_with_the_key_and_the_fix(tmp_path, tiny_prepared, tracking_env):
    # Values wrong in themselves fail when params are parsed (tests/test_params.py); these only here.
    with pytest.raises(ValueError, match="200 training images: too few for train.batch_size=256"):
        _train(tmp_path, tiny_prepared, _params(batch_size=256))
    with pytest.raises(FileNotFoundError, match="run the classifier stage"):
        _train(tmp_path, tiny_prepared, _params(curve_samples=50))
    assert not (tmp_path / "ckpt").exists()


def test_epoch_order_is_a_function_of_seed_and_epoch_and_shards_disjointly():
    a = [_epoch_order(0, 3, 11, rank, 2, "cpu") for rank in (0, 1)]
    assert all(len(shard) == 5 for shard in a)  # equal shards; the odd image out is skipped this epoch
    assert len(set(torch.cat(a).tolist())) == 10
    assert torch.equal(_epoch_order(0, 3, 11, 0, 2, "cpu"), a[0])
    assert not torch.equal(_epoch_order(0, 4, 11, 0, 2, "cpu"), a[0])
    assert not torch.equal(_epoch_order(1, 3, 11, 0, 2, "cpu"), a[0])


def _state_equal(a, b, where: str = "") -> None:
    """Assert two nested checkpoint structures are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _state_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _state_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _stage_data(tmp_path: Path) -> Path:
    """800 synthetic training images (50 steps an epoch at TINY_TRAIN's batch) for the stage's own process."""
    prepared = tmp_path / "prepared"
    write_prepared(prepared, splits={"train": synthetic_images(800, 0), "test": synthetic_images(100, 1)},
                   dataset="synthetic", num_classes=10, sources={})
    return prepared


def _wait_for_checkpoint(proc: subprocess.Popen, checkpoint: Path, log: Path | None = None) -> None:
    """Until the stage's first checkpoint appears (whole: written by atomic rename), at most 120 s."""
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert proc.poll() is None, log.read_text() if log else "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.002)


def test_sigkill_and_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, tracking_env, store, one_thread):
    prepared = _stage_data(tmp_path)
    # 800 / 16 = 50 steps per epoch; 2 epochs; checkpoints every 5 steps, metrics every 7.
    train_keys = {"log_every": 7, "checkpoint_every": 5}
    params = _params(**train_keys)
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    yaml_text = json.dumps({"model": TINY_MODEL, "train": {**TINY_TRAIN, **train_keys}})
    (run_dir / "params.yaml").write_text(yaml_text)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, **one_thread}
    cmd = [sys.executable, str(STAGE), str(prepared), "no-classifier", "no-reference", "gan", "ckpt", "reports"]
    checkpoint = run_dir / "ckpt" / "last.pt"

    with open(run_dir / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=run_dir, env=env, stdout=log, stderr=log)
        _wait_for_checkpoint(proc, checkpoint, run_dir / "first.log")
        proc.kill()  # SIGKILL: no cleanup, no final checkpoint
        proc.wait()
    killed_at = torch.load(checkpoint, weights_only=True)["step"]
    assert 5 <= killed_at < 100, "the run finished before it could be killed"
    assert not (run_dir / "gan").exists()
    run_id = json.loads((run_dir / "reports" / "mlflow_run.json").read_text())["run_id"]

    resumed = subprocess.run(cmd, cwd=run_dir, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {killed_at}" in resumed.stdout

    reference = tmp_path / "reference"
    _train(reference, prepared, params)

    _state_equal(torch.load(checkpoint, weights_only=True),
                 {**torch.load(reference / "ckpt" / "last.pt", weights_only=True), "run_id": run_id})
    for name in ("gan/generator.pt", "reports/losses.csv", "reports/samples/epoch_001.png",
                 "reports/samples/epoch_002.png"):
        if name.endswith(".pt"):
            _state_equal(torch.load(run_dir / name, weights_only=True),
                         torch.load(reference / name, weights_only=True))
        else:
            assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name

    # The resumed process continued the killed one's MLflow run.
    assert json.loads((run_dir / "reports" / "mlflow_run.json").read_text())["run_id"] == run_id
    run = tracking_env.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = {m.step for m in tracking_env.get_metric_history(run_id, "loss_g")}
    assert steps == {*range(7, 100, 7), 50, 100}


def test_sigterm_closes_the_mlflow_run_as_killed_and_keeps_the_checkpoint(tmp_path, tracking_env, store, one_thread):
    prepared = _stage_data(tmp_path)
    (tmp_path / "params.yaml").write_text(json.dumps(
        {"model": TINY_MODEL, "train": {**TINY_TRAIN, "epochs": 50, "checkpoint_every": 5}}))
    cmd = [sys.executable, str(STAGE), str(prepared), "no-classifier", "no-reference", "gan", "ckpt", "reports"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": store, **one_thread},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(proc, tmp_path / "ckpt" / "last.pt")
    proc.terminate()  # SIGTERM, as `kill` and `dvc queue kill` send it
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted; `dvc repro` resumes from ckpt" in stderr
    run_id = json.loads((tmp_path / "reports" / "mlflow_run.json").read_text())["run_id"]
    assert tracking_env.get_run(run_id).info.status == "KILLED"
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["step"] >= 5
    assert not (tmp_path / "gan").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_run_trains_and_saves_a_cpu_loadable_generator(tmp_path, tiny_prepared, tracking_env):
    summary = _train(tmp_path, tiny_prepared,
                     _params(model={"conditional": True, "d_norm": "spectral"}, loss="wgan_gp", max_steps=6,
                             device="cuda"))
    assert summary["device"].startswith("cuda") and summary["steps"] == 6
    rows = _read_csv(tmp_path / "reports" / "losses.csv")
    assert all(np.isfinite(float(r[k])) for r in rows for k in CSV_COLUMNS)
    G, _ = load_generator(tmp_path / "gan")  # saved on the CPU whatever the training device
    assert next(G.parameters()).device.type == "cpu"


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no native bf16 on this CPU")
def test_cpu_bf16_is_deterministic_and_differs_from_fp32(tmp_path, tiny_prepared, tracking_env):
    params = _params(max_steps=6, precision="bf16", device="cpu")
    assert _train(tmp_path / "a", tiny_prepared, params)["precision"] == "bf16"
    _train(tmp_path / "b", tiny_prepared, params)
    _train(tmp_path / "fp32", tiny_prepared, _params(max_steps=6, precision="fp32", device="cpu"))
    load = lambda d: torch.load(tmp_path / d / "gan" / "generator.pt", weights_only=True)  # noqa: E731
    a, b, fp32 = load("a"), load("b"), load("fp32")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.isfinite(v).all() for v in a.values() if v.is_floating_point())
    # bf16 really ran: the weights after six steps are not the fp32 ones.
    assert not all(torch.equal(a[k], fp32[k]) for k in a)


def test_a_run_extended_from_its_checkpoint_equals_one_trained_that_long(tmp_path, tiny_prepared, tracking_env):
    # "Train longer": 2 epochs, then epochs=3 from that checkpoint, against 3 epochs from scratch;
    # the loggers' cadence changes too, which must not matter either.
    two = _train(tmp_path / "ext", tiny_prepared, _params(epochs=2, log_every=5, checkpoint_every=7))
    extended = _train(tmp_path / "ext", tiny_prepared, _params(epochs=3, log_every=5, checkpoint_every=11))
    assert (extended["resumed_at"], extended["run_id"]) == (24, two["run_id"])
    _train(tmp_path / "scratch", tiny_prepared, _params(epochs=3, log_every=5))
    ext, scratch = (torch.load(tmp_path / d / "ckpt" / "last.pt", weights_only=True) for d in ("ext", "scratch"))
    assert ext["step"] == scratch["step"] == 36
    _state_equal({**ext, "run_id": None}, {**scratch, "run_id": None})
    for name in ("reports/losses.csv", "reports/samples/epoch_003.png"):
        assert (tmp_path / "ext" / name).read_bytes() == (tmp_path / "scratch" / name).read_bytes(), name


def test_a_shorter_run_after_a_longer_one_restarts_from_its_epoch_snapshot(tmp_path, tiny_prepared, tracking_env,
                                                                          capfd):
    # 3 epochs keep epoch_001..003.pt beside last.pt; then epochs=2 must give the 2-epoch model of a
    # run from scratch, bit for bit, in an MLflow run of its own (not the longer run's).
    three = _train(tmp_path / "long", tiny_prepared, _params(epochs=3, checkpoint_every=7))
    ckpt = tmp_path / "long" / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch_001.pt", "epoch_002.pt", "epoch_003.pt", "last.pt"]
    capfd.readouterr()
    two = _train(tmp_path / "long", tiny_prepared, _params(epochs=2))
    assert "restarting from epoch_002.pt (step 24)" in capfd.readouterr().err
    assert two["resumed_at"] == 24 and two["run_id"] != three["run_id"]
    scratch = _train(tmp_path / "scratch", tiny_prepared, _params(epochs=2))
    for name in ("gan/generator.pt", "gan/generator.json", "reports/losses.csv", "reports/samples/epoch_002.png"):
        assert (tmp_path / "long" / name).read_bytes() == (tmp_path / "scratch" / name).read_bytes(), name
    # The new run holds the snapshot's logged metrics, as the run from scratch does.
    history = [m.step for m in tracking_env.get_metric_history(two["run_id"], "loss_d")]
    assert history == [m.step for m in tracking_env.get_metric_history(scratch["run_id"], "loss_d")]

    # Mid-epoch lengths work too: from epoch 1's snapshot, 6 more steps, as 18 steps from scratch.
    _train(tmp_path / "long", tiny_prepared, _params(max_steps=18))
    _train(tmp_path / "s18", tiny_prepared, _params(max_steps=18))
    assert (tmp_path / "long/gan/generator.pt").read_bytes() == (tmp_path / "s18/gan/generator.pt").read_bytes()
    # Shorter than the first epoch: no snapshot is early enough, so from scratch, said in one line.
    capfd.readouterr()
    short = _train(tmp_path / "long", tiny_prepared, _params(max_steps=5))
    assert short["resumed_at"] == 0
    assert "no epoch snapshot is at or before it: training from scratch" in capfd.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_checkpoint_stops_with_the_file_and_the_fix(tmp_path, tiny_prepared, tracking_env, damage):
    _train(tmp_path, tiny_prepared, _params(epochs=1))
    last = tmp_path / "ckpt" / "last.pt"
    blob = last.read_bytes()
    last.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else b"not a checkpoint\n" * 100)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "mlflow" not in str(p)}
    with pytest.raises(RuntimeError, match=rf"{last} is not a readable training checkpoint .*"
                                           rf"delete it to train from scratch \(rm {last}\)"):
        _train(tmp_path, tiny_prepared, _params(epochs=2))
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "mlflow" not in str(p)}
    assert after == before  # nothing written, nothing lost: the damaged file is left for the user


def test_lr_rampdown_ends_near_zero_and_a_longer_run_starts_over(tmp_path, tiny_prepared, tracking_env):
    # 24 steps, the last half ramped: the final step's lr is lr_g * 0.5 / 12 (its midpoint's).
    first = _train(tmp_path, tiny_prepared, _params(epochs=2, lr_rampdown=0.5, lr_g=1e-3, lr_d=2e-3))
    state = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    assert state["opt_g"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5 / 12)
    assert state["opt_d"]["param_groups"][0]["lr"] == pytest.approx(2e-3 * 0.5 / 12)
    # The ramp depends on the run's length: 3 epochs is another schedule, trained from scratch.
    longer = _train(tmp_path, tiny_prepared, _params(epochs=3, lr_rampdown=0.5, lr_g=1e-3, lr_d=2e-3))
    assert longer["resumed_at"] == 0 and longer["run_id"] != first["run_id"]
    with pytest.raises(ValueError, match=r"train.lr_rampdown is a fraction of the run, in \[0, 1\]"):
        _train(tmp_path / "bad", tiny_prepared, _params(lr_rampdown=1.5))


@pytest.mark.parametrize("model,train_keys", [
    ({"d_norm": "batch", "g_upsample": "resize", "depth": 1}, {"augment": ["translation", "cutout"]}),
    ({"d_norm": "spectral", "conditional": True, "d_projection": "pooled"}, {"loss": "hinge", "betas_g": [0.0, 0.9], "ema_bn": "copy"}),
    ({"d_norm": "none"}, {"r1_gamma": 1.0, "r1_every": 2, "ema_kimg": 0.0}),
])
def test_recipe_components_train(tmp_path, tiny_prepared, tracking_env, model, train_keys):
    summary = _train(tmp_path, tiny_prepared, _params(model=model, max_steps=6, log_every=3, **train_keys))
    assert summary["steps"] == 6
    rows = _read_csv(tmp_path / "reports" / "losses.csv")
    assert all(np.isfinite(float(r[k])) for r in rows for k in CSV_COLUMNS)
    G, meta = load_generator(tmp_path / "gan")
    assert {k: meta["config"][k] for k in model} == model


def test_quality_curve_is_logged_per_epoch_to_mlflow_and_quality_csv(tmp_path, tiny_prepared, tracking_env):
    from ganops.metrics.classifier import train_classifier
    from ganops.metrics.reference import build_reference

    train_classifier(prepared_dir=tiny_prepared, model_dir=tmp_path / "classifier", report_path=tmp_path / "c.json",
                     seed=0, epochs=1, batch_size=32, lr=3e-3, width=8, feature_dim=16)
    build_reference(prepared_dir=tiny_prepared, classifier_dir=tmp_path / "classifier",
                    out_dir=tmp_path / "reference")
    summary = _train(tmp_path, tiny_prepared, _params(curve_samples=40),
                     classifier=tmp_path / "classifier", reference=tmp_path / "reference")
    rows = _read_csv(tmp_path / "reports" / "quality.csv")
    assert [(int(r["step"]), int(r["epoch"])) for r in rows] == [(12, 1), (24, 2)]
    history = tracking_env.get_metric_history(summary["run_id"], "fid_curve")
    assert [m.step for m in history] == [12, 24]
    assert [m.value for m in history] == pytest.approx([float(r["fid_curve"]) for r in rows], rel=1e-5)
    assert summary["fid_curve"] == pytest.approx(float(rows[-1]["fid_curve"]), rel=1e-5) and summary["fid_curve"] > 0

    # The curve is a pure function of the EMA generator: the same weights score the same.
    from ganops.networks import load_generator as load
    from ganops.metrics.curve import QualityCurve
    G, _ = load(tmp_path / "gan")
    curve = QualityCurve(tmp_path / "classifier", tmp_path / "reference", num_samples=40, z_dim=16,
                         num_classes=10, conditional=False, device=torch.device("cpu"))
    assert curve.fid(G) == pytest.approx(summary["fid_curve"], rel=1e-6)


def test_checkpoint_sources_cover_the_code_the_loop_computes_with():
    """A change to any module that computes the training (not tracking, plots or file I/O) makes an
    old checkpoint another run: checkpoints.SOURCES must list each one the loop imports."""
    from test_stage_deps import SRC, ganops_modules

    from ganops.training.checkpoints import SOURCES

    package = SRC / "ganops"
    used = {p.relative_to(package).as_posix() for p in ganops_modules(package / "training" / "loop.py")}
    computing = {u for u in used if u.startswith("training/") and not u.endswith("__init__.py")}
    computing |= {"training/loop.py", "networks.py", "sampling.py"}
    assert computing <= set(SOURCES), f"add to checkpoints.SOURCES: {sorted(computing - set(SOURCES))}"
    assert all((package / name).is_file() for name in SOURCES)
