"""Prediction: one-pass label scoring and sliding-window negative log-likelihood.

Both sort their inputs by length before batching (bucketing), so a batch carries as little
padding as possible, and return results in the caller's order. Generation (sft answers) goes
through the one generation path, ``tunelab.models.generate.generate_batch``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from tunelab.data.tokenize import IGNORE_INDEX, shared_prefix_length
from tunelab.models.heads import causal_lm_of
from tunelab.models.heads import label_logits as head_label_logits
from tunelab.models.prefix import last_hidden_after_prefix, prefix_cache
from tunelab.runtime import following_free_cores

Progress = Callable[[int], None]


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _by_length(sequences: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def label_logits(
    model: Any,
    prompts: Sequence[Sequence[int]],
    label_token_ids: Sequence[int],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
    label_head: Any = None,
) -> np.ndarray:
    """Logits of the label tokens at each prompt's last position, shape (prompts, labels).

    ``label_head``: a classify run's trained label rows (``tunelab.models.heads.LabelHead``).

    One forward pass of the decoder per batch; the last hidden state is multiplied by the label
    tokens' rows of the LM head only, so no full-vocabulary logits are built. Prompts are
    right-padded: with causal attention the real tokens never see the padding, and each row's
    last real position is gathered.
    """
    decoder = causal_lm_of(model).get_decoder()
    device = _device(model)
    label_ids = torch.tensor(list(label_token_ids), dtype=torch.long, device=device)
    result = np.zeros((len(prompts), len(label_ids)), dtype=np.float32)
    for batch in following_free_cores(_by_length(prompts, batch_size), device.type):
        longest = max(len(prompts[i]) for i in batch)
        input_ids = torch.zeros((len(batch), longest), dtype=torch.long)
        attention = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, index in enumerate(batch):
            ids = list(prompts[index])
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, : len(ids)] = 1
        last = attention.sum(dim=1) - 1
        with torch.inference_mode():
            hidden = decoder(input_ids=input_ids.to(device), attention_mask=attention.to(device)).last_hidden_state
            final = hidden[torch.arange(len(batch), device=device), last.to(device)]
            logits = head_label_logits(model, final, label_ids, label_head)
        result[batch] = logits.float().cpu().numpy()
        if progress:
            progress(len(batch))
    return result


def prefix_label_logits(
    model: Any,
    prompts: Sequence[Sequence[int]],
    label_token_ids: Sequence[int],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
    min_prefix: int = 16,
    label_head: Any = None,
) -> np.ndarray:
    """``label_logits`` of prompts that share a long prefix, running the prefix through the model once.

    The prefix (the longest common token prefix of all prompts: instruction, label list, few-shot
    examples) is computed once into a KV cache; each batch copies that cache over its rows and runs
    only its own tokens on top, right-padded, at positions that continue after the prefix; each row's
    last real token is scored. Equal to ``label_logits`` on the full prompts up to float rounding.
    Below ``min_prefix`` shared tokens it is not worth a cache and ``label_logits`` runs as is.
    ``label_head``: a classify run's trained label rows, as in ``label_logits``.
    """
    prefix = shared_prefix_length(prompts)
    if prefix < min_prefix:
        return label_logits(model, prompts, label_token_ids, batch_size=batch_size, progress=progress, label_head=label_head)
    decoder = causal_lm_of(model).get_decoder()
    device = _device(model)
    label_ids = torch.tensor(list(label_token_ids), dtype=torch.long, device=device)
    suffixes = [list(p[prefix:]) for p in prompts]
    result = np.zeros((len(prompts), len(label_ids)), dtype=np.float32)
    with torch.inference_mode():
        cache = prefix_cache(decoder, torch.tensor(list(prompts[0][:prefix]), dtype=torch.long, device=device))
    for batch in following_free_cores(_by_length(suffixes, batch_size), device.type):
        with torch.inference_mode():
            final = last_hidden_after_prefix(decoder, cache, prefix, [suffixes[i] for i in batch])
            logits = head_label_logits(model, final, label_ids, label_head)
        result[batch] = logits.float().cpu().numpy()
        if progress:
            progress(len(batch))
    return result


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def window_nll(
    model: Any,
    windows: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> list[tuple[float, int]]:
    """(sum of next-token NLL in nats, number of predicted tokens) of each (input_ids, labels) window.

    ``labels`` are aligned with ``input_ids`` (-100: not predicted), as ``tokenize_text`` makes them.
    """
    device = _device(model)
    results: list[tuple[float, int]] = [(0.0, 0)] * len(windows)
    inputs = [w[0] for w in windows]
    for batch in following_free_cores(_by_length(inputs, batch_size), device.type):
        longest = max(len(inputs[i]) for i in batch)
        input_ids = torch.zeros((len(batch), longest), dtype=torch.long)
        labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, index in enumerate(batch):
            ids, targets = windows[index]
            input_ids[row, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
            labels[row, : len(ids)] = torch.tensor(list(targets), dtype=torch.long)
            attention[row, : len(ids)] = 1
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
            targets = labels[:, 1:].to(device)
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
            ).view(len(batch), -1)
            sums = losses.sum(dim=1).cpu().tolist()
            counts = (targets != IGNORE_INDEX).sum(dim=1).cpu().tolist()
        for row, index in enumerate(batch):
            results[index] = (float(sums[row]), int(counts[row]))
        if progress:
            progress(len(batch))
    return results
