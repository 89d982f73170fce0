"""Seeds to latents and generator outputs to pixels: NumPy only, identical on every runtime."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_SEED = 2**63 - 1  # PCG64 takes any non-negative int; keep seeds within int64 for JSON and URLs


def latent(seed: int, z_dim: int) -> np.ndarray:
    """The latent of one seed: `z_dim` standard normals from NumPy's `Generator(PCG64(seed))`.

    This is the one definition of seed -> z. Training grids, evaluate, export's parity check and
    serving all call it, so `seed 7` names the same image on every machine and runtime.
    """
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [0, {MAX_SEED}], got {seed}")
    return np.random.Generator(np.random.PCG64(seed)).standard_normal(z_dim, dtype=np.float32)


def latents(seeds: Sequence[int], z_dim: int) -> np.ndarray:
    """Stack `latent(seed)` for each seed: float32 array [len(seeds), z_dim]."""
    out = np.empty((len(seeds), z_dim), dtype=np.float32)
    for i, seed in enumerate(seeds):
        out[i] = latent(int(seed), z_dim)
    return out


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Generator output in [-1, 1], [N, 1, H, W] -> uint8 pixels [N, H, W]; [N, 3, H, W] -> [N, H, W, 3]
    (the layout of data/prepared, PNG and Pillow)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 4:
        images = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)
    return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(images: np.ndarray, ncol: int = 8, pad: int = 2) -> np.ndarray:
    """Tile uint8 images [N, H, W] (or RGB [N, H, W, 3]) into one uint8 image with `ncol` columns and
    `pad` pixel gaps."""
    n, h, w = images.shape[:3]
    ncol = max(1, min(ncol, n))
    nrow = -(-n // ncol)
    out = np.zeros((nrow * (h + pad) + pad, ncol * (w + pad) + pad, *images.shape[3:]), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y : y + h, x : x + w] = images[i]
    return out
