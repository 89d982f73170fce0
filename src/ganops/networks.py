"""Generator and discriminator networks (MLP and DCGAN), and saving a generator with its config."""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ganops.fileio import write_bytes, write_json
from ganops.params import ARCHS, CHANNELS, D_NORMS, D_PROJECTIONS, G_UPSAMPLES, RESOLUTIONS, ModelParams


@dataclass(frozen=True)
class NetConfig:
    """Everything needed to rebuild a network: stored beside the weights as JSON."""

    arch: str = "dcgan"
    z_dim: int = 100
    width: int = 64
    conditional: bool = False
    num_classes: int = 10
    g_upsample: str = "transposed"
    d_norm: str = "none"
    depth: int = 0  # dcgan: extra 3x3 convs at each of G's and D's two hidden resolutions
    d_projection: str = "flat"  # conditional dcgan D: project the label on flat or channel-pooled features
    # The images (data/prepared's): generator.json files written before these keys are 28x28 grayscale.
    resolution: int = 28
    channels: int = 1

    def __post_init__(self):
        for key, value, choices in (("arch", self.arch, ARCHS), ("g_upsample", self.g_upsample, G_UPSAMPLES),
                                    ("d_norm", self.d_norm, D_NORMS),
                                    ("d_projection", self.d_projection, D_PROJECTIONS)):
            if value not in choices:
                raise ValueError(f"unknown model.{key} '{value}': choose one of {', '.join(choices)}")
        if self.depth < 0 or (self.depth and self.arch != "dcgan"):
            raise ValueError(f"model.depth={self.depth}: must be >= 0, and 0 unless model.arch is dcgan")
        if self.d_projection != "flat" and not (self.conditional and self.arch == "dcgan"):
            raise ValueError(f"model.d_projection={self.d_projection}: only a conditional dcgan D projects")
        if self.resolution not in RESOLUTIONS or self.channels not in CHANNELS:
            raise ValueError(f"images of {self.resolution} px and {self.channels} channel(s): the nets take "
                             f"{'/'.join(map(str, RESOLUTIONS))} px and {'/'.join(map(str, CHANNELS))} channel(s)")

    @property
    def base(self) -> int:
        """Side of the dcgan's lowest-resolution map: two x2 steps up to the image (7, 8 or 16 px)."""
        return self.resolution // 4

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.channels, self.resolution, self.resolution

    @classmethod
    def from_params(cls, model: ModelParams, num_classes: int, *, resolution: int = 28,
                    channels: int = 1) -> NetConfig:
        """The nets that params.yaml's `model` section describes, for data with `num_classes` classes
        of `resolution`-px images with `channels` channels (data/prepared's manifest says which)."""
        return cls(**asdict(model), num_classes=num_classes, resolution=resolution, channels=channels)


def _init_dcgan(module: nn.Module) -> None:
    """DCGAN init (Radford et al. 2015): conv and linear N(0, 0.02), batch-norm scale N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _g_convs(depth: int, channels: int) -> list[nn.Module]:
    """`depth` 3x3 conv + batch norm + ReLU layers that keep G's resolution and channels."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
    return layers


def _d_convs(depth: int, channels: int, batch_norm: bool) -> list[nn.Module]:
    """`depth` 3x3 conv (+ batch norm) + LeakyReLU layers that keep D's resolution and channels."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        norm = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
        layers += [nn.Conv2d(channels, channels, 3, 1, 1, bias=not batch_norm), norm, nn.LeakyReLU(0.2, inplace=True)]
    return layers


def _upsample(kind: str, c_in: int, c_out: int, *, bias: bool) -> nn.Module:
    """x2 upsampling: a stride-2 transposed conv, or nearest resize + 3x3 conv (Odena et al. 2016:
    a 4x4 kernel at stride 2 overlaps unevenly, which draws the checkerboard; a resize cannot)."""
    if kind == "transposed":
        return nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=bias)
    return ResizeConv(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=bias))


def fold_resize_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 kernel [C_out, C_in, 3, 3] applied after a nearest x2 upsample, as four 3x3 kernels at
    the low resolution [C_out * 4, C_in, 3, 3], one per output phase (row parity a, column parity b),
    ordered for pixel_shuffle. Output row 2i+a sees input rows i-1, i, i (a=0) or i, i, i+1 (a=1),
    so each phase sums two of the kernel's rows into one and leaves a zero row; likewise columns."""
    def phases(w: torch.Tensor, dim: int) -> torch.Tensor:  # [..., 3 at dim, ...] -> [2, ..., 3, ...]
        w0, w1, w2 = w.unbind(dim)
        zero = torch.zeros_like(w0)
        return torch.stack([torch.stack([w0, w1 + w2, zero], dim), torch.stack([zero, w0 + w1, w2], dim)])
    rows = phases(weight, 2)  # [2(a), C_out, C_in, 3, 3]
    both = phases(rows, 4)  # [2(b), 2(a), C_out, C_in, 3, 3]
    return both.permute(2, 1, 0, 3, 4, 5).reshape(-1, weight.shape[1], 3, 3)


