"""A faster forward for PEFT's LoRA linear layer, with the same result and the same gradients.

PEFT computes ``result = result + lora_B(lora_A(x)) * scaling``: the rank-r product is written to a
fresh full-width tensor, multiplied by ``scaling`` in a second full-width pass, added in a third, and
backward repeats the multiply. On a CPU those passes are memory-bound and the profile of one training
step (``bench/profile_step.py``) put them at a large share of the step. Here the rank-r product is
accumulated straight into the base layer's output by one GEMM with ``scaling`` as its alpha
(``addmm_``): no full-width temporary, no separate multiply or add. The math is the same linear map, so
outputs and gradients agree with PEFT's to float rounding (tested).

The module keeps PEFT's class (a subclass of it) and state, so saving, loading, merging and
``disable_adapter()`` behave as before; anything this path does not cover (several active adapters,
mixed-adapter batches, DoRA and other variants, a LoRA bias, a non-``nn.Linear`` base (a 4-bit one
among them), dtypes that differ outside autocast) goes to PEFT's own forward. Under autocast (bf16
training: bf16 frozen base weights, fp32 adapters) the fused path runs too, in the autocast dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn


class FusedLoraLinear(PeftLoraLinear):
    """PEFT's ``lora.Linear`` whose vanilla single-adapter forward is one accumulating GEMM."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self._fast_adapter(x, args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        base: nn.Linear = self.base_layer
        lora_a: nn.Linear = self.lora_A[name]
        lora_b: nn.Linear = self.lora_B[name]
        # Work on 2-D views so that the in-place GEMM writes a plain tensor (not a view autograd must rebase).
        flat = x.reshape(-1, x.shape[-1])
        result = nn.functional.linear(flat, base.weight, base.bias)
        low_rank = nn.functional.linear(self.lora_dropout[name](flat), lora_a.weight)
        # In place is safe for autograd: a linear layer's backward does not read its own output. Under
        # autocast both linears above computed in its dtype; the in-place GEMM is not autocast, so lora_B
        # (an fp32 trained weight over bf16 frozen ones) is cast to it here, as autocast would.
        result.addmm_(low_rank, lora_b.weight.t().to(result.dtype), alpha=self.scaling[name])
        return result.view(*x.shape[:-1], result.shape[-1])

    def _fast_adapter(self, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
        """The one adapter the fast path can run, or None when PEFT's forward must handle the call."""
        if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        name = self.active_adapters[0]
        if name not in self.lora_A or name in self.lora_variant or type(self.base_layer) is not nn.Linear:
            return None
        lora_a, lora_b = self.lora_A[name], self.lora_B[name]
        if lora_a.bias is not None or lora_b.bias is not None:
            return None
        if torch.is_autocast_enabled(x.device.type):
            # Autocast casts every operand of the two linears to its dtype (bf16 frozen weights and fp32
            # adapters alike), and forward casts lora_B for the in-place GEMM: the dtypes always agree.
            return name if x.device == self.base_layer.weight.device else None
        dtype = self.base_layer.weight.dtype
        if x.dtype != dtype or lora_a.weight.dtype != dtype or lora_b.weight.dtype != dtype:
            return None
        return name


def fuse_lora_forward(model: nn.Module) -> int:
    """Give every PEFT LoRA linear layer of ``model`` the fused forward; returns how many changed."""
    changed = 0
    for module in model.modules():
        if type(module) is PeftLoraLinear:
            module.__class__ = FusedLoraLinear
            changed += 1
    return changed
