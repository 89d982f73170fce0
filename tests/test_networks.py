"""Shapes, ranges, conditioning, DCGAN init and save/load of every generator and discriminator."""
from __future__ import annotations

import json

import pytest
import torch

from ganops.networks import (
    Discriminator,
    Generator,
    NetConfig,
    load_generator,
    save_generator,
)

CONFIGS = [
    NetConfig(arch=arch, z_dim=16, width=8, conditional=conditional, num_classes=10)
    for arch in ("mlp", "dcgan")
    for conditional in (False, True)
]


def _ids(cfg: NetConfig) -> str:
    return f"{cfg.arch}-{'cond' if cfg.conditional else 'uncond'}"


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_shapes_and_ranges(cfg: NetConfig):
    torch.manual_seed(0)
    G, D = Generator(cfg), Discriminator(cfg)
    z = torch.randn(5, cfg.z_dim)
    y = torch.tensor([0, 3, 9, 3, 1]) if cfg.conditional else None
    images = G(z, y)
    assert images.shape == (5, 1, 28, 28)
    assert images.min() >= -1.0 and images.max() <= 1.0
    logits = D(images, y)
    assert logits.shape == (5,)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c.conditional], ids=_ids)
def test_conditional_nets_use_and_require_labels(cfg: NetConfig):
    torch.manual_seed(0)
    G, D = Generator(cfg).eval(), Discriminator(cfg)
    z = torch.randn(1, cfg.z_dim).repeat(2, 1)
    images = G(z, torch.tensor([0, 1]))
    assert not torch.equal(images[0], images[1])  # same z, different class
    x = images[:1].repeat(2, 1, 1, 1).detach()
    logits = D(x, torch.tensor([0, 1]))
    assert logits[0] != logits[1]  # the projection term depends on the label
    with pytest.raises(ValueError, match="conditional: pass labels"):
        G(z)
    with pytest.raises(ValueError, match="conditional: pass labels"):
        D(x)


def test_dcgan_init():
    torch.manual_seed(0)
    cfg = NetConfig(arch="dcgan", z_dim=100, width=64)
    G, D = Generator(cfg), Discriminator(cfg)
    conv_types = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    convs = [m for m in [*G.modules(), *D.modules()] if isinstance(m, conv_types)]
    assert len(convs) == 4
    weights = torch.cat([m.weight.flatten() for m in convs])
    # N(0, 0.02) over ~260k weights: mean and std within a few standard errors.
    assert abs(weights.mean().item()) < 1e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.01)
    bn = [m for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bn) == 2
    scales = torch.cat([m.weight for m in bn])
    assert scales.mean().item() == pytest.approx(1.0, abs=0.01)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bn)


@pytest.mark.parametrize("d_norm", ["batch", "spectral"])
def test_depth_adds_resolution_keeping_convs_to_both_nets(d_norm):
    torch.manual_seed(0)
    shallow = NetConfig(arch="dcgan", z_dim=16, width=8, conditional=True, g_upsample="resize", d_norm=d_norm)
    deep = NetConfig(arch="dcgan", z_dim=16, width=8, conditional=True, g_upsample="resize", d_norm=d_norm, depth=2)
    G, D = Generator(deep), Discriminator(deep)
    y = torch.arange(3)
    x = G(torch.randn(3, 16), y)
    assert x.shape == (3, 1, 28, 28) and D(x, y).shape == (3,)

    def convs(net):
        return [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]

    def shapes(net):
        return [(m.in_channels, m.out_channels, m.kernel_size[0]) for m in convs(net)]

    # Two 3x3 convs per hidden resolution, each keeping its channels, before the resolution changes.
    assert shapes(G) == [(16, 16, 3), (16, 16, 3), (16, 8, 3), (8, 8, 3), (8, 8, 3), (8, 1, 3)]
    assert shapes(D) == [(1, 8, 4), (8, 8, 3), (8, 8, 3), (8, 16, 4), (16, 16, 3), (16, 16, 3)]
    assert shapes(Discriminator(shallow)) == [(1, 8, 4), (8, 16, 4)]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules()) == (5 if d_norm == "batch" else 0)
    assert all(hasattr(m, "parametrizations") == (d_norm == "spectral") for m in convs(D))
    # depth 0 is the original network, state dict keys included (old checkpoints still load).
    assert Generator(shallow).state_dict().keys() == Generator(NetConfig(**{**deep.__dict__, "depth": 0})).state_dict().keys()
    with pytest.raises(ValueError, match="model.depth=1"):
        NetConfig(arch="mlp", depth=1)


