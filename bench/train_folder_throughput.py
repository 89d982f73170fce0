"""Benchmark: training img/s on a folder of images at 32 and 64 px, 1 and 3 channels, against the
anchor's way (pytorch/examples' DCGAN: torchvision ImageFolder + Resize + CenterCrop + ToTensor +
Normalize, a DataLoader with 2 workers) on the same nets, in one run.

For each shape it writes a folder of PNGs (smooth random colour blobs, 80x60 px, so each one is
decoded, resized and cropped like a photo would be), prepares it once with ganops' prepare stage
(timed apart: it runs once per dataset, not per epoch), then alternates the two loops for --rounds
rounds of --steps generator steps: ganops.training.loop.train (the prepared arrays memory-mapped,
tracking, EMA, checkpoints) and the bare reference loop (D on real and fake, G step, nothing else).
Both use params.yaml's model and train sections (precision: auto is fp32 without native bf16).

    .venv/bin/python bench/train_folder_throughput.py                 # ~25 minutes on 2 CPU cores
    .venv/bin/python bench/train_folder_throughput.py --steps 5 --shapes 32x1
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

from ganops import params as params_mod  # noqa: E402
from ganops.data.datasets import fetch  # noqa: E402
from ganops.data.prepare import prepare  # noqa: E402
from ganops.networks import Discriminator, Generator, NetConfig  # noqa: E402
from ganops.training.loop import train  # noqa: E402
from train_throughput import reference_step  # noqa: E402  (bench/ is on sys.path)


def write_folder(root: Path, n: int, classes: int = 4) -> None:
    """n PNGs of 80x60 smooth colour blobs in `classes` class folders."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:60, 0:80]
    for i in range(n):
        cx, cy, r = rng.uniform(10, 70), rng.uniform(10, 50), rng.uniform(6, 20)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        pixels = (30 + blob * rng.uniform(80, 225, 3) + rng.normal(0, 6, (60, 80, 3))).clip(0, 255)
        path = root / f"c{i % classes}" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8), mode="RGB").save(path)


def reference_loop(*, folder: Path, cfg: NetConfig, tp, steps: int) -> float:
    """img/s of pytorch/examples' DCGAN loop over `steps` generator steps (non-saturating loss)."""
    side = cfg.resolution
    to_tensor = [transforms.Resize(side), transforms.CenterCrop(side)]
    if cfg.channels == 1:
        to_tensor.append(transforms.Grayscale(1))
    to_tensor += [transforms.ToTensor(), transforms.Normalize((0.5,) * cfg.channels, (0.5,) * cfg.channels)]
    loader = DataLoader(datasets.ImageFolder(str(folder), transform=transforms.Compose(to_tensor)),
                        batch_size=tp.batch_size, shuffle=True, drop_last=True, num_workers=2)
    torch.manual_seed(tp.seed)
    G, D = Generator(cfg), Discriminator(cfg)
    opt_g = torch.optim.Adam(G.parameters(), lr=tp.lr_g, betas=tuple(tp.betas_g))
    opt_d = torch.optim.Adam(D.parameters(), lr=tp.lr_d, betas=tuple(tp.betas_d))
    done, start = 0, time.perf_counter()
    while done < steps:
        for real, _ in loader:
            reference_step(G, D, opt_g, opt_d, real, None, z_dim=cfg.z_dim)
            done += 1
            if done == steps:
                break
    return done * tp.batch_size / (time.perf_counter() - start)


def ganops_loop(*, prepared: Path, params, steps: int, run: Path) -> float:
    """img/s of train() itself (its loop: steps, logging, EMA, checkpoints, the final grid)."""
    tp = dataclasses.replace(params.train, max_steps=steps, epochs=max(params.train.epochs, 1),
                             checkpoint_every=max(1, steps // 2), log_every=max(1, steps // 5), curve_samples=0)
    summary = train(params=dataclasses.replace(params, train=tp), prepared_dir=prepared,
                    classifier_dir=run / "unused", reference_dir=run / "unused", model_dir=run / "gan",
                    checkpoint_dir=run / "ckpt", report_dir=run / "reports")
    return summary["img_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # train()'s img/s spans its end-of-run work too (the last checkpoint, the grid): 30 steps amortise it.
    ap.add_argument("--steps", type=int, default=30, help="generator steps per measurement")
    ap.add_argument("--rounds", type=int, default=2, help="alternating measurements of each loop")
    ap.add_argument("--images", type=int, default=2048, help="images in each folder")
    ap.add_argument("--shapes", default="32x1,32x3,64x1,64x3", help="RESOLUTIONxCHANNELS, comma-separated")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = params_mod.load(args.params)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    print(f"{params.model.arch} depth {params.model.depth} width {params.model.width}, batch "
          f"{params.train.batch_size}, precision {params.train.precision}; {args.steps} steps x {args.rounds} "
          f"rounds; {args.images} PNGs of 80x60 per folder; torch threads {torch.get_num_threads()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ganops-bench-") as tmp:
        work = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        folder = work / "images"
        write_folder(folder, args.images)
        fetch(params=params_mod.DataParams(dataset="folder", folder=str(folder)), out_dir=work / "raw")
        for side, channels in shapes:
            prepared = work / f"prepared-{side}x{channels}"
            start = time.perf_counter()
            prepare(raw_dir=work / "raw", out_dir=prepared, params=params_mod.PrepareParams(
                resolution=side, channels=channels, transform="center-crop", test_fraction=0.05))
            prep_s = time.perf_counter() - start
            cfg = NetConfig.from_params(params.model, 4, resolution=side, channels=channels)
            ref, ours = [], []
            for r in range(args.rounds):
                ref.append(reference_loop(folder=folder, cfg=cfg, tp=params.train, steps=args.steps))
                ours.append(ganops_loop(prepared=prepared, params=params, steps=args.steps,
                                        run=work / f"run-{side}x{channels}-{r}"))
                print(f"  {side}x{side}x{channels} round {r + 1}: ImageFolder loop {ref[-1]:.0f} img/s, "
                      f"ganops {ours[-1]:.0f} img/s", flush=True)
            rows.append((side, channels, args.images / prep_s, statistics.median(ref), statistics.median(ours)))

    print(f"\n{'shape':>10} {'prepare img/s':>14} {'ImageFolder img/s':>18} {'ganops img/s':>13} {'ratio':>6}")
    for side, channels, prep, ref_m, ours_m in rows:
        print(f"{f'{side}x{side}x{channels}':>10} {prep:14.0f} {ref_m:18.0f} {ours_m:13.0f} {ours_m / ref_m:5.2f}x")
    print("target: ganops >= 2x the ImageFolder loop")


if __name__ == "__main__":
    main()
