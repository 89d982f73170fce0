"""Benchmark: the resize-conv generator computed at the low resolution (networks.ResizeConv) against
the plain nn.Sequential(Upsample, Conv2d) it replaces, on the same weights.

Prints the generator's forward img/s (evaluate, the quality curve, serving) and a whole training
step's img/s (G forward, D on real and fake, D and G backward, Adam) for both, and how far their
outputs differ. Both run in this process, alternating for --rounds rounds; the medians are compared.

    .venv/bin/python bench/resize_conv.py                    # ~1 minute on 2 CPU cores
    .venv/bin/python bench/resize_conv.py --precision fp32 --rounds 1
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch
from torch import nn

from ganops.networks import Discriminator, Generator, NetConfig, ResizeConv
from ganops.training.losses import d_loss, g_loss


def unfolded(G: Generator) -> Generator:
    """A copy of G whose resize-convs run as the plain upsample-then-conv Sequential."""
    G = copy.deepcopy(G)
    for name, module in list(G.body.named_children()):
        if isinstance(module, ResizeConv):
            G.body.register_module(name, nn.Sequential(*module))
    return G


def measure(G, D, batch: int, steps: int, autocast) -> tuple[float, float]:
    """(forward img/s, training-step img/s) of G with D."""
    opt_g, opt_d = torch.optim.Adam(G.parameters(), 2e-4), torch.optim.Adam(D.parameters(), 2e-4)
    z, real = torch.randn(batch, 100), torch.rand(batch, 1, 28, 28) * 2 - 1
    with torch.no_grad(), autocast():
        G.eval()
        G(z)
        t = time.perf_counter()
        for _ in range(steps):
            G(z)
        fwd = steps * batch / (time.perf_counter() - t)
        G.train()
    t = time.perf_counter()
    for _ in range(steps):
        with autocast():
            fake = G(z)
            loss = d_loss("non_saturating", D(real).float(), D(fake.detach()).float())
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
        with autocast():
            loss = g_loss("non_saturating", D(fake).float())
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
    return fwd, steps * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="steps per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = NetConfig(width=args.width, g_upsample="resize", d_norm="batch")
    folded, D = Generator(cfg), Discriminator(cfg)
    plain = unfolded(folded)
    with torch.no_grad():
        z = torch.randn(256, 100)
        diff = (folded.eval()(z) - plain.eval()(z)).abs().max().item()
    if args.precision == "bf16":
        def autocast():
            return torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    results = {"plain": [], "folded": []}
    for _ in range(args.rounds):
        for name, G in (("plain", plain), ("folded", folded)):
            results[name].append(measure(G, copy.deepcopy(D), args.batch, args.steps, autocast))
    print(f"{torch.get_num_threads()} threads, batch {args.batch}, width {args.width}, {args.precision}; "
          f"max |folded - plain| on 256 latents (fp32, eval): {diff:.2e}")
    base = [statistics.median(r[i] for r in results["plain"]) for i in (0, 1)]
    for name in ("plain", "folded"):
        fwd, step = (statistics.median(r[i] for r in results[name]) for i in (0, 1))
        print(f"{name:7s} G forward {fwd:8.0f} img/s ({fwd / base[0]:.2f}x)   "
              f"training step {step:7.0f} img/s ({step / base[1]:.2f}x)")


if __name__ == "__main__":
    main()
