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
from ganops.data.prepared import manifest_hash

CHECKPOINT_NAME = "last.pt"


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read."""

# The code whose change makes an old checkpoint a different run (besides params and data), relative
# to the ganops package: the loop and what it computes with (tests/test_training.py checks the list).
SOURCES = ("training/loop.py", "training/schedules.py", "training/losses.py", "training/augment.py",
           "training/checkpoints.py", "training/device.py", "networks.py", "sampling.py")
# Train params that only say how long to run or how often to log and save: a longer run continues
# a shorter one exactly, because the data order depends on (seed, epoch) only and no schedule reads
# the total. A schedule that needs the total (e.g. a decay to zero at the last step) must not be here.
EXTENSIBLE = ("epochs", "max_steps", "log_every", "checkpoint_every", "device")


def config_hash(model: ModelParams, train: TrainParams, prepared_dir: Path, world: int, *,
                total_steps: int) -> str:
    """Equal for runs that one checkpoint can continue: model + train params (less EXTENSIBLE),
    the data, the code and the world size. With train.lr_rampdown the learning rate depends on the
    run's length, so a longer run is another run: its total steps join the hash."""
    package = Path(__file__).parent.parent
    train_fields = {k: v for k, v in asdict(train).items() if k not in EXTENSIBLE}
    if train.lr_rampdown > 0:
        train_fields["total_steps"] = total_steps
    blob = json.dumps({
        "model": asdict(model), "train": train_fields,
        "data": manifest_hash(prepared_dir), "world_size": world,
        "code": [hashlib.sha256((package / name).read_bytes()).hexdigest() for name in SOURCES],
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def snapshot_name(epoch: int) -> str:
    """The epoch-boundary copy of the state kept beside last.pt: a shorter run restarts from it."""
    return f"epoch_{epoch:03d}.pt"


def load(directory: Path, expected_hash: str, *, total_steps: int, rank: int, world: int) -> tuple[dict | None, bool]:
    """(state to start from or None, whether it continues last.pt's own run), said in one line.

    last.pt when it belongs to this config and is at or before `total_steps`. When it is past them
    (train.epochs or train.max_steps lowered), the latest epoch snapshot at or before them: the state
    a run of this length from scratch would have had there, so the shorter model is the same bytes.
    Without one, None: train from scratch.

    Rank 0 reads the files and sends the state to the other ranks: under multi-node torchrun only rank
    0's disk has them, and ranks that started at different steps would hang in the first collective.
    """
    out = _pick(directory, expected_hash, total_steps) if rank == 0 else (None, False)
    if world > 1:
        box = [out]
        dist.broadcast_object_list(box, src=0)
        out = box[0]
    return out


def _pick(directory: Path, expected_hash: str, total_steps: int) -> tuple[dict | None, bool]:
    path = directory / CHECKPOINT_NAME
    state = _read(path)
    if state is None:
        _drop_snapshots(directory)
        return None, False
    if state.get("config_hash") != expected_hash:
        print(f"train: checkpoint {path} is from different params, data or code; starting fresh",
              file=sys.stderr)
        _drop_snapshots(directory)
        return None, False
    if state["step"] <= total_steps:
        print(f"train: resuming from {path} at step {state['step']} (MLflow run {state['run_id']})",
              file=sys.stderr)
        return state, True
    for snapshot in sorted(directory.glob("epoch_*.pt"), reverse=True):
        earlier = _read(snapshot)
        if earlier and earlier.get("config_hash") == expected_hash and earlier["step"] <= total_steps:
            print(f"train: {path} is at step {state['step']}, past this run's {total_steps}: restarting from "
                  f"{snapshot.name} (step {earlier['step']}), as this run from scratch would have been there",
                  file=sys.stderr)
            return earlier, False
    print(f"train: {path} is at step {state['step']}, past this run's {total_steps}, and no epoch snapshot "
          "is at or before it: training from scratch", file=sys.stderr)
    return None, False


def _read(path: Path) -> dict | None:
    """The state in `path`, None when there is none; a damaged file stops the run (not silently replaced)."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # our writes are atomic, so a torn file was damaged or copied in from elsewhere
        raise CheckpointError(
            f"{path} is not a readable training checkpoint ({type(e).__name__}: {str(e)[:200]}). Restore it "
            f"(dvc checkout {path.parent}) or delete it to train from scratch (rm {path})"
        ) from e


def _drop_snapshots(directory: Path) -> None:
    """Epoch snapshots of another config (or of a deleted last.pt) can never be resumed: remove them."""
    for snapshot in directory.glob("epoch_*.pt"):
        snapshot.unlink()


def save(path: Path, *, state: dict, snapshot: Path | None = None) -> None:
    """Write `state` to `path` (and to `snapshot`, an epoch's copy), each atomically."""
    for target in (path, snapshot) if snapshot else (path,):
        with atomic_path(target) as tmp:
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