def test_pooled_projection_scores_the_label_against_channel_sums():
    """d_projection pooled (Miyato & Koyama's form): one embedding value per channel of D's last
    features, summed over the 7x7 map; flat: one per feature and position."""
    torch.manual_seed(0)
    cfg = NetConfig(arch="dcgan", z_dim=16, width=8, conditional=True, d_norm="batch", d_projection="pooled")
    D = Discriminator(cfg).eval()
    flat = Discriminator(NetConfig(**{**cfg.__dict__, "d_projection": "flat"}))
    assert D.embed.weight.shape == (10, 16) and flat.embed.weight.shape == (10, 16 * 7 * 7)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 3, 3, 9])
    h = D.features(x)
    sums = h.reshape(4, 16, 7, 7).sum(dim=(2, 3))
    torch.testing.assert_close(D(x, y), D.head(h).squeeze(1) + (D.embed.weight[y] * sums).sum(dim=1))
    # The label's term is blind to where a feature is: shifting the 7x7 map leaves it unchanged
    # when pooled, and changes it when flat. Feed D the features directly to shift them.
    shifted = torch.roll(h.reshape(4, 16, 7, 7), 3, dims=3).reshape(4, -1)
    for net in (D, flat):
        net.features = torch.nn.Identity()

    def label_term(net, features):
        return net(features, y) - net.head(features).squeeze(1)

    torch.testing.assert_close(label_term(D, shifted), label_term(D, h))
    assert not torch.allclose(label_term(flat, shifted), label_term(flat, h))
    with pytest.raises(ValueError, match="d_projection=pooled"):
        NetConfig(arch="dcgan", d_projection="pooled")  # unconditional: no projection
    with pytest.raises(ValueError, match="d_projection=pooled"):
        NetConfig(arch="mlp", conditional=True, d_projection="pooled")


def test_net_config_from_params_carries_every_model_key():
    from dataclasses import asdict

    from ganops.params import ModelParams

    mp = ModelParams(width=32, conditional=True, g_upsample="transposed", d_norm="spectral", depth=2,
                     d_projection="pooled")
    cfg = NetConfig.from_params(mp, num_classes=7, resolution=64, channels=3)
    assert asdict(cfg) == {**asdict(mp), "num_classes": 7, "resolution": 64, "channels": 3}


def test_unknown_arch_names_the_choices():
    with pytest.raises(ValueError, match="model.arch 'resnet'.*mlp, dcgan"):
        NetConfig(arch="resnet")


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_save_and_load_generator_round_trip(tmp_path, cfg: NetConfig):
    torch.manual_seed(1)
    G = Generator(cfg).eval()
    save_generator(tmp_path / "gan", G, extra={"lineage": {"mlflow_run_id": "abc"}, "classes": None})
    loaded, meta = load_generator(tmp_path / "gan")
    assert meta["config"]["arch"] == cfg.arch and meta["lineage"] == {"mlflow_run_id": "abc"}
    assert not loaded.training
    z = torch.randn(4, cfg.z_dim)
    y = torch.arange(4) if cfg.conditional else None
    with torch.no_grad():
        assert torch.equal(G(z, y), loaded(z, y))


@pytest.mark.parametrize("resolution", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("arch,depth", [("dcgan", 0), ("dcgan", 1), ("mlp", 0)])
def test_nets_at_every_supported_size_and_channel_count(resolution, channels, arch, depth):
    cfg = NetConfig(arch=arch, z_dim=16, width=8, conditional=True, g_upsample="resize", d_norm="batch",
                    depth=depth, resolution=resolution, channels=channels)
    G, D = Generator(cfg), Discriminator(cfg)
    labels = torch.arange(4) % cfg.num_classes
    images = G(torch.randn(4, 16), labels)
    assert images.shape == (4, channels, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1
    logits = D(images, labels)
    assert logits.shape == (4,)
    logits.sum().backward()  # D's gradient reaches G's every parameter
    assert all(p.grad is not None for p in G.parameters())


def test_a_generator_json_without_resolution_or_channels_is_28_by_28_grayscale(tmp_path):
    # Models saved before colour and other sizes existed still load, as what they were.
    G = Generator(NetConfig(z_dim=16, width=8))
    save_generator(tmp_path, G)
    meta = json.loads((tmp_path / "generator.json").read_text())
    for key in ("resolution", "channels"):
        del meta["config"][key]
    (tmp_path / "generator.json").write_text(json.dumps(meta))
    loaded, _ = load_generator(tmp_path)
    assert loaded.cfg.image_shape == (1, 28, 28)
    assert loaded(torch.zeros(2, 16)).shape == (2, 1, 28, 28)


def test_unsupported_sizes_are_refused():
    with pytest.raises(ValueError, match="the nets take 28/32/64 px and 1/3 channel"):
        NetConfig(resolution=48)
