"""GAN losses on discriminator logits (minimax, non-saturating, hinge, WGAN-GP) and the gradient penalty."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganops.params import LOSSES


def unknown_loss(loss: str) -> ValueError:
    """The error for a train.loss that is not one of LOSSES."""
    return ValueError(f"unknown train.loss '{loss}' in params.yaml: choose one of {', '.join(LOSSES)}")


def d_loss(loss: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss (to minimise), a scalar; logits are [B] floats.

    With D(x) = sigmoid(logit): log D(x) = -softplus(-logit) and log(1 - D(x)) = -softplus(logit),
    which stay finite where the naive log(sigmoid(...)) underflows.
    """
    if loss == "minimax" or loss == "non_saturating":
        # Both maximise log D(x) + log(1 - D(G(z))) for D (Goodfellow et al. 2014); they differ in G.
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    elif loss == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    elif loss == "wgan_gp":
        # The critic's Wasserstein estimate, negated; the gradient penalty is added by the caller.
        return fake_logits.mean() - real_logits.mean()
    else:
        raise unknown_loss(loss)


def g_loss(loss: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's loss (to minimise), a scalar."""
    if loss == "minimax":
        # G minimises log(1 - D(G(z))) exactly as in the minimax game; it saturates early in training.
        return -F.softplus(fake_logits).mean()
    elif loss == "non_saturating":
        # G maximises log D(G(z)) instead: same fixed point, strong gradients when D rejects fakes.
        return F.softplus(-fake_logits).mean()
    elif loss == "hinge" or loss == "wgan_gp":
        return -fake_logits.mean()
    else:
        raise unknown_loss(loss)


def gradient_penalty(
    D: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """WGAN-GP's penalty (Gulrajani et al. 2017): mean over the batch of (||grad_x D(x_hat)||_2 - 1)^2.

    x_hat = alpha * real + (1 - alpha) * fake with alpha ~ U[0, 1) per sample (drawn from torch's
    global RNG unless given as [B]). The graph is kept so the penalty can be backpropagated into D.
    """
    if alpha is None:
        alpha = torch.rand(real.shape[0], device=real.device)
    alpha = alpha.to(real.dtype).view(-1, *([1] * (real.dim() - 1)))
    x_hat = (alpha * real.detach() + (1.0 - alpha) * fake.detach()).requires_grad_(True)
    out = D(x_hat, labels)
    (grad,) = torch.autograd.grad(out.float().sum(), x_hat, create_graph=True)
    norms = grad.flatten(1).float().norm(2, dim=1)
    return ((norms - 1.0) ** 2).mean()


def r1_penalty(D: nn.Module, real: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): mean over the batch of ||grad_x D(x)||^2 at real images.

    It pulls D's gradient on the data to zero, which keeps the game near its equilibrium without
    constraining D elsewhere. The caller scales it by gamma / 2 (and by the lazy interval).
    """
    x = real.detach().requires_grad_(True)
    out = D(x, labels)
    (grad,) = torch.autograd.grad(out.float().sum(), x, create_graph=True)
    return grad.flatten(1).float().square().sum(dim=1).mean()
