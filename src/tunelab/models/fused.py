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


# Inductor's CPU kernels otherwise fix their OpenMP thread count when they are compiled: a kernel compiled
# with 2 threads would keep running 2 after the thread rule (tunelab.runtime) drops to 1 beside a busy core.
COMPILE_OPTIONS = {"cpp.dynamic_threads": True}


@functools.cache
def compiled(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``function`` compiled once per process (every module shares it, so one compile serves all blocks)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", compile_cache_dir())
    return torch.compile(function, dynamic=True, fullgraph=True, options=COMPILE_OPTIONS)


def compiles_here(hidden_size: int, intermediate_size: int, autocast_dtype: torch.dtype | None = None) -> bool:
    """Whether the compiled functions build and run here (a C++ compiler, a working inductor), forward and
    backward, in the training's autocast dtype: tried on tiny tensors before any module is swapped, so a
    machine where compiling fails trains eagerly instead of failing in its first backward."""
    try:
        with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            hidden = torch.randn(2, 3, hidden_size, requires_grad=True)
            weight = torch.ones(hidden_size, requires_grad=True)
            normed = compiled(rms_norm)(hidden, weight, 1e-6, autocast_dtype or torch.float32)
            gate = torch.randn(2, 3, intermediate_size, dtype=normed.dtype, requires_grad=True)
            up = torch.randn(2, 3, intermediate_size, dtype=normed.dtype, requires_grad=True)
            out = compiled(silu_mul)(gate, up)
        (normed.float().sum() + out.float().sum()).backward()
    except Exception:  # noqa: BLE001 - any failure of the toolchain means: stay eager
        return False
    return True


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


def fuse_elementwise(model: nn.Module, autocast_dtype: torch.dtype | None = None) -> int:
    """Give each decoder block's gated-SiLU MLP and RMSNorms the compiled forward; returns how many changed
    (0 when compiling does not work here: :func:`compiles_here`, tried in the training's ``autocast_dtype``).

    Only the norms inside the blocks (which feed linear layers alone) are fused, not the model's final
    norm (its output is the hidden state the heads and the loss read in fp32).
    """
    mlps = [m for m in model.modules() if _is_gated_silu_mlp(m)]
    if not mlps:
        return 0
    up = mlps[0].up_proj
    up = getattr(up, "base_layer", up)  # under a LoRA wrapper
    if not isinstance(up, nn.Linear) or not compiles_here(up.in_features, up.out_features, autocast_dtype):
        return 0
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
        block.compile(dynamic=True, options=COMPILE_OPTIONS)
    return len(blocks)


def compile_model(model: nn.Module, mode: bool | str, *, device: str = "cpu", precision: str = "fp32") -> int:
    """Apply ``train.compile`` to a model about to train on ``device`` in ``precision`` (the loop and the
    calibration both call it); returns how many modules changed.

    ``elementwise`` fuses each block's SiLU x up and RMSNorm (:func:`fuse_elementwise`); ``auto`` does so
    on a CPU and nothing elsewhere; ``blocks`` (or true) compiles whole decoder blocks
    (:func:`compile_blocks`); false changes nothing.
    """
    autocast_dtype = torch.bfloat16 if precision == "bf16" else None
    if mode == "elementwise" or (mode == "auto" and device == "cpu"):
        return fuse_elementwise(model, autocast_dtype)
    if mode in (True, "blocks"):
        return compile_blocks(model)
    return 0
