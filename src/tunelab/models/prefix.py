"""A shared token prefix computed once: its KV cache, seen by many rows, with or without gradients.

Classify prompts all start with the same tokens (system message, instruction, for the zero-shot
model the whole label list): evaluation runs that prefix once per evaluation, training once per
micro-batch (the LoRA weights change every step, and the gradient must flow into the prefix too).
Each row then runs only its own tokens, at positions that continue after the prefix, attending to
the prefix through the cache. Mathematically this is the full computation split in two; the tests
check predictions, losses and gradients against it.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch


def cache_argument(decoder: Any) -> str:
    """The decoder's keyword for a KV cache: transformers 5.24 renamed ``past_key_values`` to ``cache``."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def prefix_cache(decoder: Any, prefix_ids: torch.Tensor) -> Any:
    """Run ``prefix_ids`` [prefix] (one sequence) through ``decoder``; its KV cache, in the autograd graph when grad is on."""
    output = decoder(input_ids=prefix_ids[None], use_cache=True)
    return output.cache if cache_argument(decoder) == "cache" else output.past_key_values


def cache_over_rows(cache: Any, rows: int) -> Any:
    """The prefix's KV cache seen by ``rows`` rows, for one forward pass (the prefix's own tensors are never changed).

    A forward pass appends to its cache, so each pass gets its own cache object; its layers hold
    broadcast views of the prefix (no copy: appending concatenates into new tensors anyway, and the
    backward of a broadcast sums the rows' gradients into the prefix's). A cache of another layout
    is copied and repeated instead.
    """
    layers = getattr(cache, "layers", None)
    if not layers or not all(isinstance(getattr(layer, "keys", None), torch.Tensor) for layer in layers):
        copied = copy.deepcopy(cache)
        copied.batch_repeat_interleave(rows)
        return copied
    batch_cache = copy.copy(cache)
    batch_cache.layers = []
    for layer in layers:
        view = copy.copy(layer)
        view.keys = layer.keys.expand(rows, *layer.keys.shape[1:])
        view.values = layer.values.expand(rows, *layer.values.shape[1:])
        batch_cache.layers.append(view)
    return batch_cache


def last_hidden_after_prefix(decoder: Any, cache: Any, prefix_length: int, suffixes: list[list[int]]) -> torch.Tensor:
    """[rows, hidden]: each suffix's last hidden state, the suffixes run on top of the prefix's ``cache``.

    Suffixes are right-padded, at positions that continue after the prefix; the 2D mask covers the
    cached prefix too, so every row attends to all of it. The caller picks the grad mode.
    """
    device = next(decoder.parameters()).device
    longest = max(len(ids) for ids in suffixes)
    input_ids = torch.zeros((len(suffixes), longest), dtype=torch.long)
    attention = torch.zeros((len(suffixes), prefix_length + longest), dtype=torch.long)
    attention[:, :prefix_length] = 1
    for row, ids in enumerate(suffixes):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[row, prefix_length : prefix_length + len(ids)] = 1
    last = torch.tensor([len(ids) - 1 for ids in suffixes], dtype=torch.long, device=device)
    positions = torch.arange(prefix_length, prefix_length + longest, dtype=torch.long).expand(len(suffixes), -1)
    hidden = decoder(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        **{cache_argument(decoder): cache_over_rows(cache, len(suffixes))},
    ).last_hidden_state
    return hidden[torch.arange(len(suffixes), device=device), last]


def mask_for(decoder: Any, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 4D ``allowed`` mask [rows, 1, queries, keys] (True: may attend) in the form the decoder's attention takes.

    SDPA takes booleans as they are; eager attention adds the mask to the scores, so it gets 0 / -inf-like floats.
    """
    if getattr(decoder.config, "_attn_implementation", "sdpa") == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def prefix_hidden_states(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Last hidden states [rows, width, hidden] of rows that continue a shared prefix (``ClassifyCollate(prefix_ids=...)``).

    ``batch``: ``prefix_ids`` [prefix], ``input_ids`` / ``position_ids`` [rows, width] and the 4D
    ``attention_mask`` [rows, 1, width, prefix + width] (True: may attend). The prefix runs once, in
    the autograd graph: its KV cache is seen by every row, and the rows' gradients flow back into it,
    so loss and gradients equal those of the full prompts. Training and the calibration run this.
    """
    from tunelab.models.heads import causal_lm_of

    decoder = causal_lm_of(model).get_decoder()
    device_type = batch["input_ids"].device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32
    cache = cache_over_rows(prefix_cache(decoder, batch["prefix_ids"]), batch["input_ids"].shape[0])
    output = decoder(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask_for(decoder, batch["attention_mask"], dtype),
        use_cache=True, **{cache_argument(decoder): cache},
    )  # fmt: skip
    return output.last_hidden_state