class ResizeConv(nn.Sequential):
    """Nearest x2 upsample then a 3x3 conv, computed at the low resolution: the folded kernel
    (fold_resize_kernel) and pixel_shuffle give the same output up to float rounding, without the
    4x larger upsampled tensor. Measured on this CPU (batch 500, bf16, forward + backward): 64 -> 1
    channels at 14 -> 28 px 683 -> 48 ms, 128 -> 64 at 7 -> 14 px 473 -> 228 ms. The children stay
    (Upsample, Conv2d), so the state dict is that of the plain nn.Sequential."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self[1]
        bias = None if conv.bias is None else conv.bias.repeat_interleave(4)
        return nn.functional.pixel_shuffle(nn.functional.conv2d(x, fold_resize_kernel(conv.weight), bias, padding=1), 2)


# In both nets activations run in place (~10% more img/s on the CPU): no layer here needs its output
# un-activated for backward (convs, linears and batch norm save their inputs).
class Generator(nn.Module):
    """z [B, z_dim] (and labels [B] when conditional) -> images [B, C, R, R] in [-1, 1] (cfg.image_shape)."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        in_dim = cfg.z_dim * 2 if cfg.conditional else cfg.z_dim
        # A label is embedded to a z-sized vector and concatenated to z.
        self.embed = nn.Embedding(cfg.num_classes, cfg.z_dim) if cfg.conditional else None
        w, s, pixels = cfg.width, cfg.base, cfg.channels * cfg.resolution ** 2
        if cfg.arch == "mlp":
            self.body = nn.Sequential(
                nn.Linear(in_dim, 4 * w), nn.LeakyReLU(0.2, inplace=True),
                nn.Linear(4 * w, 8 * w), nn.LeakyReLU(0.2, inplace=True),
                nn.Linear(8 * w, 16 * w), nn.LeakyReLU(0.2, inplace=True),
                nn.Linear(16 * w, pixels), nn.Tanh(),
            )
        else:
            self.body = nn.Sequential(
                nn.Linear(in_dim, 2 * w * s * s, bias=False),
                nn.Unflatten(1, (2 * w, s, s)),
                nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
                *_g_convs(cfg.depth, 2 * w),
                _upsample(cfg.g_upsample, 2 * w, w, bias=False),  # 7 -> 14 (8 -> 16, 16 -> 32)
                nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                *_g_convs(cfg.depth, w),
                _upsample(cfg.g_upsample, w, cfg.channels, bias=True),  # 14 -> 28 (16 -> 32, 32 -> 64)
                nn.Tanh(),
            )
        self.apply(_init_dcgan)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("this generator is conditional: pass labels")
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.body(z).view(-1, *self.cfg.image_shape)


class Discriminator(nn.Module):
    """images [B, C, R, R] (and labels when conditional) -> logits [B]; projection when conditional."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        w, s = cfg.width, cfg.base
        if cfg.arch == "mlp":
            feat = 4 * w
            self.features = nn.Sequential(
                nn.Flatten(),
                nn.Linear(cfg.channels * cfg.resolution ** 2, 8 * w), nn.LeakyReLU(0.2, inplace=True),
                nn.Linear(8 * w, feat), nn.BatchNorm1d(feat) if cfg.d_norm == "batch" else nn.Identity(),
                nn.LeakyReLU(0.2, inplace=True),
            )
        else:
            # d_norm "batch" normalises after the second conv as in Radford et al. (it couples the
            # samples of a batch, so not with per-sample gradient penalties); "spectral" bounds each
            # layer's Lipschitz constant (Miyato et al. 2018) instead.
            feat = 2 * w * s * s
            norm = nn.BatchNorm2d(2 * w) if cfg.d_norm == "batch" else nn.Identity()
            self.features = nn.Sequential(
                nn.Conv2d(cfg.channels, w, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),  # 28 -> 14
                *_d_convs(cfg.depth, w, cfg.d_norm == "batch"),
                nn.Conv2d(w, 2 * w, 4, 2, 1, bias=cfg.d_norm != "batch"), norm,  # 14 -> 7
                nn.LeakyReLU(0.2, inplace=True),
                *_d_convs(cfg.depth, 2 * w, cfg.d_norm == "batch"),
                nn.Flatten(),
            )
        self.head = nn.Linear(feat, 1)
        # Projection discriminator (Miyato & Koyama 2018): logit += <embed(y), phi(x)>. "flat": phi is
        # every feature of the last map (7x7 at 28 px), so a class can score a spatial template; "pooled": each channel summed
        # over the map, as in the paper, so a class can only score which features are present.
        self.pool = cfg.d_projection == "pooled"
        proj = 2 * w if self.pool else feat
        self.embed = nn.Embedding(cfg.num_classes, proj) if cfg.conditional else None
        self.apply(_init_dcgan)
        if cfg.d_norm == "spectral":
            # After the init: the parametrization wraps the initialised weights. The embedding is
            # left as is, as in Miyato & Koyama's projection discriminator.
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.utils.parametrizations.spectral_norm(module)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)
        out = self.head(h).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("this discriminator is conditional: pass labels")
            phi = h.view(h.shape[0], self.embed.embedding_dim, -1).sum(dim=2) if self.pool else h
            out = out + (self.embed(labels) * phi).sum(dim=1)
        return out


def save_generator(directory: str | Path, generator: Generator, extra: dict | None = None) -> None:
    """Write `generator.pt` (state dict) and `generator.json` (NetConfig + `extra`) atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"config": asdict(generator.cfg), **(extra or {})}
    state = {k: v.detach().cpu() for k, v in generator.state_dict().items()}
    # Through memory: torch.save names the zip's records after the file, and the atomic temp name
    # is random; same weights must give the same bytes (the same DVC hash).
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(directory / "generator.pt", buf.getvalue())
    write_json(directory / "generator.json", meta)


def load_generator(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Generator, dict]:
    """Rebuild the generator saved by `save_generator`; returns (generator in eval mode, its JSON)."""
    directory = Path(directory)
    meta_path, weights = directory / "generator.json", directory / "generator.pt"
    for p in (meta_path, weights):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: run the train stage first (dvc repro train)")
    meta = json.loads(meta_path.read_text())
    generator = Generator(NetConfig(**meta["config"]))
    generator.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return generator.to(device).eval(), meta

