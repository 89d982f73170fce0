"""Benchmark: one DCGAN training step (D then G) in bf16 autocast vs fp32 on the CPU, same run.

    .venv/bin/python bench/cpu_bf16.py [--steps 40] [--rounds 2]

Prints img/s of each and the ratio; the evidence behind `train.precision: auto` choosing bf16 on a CPU that has it.
"""
from __future__ import annotations

import argparse
import time

import torch

from ganops.training import losses
from ganops.networks import Discriminator, Generator, NetConfig


def measure(*, bf16: bool, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    G, D = Generator(NetConfig()), Discriminator(NetConfig())
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    real = torch.rand(batch, 1, 28, 28) * 2 - 1

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            fake = G(torch.randn(batch, 100))
            loss_d = losses.d_loss("non_saturating", D(real).float(), D(fake.detach()).float())
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss_g = losses.g_loss("non_saturating", D(fake).float())
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()

    for _ in range(5):  # warm-up: oneDNN picks its kernels on the first calls
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2, help="alternating measurements of each")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"native bf16 on this CPU: {native}; torch threads {torch.get_num_threads()}")
    fp32, bf16 = [], []
    for r in range(args.rounds):
        fp32.append(measure(bf16=False, steps=args.steps, batch=args.batch))
        bf16.append(measure(bf16=True, steps=args.steps, batch=args.batch))
        print(f"  round {r + 1}: fp32 {fp32[-1]:.0f} img/s, bf16 {bf16[-1]:.0f} img/s")
    print(f"ratio bf16/fp32: {max(bf16) / max(fp32):.2f}x (best of {args.rounds})")


if __name__ == "__main__":
    main()
