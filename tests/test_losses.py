"""The four GAN losses and the gradient penalty against their formulas on fixed numbers."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ganops.training import losses

REAL = torch.tensor([2.0, -1.0, 0.0])
FAKE = torch.tensor([-3.0, 0.5, 1.0])


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


# The papers' formulas, written naively in float64 (fine for these moderate logits).
MINIMAX_V = _mean(math.log(_sigmoid(r)) for r in REAL.tolist()) + _mean(
    math.log(1.0 - _sigmoid(f)) for f in FAKE.tolist()
)


def test_minimax_is_the_value_function_of_the_game():
    # D maximises V = E log D(x) + E log(1 - D(G(z))), i.e. minimises -V; G minimises E log(1 - D(G(z))).
    assert losses.d_loss("minimax", REAL, FAKE).item() == pytest.approx(-MINIMAX_V, rel=1e-6)
    assert losses.d_loss("minimax", REAL, FAKE).item() == pytest.approx(1.4897543007977374, rel=1e-6)
    g = _mean(math.log(1.0 - _sigmoid(f)) for f in FAKE.tolist())
    assert losses.g_loss("minimax", FAKE).item() == pytest.approx(g, rel=1e-6)
    assert losses.g_loss("minimax", FAKE).item() == pytest.approx(-0.7786420077573571, rel=1e-6)


def test_non_saturating_shares_d_and_maximises_log_d_for_g():
    assert losses.d_loss("non_saturating", REAL, FAKE).item() == pytest.approx(1.4897543007977374, rel=1e-6)
    g = -_mean(math.log(_sigmoid(f)) for f in FAKE.tolist())
    assert losses.g_loss("non_saturating", FAKE).item() == pytest.approx(g, rel=1e-6)
    assert losses.g_loss("non_saturating", FAKE).item() == pytest.approx(1.278642007757357, rel=1e-6)


def test_hinge():
    # mean(relu(1 - [2, -1, 0])) + mean(relu(1 + [-3, 0.5, 1])) = 3/3 + 3.5/3
    assert losses.d_loss("hinge", REAL, FAKE).item() == pytest.approx(6.5 / 3, rel=1e-7)
    # -mean([-3, 0.5, 1]) = 0.5
    assert losses.g_loss("hinge", FAKE).item() == 0.5


def test_wgan_critic_and_generator():
    # mean(fake) - mean(real) = -0.5 - 1/3
    assert losses.d_loss("wgan_gp", REAL, FAKE).item() == pytest.approx(-2.5 / 3, rel=1e-7)
    assert losses.g_loss("wgan_gp", FAKE).item() == 0.5


def test_bce_forms_are_stable_where_naive_logs_overflow():
    # The naive log(sigmoid(-100)) is -inf in float32; softplus gives the exact 100.
    big = torch.tensor([100.0])
    assert losses.d_loss("non_saturating", -big, big).item() == 200.0
    assert losses.g_loss("non_saturating", -big).item() == 100.0
    assert losses.g_loss("minimax", big).item() == -100.0
    # 2 * softplus(-100) = 2e^-100, a float32 denormal: tiny and finite rather than a NaN.
    assert 0.0 < losses.d_loss("minimax", big, -big).item() < 1e-40


def test_unknown_loss_names_the_param():
    with pytest.raises(ValueError, match="train.loss 'wgan'.*minimax, non_saturating, hinge, wgan_gp"):
        losses.d_loss("wgan", REAL, FAKE)
    with pytest.raises(ValueError, match="train.loss 'lsgan'"):
        losses.g_loss("lsgan", FAKE)


class _Quadratic(nn.Module):
    """D(x) = 0.5 * ||x||^2, so grad_x D = x and the penalty is (||x_hat|| - 1)^2."""

    def forward(self, x, labels=None):
        return 0.5 * (x**2).flatten(1).sum(1)


def test_gradient_penalty_on_the_interpolates():
    real = torch.zeros(2, 1, 2, 2)
    fake = torch.zeros(2, 1, 2, 2)
    real[:, 0, 0, 0] = 3.0
    fake[:, 0, 0, 1] = 4.0
    # alpha 0.5 -> x_hat = (1.5, 2, 0, 0), norm 2.5, penalty 2.25; alpha 1 -> x_hat = real, norm 3, penalty 4.
    gp = losses.gradient_penalty(_Quadratic(), real, fake, None, alpha=torch.tensor([0.5, 1.0]))
    assert gp.item() == 3.125


def test_gradient_penalty_backpropagates_into_d():
    D = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        D[1].weight.copy_(torch.tensor([[3.0, 0.0, 0.0, 0.0]]))
    linear = lambda x, labels=None: D(x).squeeze(1)  # noqa: E731
    real, fake = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    gp = losses.gradient_penalty(linear, real, fake, None)
    # grad_x D = w for every x_hat: penalty (||w|| - 1)^2 = 4; d/dw = 2 (||w|| - 1) w / ||w|| = (4, 0, 0, 0).
    assert gp.item() == 4.0
    gp.backward()
    assert torch.equal(D[1].weight.grad, torch.tensor([[4.0, 0.0, 0.0, 0.0]]))
