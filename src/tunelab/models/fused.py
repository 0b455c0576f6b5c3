"""Fused elementwise work of Llama-style decoder blocks: SiLU x up and RMSNorm, each one compiled kernel.

Where a training step's time goes on a CPU (bench/README.md, "Where a training step's time goes"): the
big matmuls run near their standalone speed, but the elementwise third of the step (the MLP's
``silu(gate) * up`` and its backward, RMSNorm's square, mean, rsqrt and two multiplies, each a separate
pass over a [tokens x width] tensor) runs at a few per cent of the memory bandwidth the same op reaches
alone. Here those two pieces are small pure functions compiled with ``torch.compile`` (inductor writes one
vectorised C++ loop for each, forward and backward), while the matmuls stay eager (oneDNN, AMX where
there is one). Compiling these functions instead of whole blocks keeps the graphs tiny: a few seconds to
compile, no graph breaks, one graph for every sequence length (``dynamic=True``), and inductor's cache
(``TORCHINDUCTOR_CACHE_DIR``, see :func:`compile_cache_dir`) makes a later process reuse them.

The results equal the eager modules' up to float rounding (tested); under autocast the block's RMSNorm
hands its output to the next linear layers already in the autocast dtype, which is the cast those layers
would apply to it themselves. The module classes are swapped for subclasses (as ``lora_forward`` does),
so parameter names, saving and loading are unchanged.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The gated MLP's activation: ``silu(gate) * up``."""
    return nn.functional.silu(gate) * up


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
    """Llama's RMSNorm (in fp32, as transformers computes it), returned in ``out_dtype``."""
    input_dtype = hidden.dtype
    hidden = hidden.to(torch.float32)
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * hidden.to(input_dtype)).to(out_dtype)


def compile_cache_dir() -> str:
    """Where inductor keeps compiled kernels: the user's tunelab cache (kept across runs and reboots)
    unless ``TORCHINDUCTOR_CACHE_DIR`` says otherwise."""
    from tunelab.paths import cache_dir

    return os.environ.get("TORCHINDUCTOR_CACHE_DIR") or str(cache_dir() / "inductor")


@functools.cache
def compiled(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``function`` compiled once per process (every module shares it, so one compile serves all blocks)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", compile_cache_dir())
    return torch.compile(function, dynamic=True, fullgraph=True)


def _fused_mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(compiled(silu_mul)(self.gate_proj(x), self.up_proj(x)))


def _fused_norm_forward(self: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    device = hidden.device.type
    out_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    return compiled(rms_norm)(hidden, self.weight, float(self.variance_epsilon), out_dtype)


@functools.cache
def _subclass(cls: type, forward: Callable[..., Any]) -> type:
    return type(f"Fused{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})


def _is_gated_silu_mlp(module: nn.Module) -> bool:
    activation = getattr(module, "act_fn", None)
    return (
        all(isinstance(getattr(module, name, None), nn.Module) for name in ("gate_proj", "up_proj", "down_proj"))
        and activation is not None
        and type(activation).__name__ in ("SiLU", "SiLUActivation")
        and type(module).forward is not _fused_mlp_forward
    )


def _is_rms_norm(module: nn.Module) -> bool:
    return (
        type(module).__name__.endswith("RMSNorm")
        and isinstance(getattr(module, "weight", None), torch.Tensor)
        and isinstance(getattr(module, "variance_epsilon", None), float)
        and type(module).forward is not _fused_norm_forward
    )


def fuse_elementwise(model: nn.Module) -> int:
    """Give each decoder block's gated-SiLU MLP and RMSNorms the compiled forward; returns how many changed.

    Only the norms inside the blocks (which feed linear layers alone) are fused, not the model's final
    norm (its output is the hidden state the heads and the loss read in fp32).
    """
    changed = 0
    for name, module in model.named_modules():
        if _is_gated_silu_mlp(module):
            module.__class__ = _subclass(type(module), _fused_mlp_forward)
            changed += 1
        elif _is_rms_norm(module) and name.rsplit(".", 1)[-1] in ("input_layernorm", "post_attention_layernorm"):
            module.__class__ = _subclass(type(module), _fused_norm_forward)
            changed += 1
    return changed


def compile_blocks(model: nn.Module) -> int:
    """``torch.compile`` each decoder block in place (``train.compile: blocks``); returns how many were compiled.

    Blocks, not the whole model: the packed-attention mask is built from the position ids by
    data-dependent code outside the blocks, which would break a whole-model graph, while every block
    is the same graph, compiled once and reused. ``nn.Module.compile`` keeps the parameter names, so
    checkpoints and saved adapters are unchanged. ``dynamic=True`` because packed rows change width
    every step (a static graph would recompile for each new width).
    """
    from tunelab.models.heads import causal_lm_of

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", compile_cache_dir())
    decoder = causal_lm_of(model).get_decoder()
    blocks = getattr(decoder, "layers", None)
    if blocks is None:
        return 0
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)


def compile_model(model: nn.Module, mode: bool | str) -> int:
    """Apply ``train.compile`` to a model about to train (the loop and the calibration both call it):
    ``elementwise`` fuses each block's SiLU x up and RMSNorm (:func:`fuse_elementwise`), ``blocks`` (or
    true) compiles whole decoder blocks (:func:`compile_blocks`), false changes nothing."""
    if mode == "elementwise":
        return fuse_elementwise(model)
    if mode in (True, "blocks"):
        return compile_blocks(model)
    return 0
