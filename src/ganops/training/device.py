"""Where and how training runs: device per rank, the torchrun process group, determinism, precision."""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ganops.params import DEVICES, PRECISIONS


@dataclass(frozen=True)
class Process:
    rank: int
    world: int
    device: torch.device


def pick_device(requested: str, *, local_rank: int, local_world: int) -> torch.device:
    """train.device for this rank: CUDA device LOCAL_RANK, or the CPU; a clear error when it cannot be."""
    if requested not in DEVICES:
        raise ValueError(f"unknown train.device '{requested}': choose one of {', '.join(DEVICES)}")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("train.device is cuda but CUDA is not available: set train.device to auto or cpu")
    gpus = torch.cuda.device_count()
    if local_world > gpus:
        raise ValueError(
            f"{local_world} processes on this node but {gpus} CUDA device(s): start torchrun with "
            f"--nproc_per_node={gpus} or fewer, or set train.device: cpu"
        )
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def training_process(requested_device: str):
    """Yield a Process: joins the torchrun group when WORLD_SIZE > 1, makes the CPU deterministic
    (or lets cuDNN pick its fastest kernels on CUDA); on exit restores the caller's settings and
    leaves the group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    device = pick_device(requested_device, local_rank=local_rank, local_world=local_world)
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory, torch.backends.cudnn.benchmark)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotuned kernels pay off at once
    else:
        # Bit-identical runs on the CPU: what the kill-and-resume guarantee rests on. Filling every
        # new tensor with NaN (a debugging aid of this mode) costs ~15% here and changes no result.
        torch.use_deterministic_algorithms(True)
        torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        if world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        yield Process(rank=dist.get_rank() if world > 1 else 0, world=world, device=device)
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.utils.deterministic.fill_uninitialized_memory = saved[1]
        torch.backends.cudnn.benchmark = saved[2]
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def resolve_precision(requested: str, device: torch.device, *, announce: bool) -> str:
    """train.precision as run here: auto is bf16 where the hardware has it natively, else fp32 on
    the CPU (emulated bf16 is slower than fp32) and fp16 with a gradient scaler on CUDA."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown train.precision '{requested}': choose one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    else:
        native_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if requested == "auto":
        return "bf16" if native_bf16 else ("fp16" if device.type == "cuda" else "fp32")
    if requested == "fp16" and device.type != "cuda":
        raise ValueError("train.precision fp16 needs CUDA: use auto, bf16 or fp32 on the CPU")
    if requested == "bf16" and not native_bf16 and announce:
        print(f"train: train.precision is bf16 but this {device.type} has no native bf16: it is emulated "
              "and slower; auto would pick the fastest", file=sys.stderr)
    return requested


def autocast_factory(precision: str, device: torch.device):
    """A callable returning a fresh autocast context per use (an autocast object is not re-entrant)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return functools.partial(torch.autocast, device.type, dtype=dtype or torch.float32,
                             enabled=dtype is not None)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16's loss scaler (its gradients underflow without one); a disabled no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
