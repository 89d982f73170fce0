"""Per-step schedules of training: the EMA generator's decay and the learning-rate ramp-down."""
from __future__ import annotations

import torch

from ganops.params import TrainParams


def ema_beta(tp: TrainParams, *, step: int, batch: int) -> float:
    """The weight of the old average after G step `step` (stylegan2-ada's ema_kimg / ema_rampup): a
    half-life of train.ema_kimg thousand images, early on at most ema_rampup x the images seen, so the
    random initial weights fade out of short runs too. 0 (EMA G = G) when ema_kimg is 0."""
    ema_nimg = tp.ema_kimg * 1000
    if tp.ema_rampup > 0:
        ema_nimg = min(ema_nimg, (step + 1) * batch * tp.ema_rampup)
    return 0.5 ** (batch / ema_nimg) if ema_nimg > 0 else 0.0


def set_lr(optimizers: tuple[tuple[torch.optim.Optimizer, float], ...], scale: float) -> None:
    """Set each (optimizer, base lr) pair's learning rate to base * scale."""
    for opt, lr in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr * scale


def lr_scale(tp: TrainParams, *, step: int, total: int) -> float:
    """The factor on lr_g and lr_d at step `step` of `total`: 1, then over the run's last
    train.lr_rampdown fraction a linear ramp to 0 (each step's lr is its midpoint's, so the last step
    still learns). Adam's step size is proportional to lr: late steps settle instead of oscillating."""
    ramp = tp.lr_rampdown * total
    return min(1.0, (total - step - 0.5) / ramp) if ramp > 0 else 1.0
