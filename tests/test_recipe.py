"""The recipe's components on their own: DiffAugment, the EMA schedule, EMA batch-norm statistics,
network variants, R1, and the device / precision choices."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ganops.training import augment, device, losses
from ganops.networks import Discriminator, Generator, NetConfig, ResizeConv
from ganops.params import TrainParams
from ganops.training.schedules import ema_beta, lr_scale
from ganops.training.loop import BN_BATCH, _ema_update, _recompute_bn_stats


def _images(b: int = 6) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(b, 1, 28, 28) * 2 - 1


def test_translation_shifts_each_image_within_four_pixels_filling_with_background():
    x = _images()
    torch.manual_seed(1)
    out = augment.diff_augment(x, ["translation"])
    pad = torch.nn.functional.pad(x, [4, 4, 4, 4], value=-1.0)  # int(28 * 0.125 + 0.5) = 4
    shifts = []
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
                 if torch.equal(out[i], pad[i, :, 4 + dy : 32 + dy, 4 + dx : 32 + dx])]
        assert len(found) == 1, i
        shifts.append(found[0])
    assert len(set(shifts)) > 1  # per-sample shifts, not one for the batch


def test_cutout_erases_one_14px_square_per_image_and_passes_gradients():
    x = _images().requires_grad_(True)
    out = augment.diff_augment(x, ["cutout"])
    for i in range(len(x)):
        changed = (out[i, 0] != x[i, 0]).nonzero()
        erased = out[i, 0] == -1.0
        rows, cols = erased.any(dim=1).nonzero(), erased.any(dim=0).nonzero()
        assert len(changed) > 0 and bool((out[i, 0][changed[:, 0], changed[:, 1]] == -1.0).all())
        # Erased pixels lie in one square of side <= 14 (clipped at the border).
        assert rows.max() - rows.min() < 14 and cols.max() - cols.min() < 14
    out.sum().backward()
    assert bool((x.grad == 0).any()) and bool((x.grad == 1).any())  # erased pixels get no gradient


def test_no_policy_is_the_identity_and_unknown_policies_are_refused():
    x = _images()
    assert augment.diff_augment(x, ()) is x
    with pytest.raises(ValueError, match="unknown train.augment policy 'flip'"):
        TrainParams(augment=("translation", "flip"))
    with pytest.raises(ValueError, match="lists a policy twice"):
        TrainParams(augment=("cutout", "cutout"))
    with pytest.raises(ValueError, match="unknown augmentation policy 'flip'"):
        augment.diff_augment(x, ("flip",))  # called directly, without TrainParams's check


def test_ema_half_life_is_ema_kimg_thousand_images_after_the_ramp_up():
    tp = TrainParams(ema_kimg=10.0, ema_rampup=0.05)
    # Late in training: beta ** (10,000 / 128 steps) is one half.
    beta = ema_beta(tp, step=100_000, batch=128)
    assert beta ** (10_000 / 128) == pytest.approx(0.5)
    # Early on, the half-life is 5% of the images seen: after 1,000 steps, 6,400 images.
    early = ema_beta(tp, step=999, batch=128)
    assert early ** (6_400 / 128) == pytest.approx(0.5)
    assert ema_beta(dataclasses.replace(tp, ema_kimg=0.0), step=5, batch=128) == 0.0  # EMA off: G itself


def test_lr_ramp_down_is_linear_to_zero_over_the_last_fraction_of_the_run():
    tp = TrainParams(lr_rampdown=0.5)
    # 10 steps, the last 5 ramped: each step takes the lr of its midpoint.
    assert [lr_scale(tp, step=s, total=10) for s in range(10)] == pytest.approx(
        [1, 1, 1, 1, 1, 0.9, 0.7, 0.5, 0.3, 0.1])
    assert [lr_scale(TrainParams(lr_rampdown=1.0), step=s, total=4) for s in range(4)] == pytest.approx(
        [0.875, 0.625, 0.375, 0.125])
    assert {lr_scale(TrainParams(), step=s, total=10) for s in range(10)} == {1.0}  # 0: constant


def test_ema_update_averages_parameters_and_copies_bn_statistics_only_when_asked():
    cfg = NetConfig("dcgan", 8, 4)
    ema, model = Generator(cfg), Generator(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        for b in model.buffers():
            b.add_(3)
    before_p = [p.clone() for p in ema.parameters()]
    before_b = [b.clone() for b in ema.buffers()]
    _ema_update(ema, model, 0.75, copy_bn=False)
    for p0, p, pm in zip(before_p, ema.parameters(), model.parameters()):
        assert torch.allclose(p, 0.75 * p0 + 0.25 * pm)
    assert all(torch.equal(b0, b) for b0, b in zip(before_b, ema.buffers()))
    _ema_update(ema, model, 0.75, copy_bn=True)
    assert all(torch.equal(b, bm) for b, bm in zip(ema.buffers(), model.buffers()))


def test_recomputed_bn_statistics_are_the_ema_weights_own_batch_statistics():
    cfg = NetConfig("dcgan", 8, 4)
    G = Generator(cfg).eval()
    z = torch.randn(2 * BN_BATCH, 8)
    _recompute_bn_stats(G, z, None)
    first_bn = G.body[2]
    # The first BN sees Linear(z) reshaped: its running mean is the mean over samples and pixels.
    h = G.body[1](G.body[0](z))
    assert torch.allclose(first_bn.running_mean, h.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not G.training and first_bn.momentum == 0.1
    again = Generator(cfg).eval()
    again.load_state_dict(G.state_dict())
    _recompute_bn_stats(again, z, None)
    assert torch.equal(again.body[2].running_var, first_bn.running_var)  # deterministic


@pytest.mark.parametrize("g_upsample,d_norm", [("resize", "batch"), ("transposed", "spectral"), ("resize", "none")])
def test_network_variants_have_the_right_shapes_and_layers(g_upsample, d_norm):
    cfg = NetConfig("dcgan", 16, 8, conditional=True, g_upsample=g_upsample, d_norm=d_norm)
    G, D = Generator(cfg), Discriminator(cfg)
    y = torch.arange(4) % 10
    x = G(torch.randn(4, 16), y)
    assert x.shape == (4, 1, 28, 28) and D(x, y).shape == (4,)
    kinds = {type(m).__name__ for m in G.modules()}
    assert ("ConvTranspose2d" in kinds) == (g_upsample == "transposed")
    assert ("Upsample" in kinds) == (g_upsample == "resize")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules()) == (d_norm == "batch")
    assert hasattr(D.features[0], "parametrizations") == (d_norm == "spectral")
    with pytest.raises(ValueError, match="unknown model.d_norm 'layer'"):
        NetConfig("dcgan", d_norm="layer")


@pytest.mark.parametrize("c_in,c_out,bias", [(5, 3, True), (4, 1, False)])
def test_resize_conv_at_low_resolution_equals_upsample_then_conv(c_in, c_out, bias):
    torch.manual_seed(0)
    layer = ResizeConv(torch.nn.Upsample(scale_factor=2, mode="nearest"),
                       torch.nn.Conv2d(c_in, c_out, 3, 1, 1, bias=bias))
    plain = torch.nn.Sequential(*layer)  # the same modules, computed the textbook way
    x = torch.randn(3, c_in, 7, 6, dtype=torch.float64, requires_grad=True)
    layer.double()
    out = layer(x)
    expected = plain(x)
    assert out.shape == (3, c_out, 14, 12)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)
    # Gradients reach the 3x3 kernel (and the input) as through the plain layers.
    grads = torch.autograd.grad(out.square().sum(), [x, layer[1].weight])
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, layer[1].weight])
    for g, e in zip(grads, expected_grads):
        assert torch.allclose(g, e, rtol=0, atol=1e-10)
    # Same state-dict keys as nn.Sequential(Upsample, Conv2d): earlier generator.pt files load.
    assert set(layer.state_dict()) == set(plain.state_dict()) == {"1.weight", *(["1.bias"] if bias else [])}


def test_r1_is_the_squared_input_gradient_norm():
    # D(x) = sum(w * x): its input gradient is w for every sample, so R1 = |w|^2.
    w = torch.randn(1, 1, 28, 28)

    class Linear(torch.nn.Module):
        def forward(self, x, labels=None):
            return (x * w).flatten(1).sum(dim=1)

    assert losses.r1_penalty(Linear(), _images()).item() == pytest.approx(w.square().sum().item(), rel=1e-5)


def test_device_and_precision_choices_fail_clearly_where_they_cannot_run():
    assert device.pick_device("cpu", local_rank=3, local_world=8).type == "cpu"
    with pytest.raises(ValueError, match="unknown train.device 'tpu'"):
        device.pick_device("tpu", local_rank=0, local_world=1)
    if not torch.cuda.is_available():
        assert device.pick_device("auto", local_rank=1, local_world=2).type == "cpu"
        with pytest.raises(ValueError, match="CUDA is not available"):
            device.pick_device("cuda", local_rank=0, local_world=1)
    else:
        with pytest.raises(ValueError, match="--nproc_per_node"):
            device.pick_device("cuda", local_rank=0, local_world=torch.cuda.device_count() + 1)
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        device.resolve_precision("fp16", cpu, announce=False)
    assert device.resolve_precision("fp32", cpu, announce=False) == "fp32"
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert device.resolve_precision("auto", cpu, announce=False) == ("bf16" if native else "fp32")
    assert not device.grad_scaler("bf16", cpu).is_enabled()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_auto_precision_and_fp16_scaler():
    cuda = torch.device("cuda", 0)
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert device.resolve_precision("auto", cuda, announce=False) == ("bf16" if native else "fp16")
    assert device.grad_scaler("fp16", cuda).is_enabled()
