"""The machine's measured matmul peak: the ceiling every MFU in bench/ is computed against.

torch.mm on square matrices of a few sizes in fp32 and bf16; for each, the best sustained TFLOP/s
over several timed repetitions (2·n³ FLOPs per product) after a warm-up. The peak of a dtype is the
best over sizes: the most this machine did, measured, not a datasheet number.

Usage: python bench/matmul_peak.py [--sizes 1024 2048 4096] [--seconds 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import child_result, machine_info


def measure(size: int, dtype: torch.dtype, seconds: float) -> float:
    """Best TFLOP/s of ``torch.mm`` on ``size``² matrices over runs of about ``seconds / 5`` each."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: oneDNN picks and caches its kernel on the first call
    flops = 2 * size**3
    # Repetitions per timed run sized so one run lasts about seconds/5: short runs are noisy.
    started = time.perf_counter()
    torch.mm(a, b, out=out)
    once = max(time.perf_counter() - started, 1e-6)
    repetitions = max(1, int(seconds / 5 / once))
    best = 0.0
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repetitions):
            torch.mm(a, b, out=out)
        elapsed = time.perf_counter() - started
        best = max(best, flops * repetitions / elapsed / 1e12)
    return best


def matmul_peak(sizes: list[int], seconds: float) -> dict:
    results = {"fp32": {}, "bf16": {}}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for size in sizes:
            results[name][str(size)] = round(measure(size, dtype, seconds), 3)
    return {
        "by_size_tflops": results,
        "peak_tflops": {name: max(values.values()) for name, values in results.items()},
        "method": "torch.mm, square matrices, 2*n^3 FLOPs, best of 5 timed runs per size after a warm-up",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--seconds", type=float, default=2.0, help="approximate time per size and dtype")
    args = parser.parse_args()
    result = matmul_peak(args.sizes, args.seconds)
    result["machine"] = machine_info()
    child_result(result)


if __name__ == "__main__":
    main()
