"""Time one AdamW step over the default model's LoRA adapter shapes: foreach vs fused, on CPU.

The adapter of SmolLM2-135M with r=16 on all linear layers (30 blocks x q,k,v,o,gate,up,down:
420 tensors, 4.88M weights) is rebuilt as plain tensors with random gradients, so only the
optimizer is timed. Usage: python bench/optimizer_step.py --threads 2 --steps 50
"""

from __future__ import annotations

import argparse
import os
import time

import torch

# (in, out) of each adapted linear in one block of SmolLM2-135M (hidden 576, kv 192, mlp 1536).
BLOCK = [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)]


def adapter_parameters(rank: int = 16, blocks: int = 30) -> list[torch.nn.Parameter]:
    params = []
    for _ in range(blocks):
        for fan_in, fan_out in BLOCK:
            for shape in ((rank, fan_in), (fan_out, rank)):
                p = torch.nn.Parameter(torch.randn(shape) * 0.01)
                p.grad = torch.randn(shape) * 1e-3
                params.append(p)
    return params


def time_steps(kind: str, steps: int) -> float:
    params = adapter_parameters()
    optimizer = torch.optim.AdamW(params, lr=2e-4, **{kind: True})
    optimizer.step()  # state allocation, not timed
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = sum(p.numel() for p in adapter_parameters())
    print(f"{n / 1e6:.2f}M adapter weights, {args.threads} threads, load {os.getloadavg()[0]:.2f}")
    for kind in ("foreach", "fused", "foreach", "fused"):  # twice each, interleaved
        print(f"  {kind:8s} {time_steps(kind, args.steps) * 1e3:7.2f} ms/step")


if __name__ == "__main__":
    main()
