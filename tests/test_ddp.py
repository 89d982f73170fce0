"""Two-process DDP training on the CPU (gloo) through torchrun: it finishes and rank 0 alone writes."""
from __future__ import annotations

import hashlib
import json
import re
import os
import subprocess
import sys

import mlflow
import torch

from conftest import REPO
from ganops.networks import load_generator


def test_torchrun_two_gloo_processes(tmp_path, tiny_prepared):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The trickiest path: WGAN-GP's double backward under DDP, 2 D steps per G step, conditional nets.
    # 200 images -> 100 per rank -> 100 // 8 // 2 = 6 steps.
    (tmp_path / "params.yaml").write_text(json.dumps({
        "model": {"arch": "dcgan", "z_dim": 16, "width": 8, "conditional": True, "d_norm": "none"},
        "train": {"batch_size": 8, "epochs": 1, "loss": "wgan_gp", "d_steps": 2,
                  "checkpoint_every": 4, "log_every": 2, "curve_samples": 0, "device": "cpu"},
    }))
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "stages" / "train.py"), str(tiny_prepared), "none", "none", "gan", "ckpt", "reports"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("train: wrote gan after 6 steps") == 1, result.stdout  # rank 0 only
    assert "x2" in result.stdout

    client = mlflow.MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("ganops").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert json.loads((tmp_path / "reports" / "mlflow_run.json").read_text())["run_id"] == run_id
    assert [m.step for m in client.get_metric_history(run_id, "loss_d")] == [2, 4, 6]

    ckpt = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    assert ckpt["step"] == 6
    # Both ranks' RNG states are kept (each draws its own noise), so either can resume exactly.
    assert len(ckpt["rng"]) == 2
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    G, meta = load_generator(tmp_path / "gan")
    assert "mlflow_run_id" not in meta["lineage"]  # the run is beside the model (mlflow_run.json), not in it
    assert all(torch.equal(v, ckpt["G_ema"][k]) for k, v in G.state_dict().items())
    assert sorted(p.name for p in (tmp_path / "reports" / "samples").iterdir()) == ["epoch_001.png"]
    assert (tmp_path / "reports" / "losses.csv").read_text().count("\n") == 4  # header + 3 rows
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt", "gan", "mlartifacts", "mlflow.db", "params.yaml", "prepared", "reports",
    ]


def _sha256_of_states(*states: dict) -> str:
    """What training.loop's summary digests: each parameter's name and bytes, in order (no BN buffers)."""
    digest = hashlib.sha256()
    for state in states:
        for name, tensor in state.items():
            if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                continue
            digest.update(name.encode())
            digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


RANK_SCRIPT = """
import os, sys
from ganops import params
from ganops.training.loop import train
rank = os.environ["RANK"]
# Each rank has its own checkpoint directory, as on separate nodes: only rank 0's holds last.pt.
s = train(params=params.load("params.yaml"), prepared_dir=sys.argv[1], classifier_dir="none",
          reference_dir="none", model_dir="gan", checkpoint_dir=f"ckpt-rank{rank}", report_dir="reports")
print(f"rank {rank} resumed_at {s['resumed_at']} steps {s['steps']} weights {s['weights_sha256']}", flush=True)
"""


def test_multi_node_resume_reads_rank_0s_checkpoint_on_every_rank(tmp_path, tiny_prepared):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "OMP_NUM_THREADS": "1"}

    def run(epochs: int) -> str:
        (tmp_path / "params.yaml").write_text(json.dumps({
            "model": {"arch": "dcgan", "z_dim": 16, "width": 8},
            "train": {"batch_size": 10, "epochs": epochs, "log_every": 5, "curve_samples": 0, "device": "cpu"},
        }))
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             str(tmp_path / "rank.py"), str(tiny_prepared)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        return result.stdout

    first = run(1)  # 200 images -> 100 per rank -> 10 steps an epoch
    assert "rank 0 resumed_at 0 steps 10" in first and "rank 1 resumed_at 0 steps 10" in first
    # DDP's point: every rank ends with the same weights, the ones rank 0 saved.
    digests = dict(re.findall(r"rank (\d) resumed_at \d+ steps \d+ weights ([0-9a-f]{64})", first))
    ckpt = torch.load(tmp_path / "ckpt-rank0" / "last.pt", weights_only=True)
    saved = _sha256_of_states(ckpt["G"], ckpt["D"], ckpt["G_ema"])
    assert digests == {"0": saved, "1": saved}, first
    assert (tmp_path / "ckpt-rank0" / "last.pt").exists() and not (tmp_path / "ckpt-rank1").exists()
    second = run(2)  # without the broadcast, rank 1 would start at 0 and the collectives would hang
    assert "rank 0 resumed_at 10 steps 20" in second and "rank 1 resumed_at 10 steps 20" in second
    assert torch.load(tmp_path / "ckpt-rank0" / "last.pt", weights_only=True)["step"] == 20
