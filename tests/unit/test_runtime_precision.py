"""The precision rule on a CPU: bf16 only where the CPU has bf16 instructions *and* a measured matmul wins.

The flags and the measurement are injected, so the rule is checked on every machine the suite runs on; one test
runs the real measurement to check that it returns a usable ratio and leaves torch's threads as it found them."""

from __future__ import annotations

import math

import pytest
import torch

from tunelab import runtime


@pytest.mark.parametrize(
    "flags, speedup, native",
    [
        (frozenset({"avx2", "fma"}), 9.0, False),  # no bf16 instructions: emulated, never measured
        (frozenset({"avx512f", "avx512_bf16"}), 0.44, False),  # the Xeon with AVX512-BF16 and no AMX
        (frozenset({"avx512f", "avx512_bf16"}), 1.4, False),  # a small gain the step's casts eat
        (frozenset({"avx512f", "avx512_bf16"}), 4.3, True),  # AMD Zen 5
        (frozenset({"avx512_bf16", "amx_tile", "amx_bf16"}), 8.0, True),  # AMX
    ],
)
def test_cpu_bf16_native_needs_the_instructions_and_a_measured_win(monkeypatch, flags, speedup, native):
    measured = []
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    monkeypatch.setattr(runtime, "bf16_matmul_speedup", lambda: measured.append(1) or speedup)
    assert runtime.cpu_bf16_native() is native
    assert runtime.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert runtime.resolve_precision("fp32", "cpu") == "fp32"  # an explicit precision always wins
    assert runtime.resolve_precision("bf16", "cpu") == "bf16"
    if not runtime.BF16_CPU_FLAGS & flags:
        assert not measured  # no instructions: nothing timed


def test_the_measurement_is_a_ratio_and_restores_threads():
    before = torch.get_num_threads()
    # Not the one thread the measurement runs on, so a measurement that left its thread count behind shows here.
    torch.set_num_threads(2)
    try:
        ratio = runtime.bf16_matmul_speedup(rows=32, inner=64, outer=96)
        assert math.isfinite(ratio) and ratio > 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_tunelab_config_states_the_precision_rule_the_runtime_applies():
    # `tunelab config train` said "auto: bf16 where native (CUDA with bf16, CPUs with AMX)", while an AMD Zen 5
    # without AMX trains in bf16 (and a Xeon with AVX512-BF16 alone does not): the rule is a measured speed-up.
    from tunelab.config import TrainConfig

    description = TrainConfig.model_fields["precision"].description
    assert f"{runtime.BF16_MIN_SPEEDUP:g}x" in description and "AVX512-BF16" in description


@pytest.mark.parametrize("major, native", [(7, False), (8, True), (9, True)])
def test_cuda_bf16_is_native_from_compute_capability_8(monkeypatch, major, native):
    # torch.cuda.is_bf16_supported() also says yes where a bf16 tensor can merely be made (a T4, a V100: emulated,
    # slower than fp32), so `precision: auto` trained in emulated bf16 there.
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 5))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: type("Properties", (), {"major": major, "minor": 5})())
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    assert runtime.bf16_native("cuda") is native
    assert runtime.resolve_precision("auto", "cuda") == ("bf16" if native else "fp32")
