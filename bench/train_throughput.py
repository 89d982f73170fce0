"""Benchmark: ganops.training.loop.train's img/s (tracking, EMA, checkpoints on) against a bare reference loop.

The reference is the usual tutorial loop: a torchvision-style Dataset that turns each uint8 image into
a PIL image, then ToTensor + Normalize per sample, a DataLoader (shuffle, drop_last), the same nets,
batch and Adam settings, D on real and fake in two passes, no tracking, no EMA, no checkpoints.
Both run in this process on the same data, alternating for --rounds rounds; the medians are compared.

    .venv/bin/python bench/train_throughput.py                # ~2 minutes on 2 CPU cores
    .venv/bin/python bench/train_throughput.py --steps 10 --rounds 1
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms  # noqa: E402

from ganops import params as params_mod  # noqa: E402
from ganops.networks import Discriminator, Generator, NetConfig  # noqa: E402
from ganops.data.prepared import load_manifest, load_split, write_prepared  # noqa: E402
from ganops.training.loop import train  # noqa: E402


class PerSampleImages(Dataset):
    """What torchvision.datasets.FashionMNIST does per item: PIL image, then the transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i], mode="L")), int(self.labels[i])


def reference_loop(*, images: np.ndarray, labels: np.ndarray, cfg: NetConfig, tp, steps: int) -> float:
    """img/s of the bare loop over `steps` generator steps (non-saturating loss, like the default)."""
    torch.manual_seed(tp.seed)
    G, D = Generator(cfg), Discriminator(cfg)
    opt_g = torch.optim.Adam(G.parameters(), lr=tp.lr_g, betas=tuple(tp.betas_g))
    opt_d = torch.optim.Adam(D.parameters(), lr=tp.lr_d, betas=tuple(tp.betas_d))
    loader = DataLoader(PerSampleImages(images, labels), batch_size=tp.batch_size, shuffle=True,
                        drop_last=True)
    start = time.perf_counter()
    done = 0
    for real, y in loader:
        reference_step(G, D, opt_g, opt_d, real, y if cfg.conditional else None, z_dim=cfg.z_dim)
        done += 1
        if done == steps:
            break
    return done * tp.batch_size / (time.perf_counter() - start)


def reference_step(G, D, opt_g, opt_d, real: torch.Tensor, y: torch.Tensor | None, *, z_dim: int) -> None:
    """One step of the tutorial loop: D on real and fake in two passes, then G (non-saturating)."""
    fake = G(torch.randn(real.shape[0], z_dim), y)
    real_logits, fake_logits = D(real, y), D(fake.detach(), y)
    loss_d = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
              + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()
    out = D(fake, y)
    loss_g = F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()


def ganops_loop(*, prepared: Path, params, steps: int, work: Path, round_: int) -> float:
    """img/s of train() itself (its loop time: steps, logging, EMA, checkpoints, the final grid)."""
    # No quality curve: the bench times the loop, and it may run without a classifier.
    tp = dataclasses.replace(params.train, max_steps=steps, epochs=max(params.train.epochs, 1),
                             checkpoint_every=max(1, steps // 3), log_every=max(1, steps // 5),
                             curve_samples=0)
    run = work / f"ganops-{round_}"
    summary = train(params=dataclasses.replace(params, train=tp), prepared_dir=prepared,
                    classifier_dir=run / "unused", reference_dir=run / "unused", model_dir=run / "gan", checkpoint_dir=run / "ckpt", report_dir=run / "reports")
    return summary["img_per_s"]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="generator steps per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating measurements of each loop")
    ap.add_argument("--prepared", default="data/prepared",
                    help="prepared data (default data/prepared; synthetic 60k images if absent)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)

    params = params_mod.load(args.params)
    with tempfile.TemporaryDirectory(prefix="ganops-bench-") as tmp:
        work = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        prepared = Path(args.prepared)
        if (prepared / "manifest.json").exists():
            dataset = load_manifest(prepared)["dataset"]
        else:
            rng = np.random.default_rng(0)
            train_split = (rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8),
                           (np.arange(60000) % 10).astype(np.uint8))
            prepared, dataset = work / "prepared", "synthetic"
            write_prepared(prepared, splits={"train": train_split, "test": train_split}, dataset=dataset,
                           num_classes=10, sources={})
        images, labels = load_split(prepared, "train")
        mp, tp = params.model, params.train
        num_classes = int(load_manifest(prepared)["num_classes"])
        cfg = NetConfig.from_params(mp, num_classes)
        print(f"data: {dataset}, {len(images)} images; {mp.arch} width {mp.width}, batch {tp.batch_size}, "
              f"loss {tp.loss}; {args.steps} steps x {args.rounds} rounds; torch threads "
              f"{torch.get_num_threads()}", flush=True)

        ref, ours = [], []
        for r in range(args.rounds):
            ref.append(reference_loop(images=images, labels=labels, cfg=cfg, tp=tp, steps=args.steps))
            print(f"  round {r + 1}: reference {ref[-1]:.0f} img/s", flush=True)
            ours.append(ganops_loop(prepared=prepared, params=params, steps=args.steps, work=work, round_=r))
            print(f"  round {r + 1}: ganops    {ours[-1]:.0f} img/s", flush=True)
    ref_m, ours_m = statistics.median(ref), statistics.median(ours)
    print(f"reference (DataLoader, ToTensor/Normalize per sample, no tracking): {ref_m:.0f} img/s")
    print(f"ganops.training.loop.train (in-memory data, tracking, EMA, checkpoints): {ours_m:.0f} img/s")
    print(f"ratio: {ours_m / ref_m:.2f}x (target >= 1.5x); one 60k epoch ~ {60000 / ours_m:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
