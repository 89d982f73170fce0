"""Differentiable augmentation of the images D sees (DiffAugment, Zhao et al. 2020): translation, cutout.

The same random transform family is applied to real and fake images in the D step and to fakes in
the G step, so D cannot tell them apart by the augmentation and G gets gradients through it. No
flips: a mirrored digit is another symbol. Fill value -1 is the background of these datasets.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

TRANSLATION_RATIO = 0.125  # largest shift, as a fraction of the side (DiffAugment's default)
CUTOUT_RATIO = 0.5  # side of the erased square, as a fraction of the side (DiffAugment's default)
BACKGROUND = -1.0


def diff_augment(x: torch.Tensor, policies: Sequence[str]) -> torch.Tensor:
    """Apply each policy in order with fresh per-sample randomness from torch's RNG on x's device.

    x: [B, C, H, W] in [-1, 1]. Differentiable with respect to x. `()` returns x itself.
    The names are params.AUGMENT_POLICIES, checked when params.yaml is read.
    """
    for name in policies:
        if name == "translation":
            x = _translation(x)
        elif name == "cutout":
            x = _cutout(x)
        else:
            raise ValueError(f"unknown augmentation policy '{name}'")
    return x


def _translation(x: torch.Tensor) -> torch.Tensor:
    """Shift each image by up to ±int(ratio·side + 0.5) pixels (4 at 28) on each axis, filling with the background."""
    b, _, h, w = x.shape
    sy, sx = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    ty = torch.randint(-sy, sy + 1, (b, 1, 1), device=x.device)
    tx = torch.randint(-sx, sx + 1, (b, 1, 1), device=x.device)
    gy = torch.arange(h, device=x.device).view(1, h, 1)
    gx = torch.arange(w, device=x.device).view(1, 1, w)
    padded = F.pad(x, [sx, sx, sy, sy], value=BACKGROUND)
    rows, cols = (gy + ty + sy).expand(b, h, w), (gx + tx + sx).expand(b, h, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    # Advanced indexing puts the channel axis last: [B, H, W, C] -> [B, C, H, W].
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor) -> torch.Tensor:
    """Erase one square of side ratio·side per image, at a random centre, to the background."""
    b, _, h, w = x.shape
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    gy = torch.arange(h, device=x.device).view(1, h, 1)
    gx = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((gy - cy + ch // 2) >= 0) & ((gy - cy + ch // 2) < ch) & \
             ((gx - cx + cw // 2) >= 0) & ((gx - cx + cw // 2) < cw)
    return torch.where(inside.unsqueeze(1), torch.full_like(x, BACKGROUND), x)
