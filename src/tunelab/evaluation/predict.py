"""Prediction: sliding-window negative log-likelihood (text, preference).

Windows are sorted by length before batching (bucketing), so a batch carries as little padding as
possible, and results come back in the caller's order. Label scoring (classify) is the one classify
inference of ``tunelab.inference`` (re-exported here); generation (sft answers) goes through the one
generation path, ``tunelab.models.generate.generate_batch``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from tunelab.data.tokenize import IGNORE_INDEX, shared_prefix_length  # noqa: F401 - shared_prefix_length: re-exported
from tunelab.inference import label_logits, prefix_label_logits, softmax  # noqa: F401 - their home is tunelab.inference
from tunelab.runtime import following_free_cores

Progress = Callable[[int], None]


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _by_length(sequences: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


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
