"""Facts about the machine a run executes on: threads, device, whether bf16 is native.

bf16 is "native" where matmuls run faster in it than in fp32: CUDA GPUs of compute capability 8.0+,
and x86 CPUs with AMX (on such a CPU bf16 matmul runs several times faster than fp32; with
AVX512-BF16 alone it measured slower than fp32, see ``cpu_bf16_native``). Elsewhere bf16 is emulated and slower, so tunelab trains in fp32 there.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.cache
def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_native() -> bool:
    """True when this CPU has AMX-BF16 tiles, where oneDNN's bf16 matmul beats fp32 several times.

    AVX512-BF16 alone is not enough: on the project's 2-core Xeon (avx512_bf16, no AMX) torch.mm in
    bf16 measured 0.14 TFLOP/s against 0.32 in fp32, and a LoRA step under bf16 autocast ran about
    3x slower than in fp32 (bench/README.md, "Training speed"), so such CPUs train in fp32.
    """
    return "amx_bf16" in cpu_flags()


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def bf16_native(device: str | None = None) -> bool:
    """Whether bf16 compute is faster than fp32 on ``device`` (default: the best device here)."""
    device = device or default_device()
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device == "cpu":
        return cpu_bf16_native()
    return False


def resolve_precision(requested: str, device: str | None = None) -> str:
    """Turn a configured precision (``auto``, ``fp32``, ``bf16``) into the one to use: ``fp32`` or ``bf16``."""
    if requested == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return requested


@dataclass(frozen=True)
class EnvironmentInfo:
    python: str
    platform: str
    cpu: str
    cores: int
    torch_threads: int
    device: str
    bf16_native: bool
    cpu_bf16_flags: list[str]
    cuda_devices: list[str]
    versions: dict[str, str]

    def as_dict(self) -> dict:
        return asdict(self)


def environment_info() -> EnvironmentInfo:
    """Collect versions and hardware facts (what ``tunelab env`` shows)."""
    from importlib import metadata

    versions = {}
    for name in ("tunelab", "torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "trl"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return EnvironmentInfo(
        python=platform.python_version(),
        platform=platform.platform(),
        cpu=cpu_model_name(),
        cores=os.cpu_count() or 1,
        torch_threads=torch.get_num_threads(),
        device=default_device(),
        bf16_native=bf16_native(),
        cpu_bf16_flags=sorted({"amx_bf16", "amx_tile", "avx512_bf16"} & cpu_flags()),
        cuda_devices=cuda,
        versions=versions,
    )
