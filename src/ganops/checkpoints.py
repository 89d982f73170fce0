"""Training checkpoints: what makes one resumable, atomic save, rank-0 load shared with every rank."""
from __future__ import annotations

import hashlib
import json
import random
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ganops.fileio import atomic_path
from ganops.params import ModelParams, TrainParams
from ganops.prepared import manifest_hash

CHECKPOINT_NAME = "last.pt"
# The code whose change makes an old checkpoint a different run (besides params and data).
SOURCES = ("training.py", "schedules.py", "losses.py", "networks.py", "augment.py", "checkpoints.py",
           "runtime.py")
# Train params that only say how long to run or how often to log and save: a longer run continues
# a shorter one exactly, because the data order depends on (seed, epoch) only and no schedule reads
# the total. A schedule that needs the total (e.g. a decay to zero at the last step) must not be here.
EXTENSIBLE = ("epochs", "max_steps", "log_every", "checkpoint_every", "device")


def config_hash(model: ModelParams, train: TrainParams, prepared_dir: Path, world: int, *,
                total_steps: int) -> str:
    """Equal for runs that one checkpoint can continue: model + train params (less EXTENSIBLE),
    the data, the code and the world size. With train.lr_rampdown the learning rate depends on the
    run's length, so a longer run is another run: its total steps join the hash."""
    here = Path(__file__).parent
    train_fields = {k: v for k, v in asdict(train).items() if k not in EXTENSIBLE}
    if train.lr_rampdown > 0:
        train_fields["total_steps"] = total_steps
    blob = json.dumps({
        "model": asdict(model), "train": train_fields,
        "data": manifest_hash(prepared_dir), "world_size": world,
        "code": [hashlib.sha256((here / name).read_bytes()).hexdigest() for name in SOURCES],
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def load(path: Path, expected_hash: str, *, rank: int, world: int) -> dict | None:
    """The checkpoint's state if it belongs to this config, else None (and say why).

    Rank 0 reads the file and sends it to the other ranks: under multi-node torchrun only rank 0's
    disk has it, and ranks that started at different steps would hang in the first collective.
    """
    state = _read(path, expected_hash, announce=rank == 0) if rank == 0 else None
    if world > 1:
        box = [state]
        dist.broadcast_object_list(box, src=0)
        state = box[0]
    return state


def _read(path: Path, expected_hash: str, *, announce: bool) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: never resume from it
        if announce:
            print(f"train: ignoring unreadable checkpoint {path} ({e}); starting fresh", file=sys.stderr)
        return None
    if state.get("config_hash") != expected_hash:
        if announce:
            print(f"train: checkpoint {path} is from different params, data or code; starting fresh",
                  file=sys.stderr)
        return None
    if announce:
        print(f"train: resuming from {path} at step {state['step']} (MLflow run {state['run_id']})",
              file=sys.stderr)
    return state


def save(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, NumPy, torch and CUDA RNG states, in types torch.load(weights_only=True) accepts."""
    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def gather(obj, world: int) -> list:
    """Every rank's `obj`, in rank order (each rank's RNG state goes into rank 0's checkpoint)."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out
