"""Paths between two latents for the interpolation strip: slerp (the default) and lerp."""
from __future__ import annotations

import numpy as np


def slerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """`steps` latents from a to b along the great circle (White 2016), float32 [steps, z_dim].

    Spherical rather than linear: midpoints of a straight line have a smaller norm than Gaussian
    latents ever do, so lerp's middle images are washed out. Falls back to lerp for parallel a, b.
    """
    t = np.linspace(0.0, 1.0, steps)[:, None]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = np.dot(a64, b64) / (np.linalg.norm(a64) * np.linalg.norm(b64))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if np.sin(omega) < 1e-6:
        return lerp(a, b, steps)
    out = ((np.sin((1 - t) * omega) * a64 + np.sin(t * omega) * b64) / np.sin(omega)).astype(np.float32)
    out[0], out[-1] = a, b  # exact ends: the strip starts and ends with the seeds' own images
    return out


def lerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """`steps` latents on the straight line from a to b, float32 [steps, z_dim]."""
    t = np.linspace(0.0, 1.0, steps, dtype=np.float64)[:, None]
    return ((1 - t) * a.astype(np.float64) + t * b.astype(np.float64)).astype(np.float32)
