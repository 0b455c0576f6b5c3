"""From tokenized examples to tensors, without computing on padding.

Packing: the examples of one micro-batch are placed into rows of at most ``max_length`` tokens
(first fit, longest first). Each example keeps its own ``position_ids`` starting at 0, and the
attention mask is left out: transformers then detects the packed format from the position ids
(``masking_utils.find_packed_sequence_indices``) and builds a mask that keeps attention inside each
example, so a packed row gives each example exactly the loss it would get alone. Rows are padded
only at their end (a "sequence" of pad tokens that carries no loss and that no real token sees).

Without packing, the examples of one optimizer step are sorted by length before they are cut into
micro-batches (length bucketing), so each micro-batch pads to a similar length.

Targets are shifted here, once: ``targets[p]`` is the token position ``p`` must predict, -100 where
nothing is predicted (prompt tokens, the last token of each example, padding). The loss then only
touches positions that carry a target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tunelab.data.packing import pack_rows
from tunelab.data.tokenize import IGNORE_INDEX, ClassifyExample, PreferenceExample, TokenizedExample


def _layout(lengths: Sequence[int], packing: bool, capacity: int) -> list[list[int]]:
    if packing:
        return pack_rows(lengths, capacity)
    return [[i] for i in range(len(lengths))]


def _row_tensors(rows: list[list[int]], ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """input_ids and position_ids [rows, width]; the start offset of every example in its row."""
    width = max(sum(len(ids[i]) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    offsets: list[list[int]] = []
    for r, row in enumerate(rows):
        start = 0
        starts = []
        for i in row:
            n = len(ids[i])
            input_ids[r, start : start + n] = torch.tensor(ids[i], dtype=torch.long)
            position_ids[r, start : start + n] = torch.arange(n)
            starts.append(start)
            start += n
        # Padding continues as its own sequence from position 0, so it looks like one more packed example.
        position_ids[r, start:] = torch.arange(width - start)
        offsets.append(starts)
    return input_ids, position_ids, offsets


@dataclass
class LMCollate:
    """Collate for next-token tasks (text, sft): rows, positions and shifted targets."""

    pad_id: int
    max_length: int
    packing: bool = True
    # Packed row length (train.pack_tokens); None: max_length. Rows may be longer than any one
    # example: attention stays per example because positions restart at 0 for each.
    row_tokens: int | None = None

    def __call__(self, examples: Sequence[TokenizedExample]) -> dict[str, torch.Tensor]:
        ids = [e.input_ids for e in examples]
        rows = _layout([len(x) for x in ids], self.packing, self.row_tokens or self.max_length)
        input_ids, position_ids, offsets = _row_tensors(rows, ids, self.pad_id)
        targets = torch.full_like(input_ids, IGNORE_INDEX)
        for r, row in enumerate(rows):
            for start, i in zip(offsets[r], row, strict=True):
                labels = examples[i].labels
                # Position t predicts labels[t + 1]; the last token of an example predicts nothing.
                if len(labels) > 1:
                    targets[r, start : start + len(labels) - 1] = torch.tensor(labels[1:], dtype=torch.long)
        return {"input_ids": input_ids, "position_ids": position_ids, "targets": targets}


@dataclass
class ClassifyCollate:
    """Collate for classify: rows, positions, the flat index of each prompt's last token, the label.

    ``prefix_ids``: the token prefix every prompt starts with (system message, instruction). Given,
    rows hold only each prompt's own tokens, at positions that continue after the prefix, and the
    batch carries the prefix once (``prefix_ids``) and a 4D ``attention_mask`` [rows, 1, width,
    prefix + width]: every token sees the whole prefix and the earlier tokens of its own prompt.
    The loss runs the prefix once per micro-batch (``tunelab.train.losses.classify_logits``).
    """

    pad_id: int
    max_length: int
    packing: bool = True
    # Packed row length (train.pack_tokens); None: max_length. Rows may be longer than any one
    # example: attention stays per example because positions restart at 0 for each.
    row_tokens: int | None = None
    prefix_ids: tuple[int, ...] | None = None

    def __call__(self, examples: Sequence[ClassifyExample]) -> dict[str, torch.Tensor]:
        prefix = len(self.prefix_ids or ())
        ids = [e.input_ids[prefix:] for e in examples]
        if prefix and any(tuple(e.input_ids[:prefix]) != self.prefix_ids for e in examples):
            raise ValueError("a classify example does not start with the shared prefix it was batched with")
        rows = _layout([len(x) for x in ids], self.packing, self.row_tokens or self.max_length)
        input_ids, position_ids, offsets = _row_tensors(rows, ids, self.pad_id)
        width = input_ids.shape[1]
        # In the examples' order (packing reorders them into rows), so logits line up with the input.
        last_positions = [0] * len(examples)
        for r, row in enumerate(rows):
            for start, i in zip(offsets[r], row, strict=True):
                last_positions[i] = r * width + start + len(ids[i]) - 1
        labels = [e.label for e in examples]
        batch = {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "last_positions": torch.tensor(last_positions, dtype=torch.long),
            "class_labels": torch.tensor(labels, dtype=torch.long),
        }
        if prefix:
            batch["prefix_ids"] = torch.tensor(self.prefix_ids, dtype=torch.long)
            # A real token sits below max_length (its prompt, prefix included, fits it); the padding after a short
            # row's prompts would run on past it, and past a GPT-2's positions (an IndexError). Padding is its own
            # segment that no real token sees and no loss reads, so its positions stop at the last one.
            batch["position_ids"] = (position_ids + prefix).clamp(max=self.max_length - 1)
            batch["attention_mask"] = _prefix_attention(rows, offsets, [len(x) for x in ids], width, prefix)
        return batch


def _prefix_attention(rows: list[list[int]], offsets: list[list[int]], lengths: Sequence[int], width: int, prefix: int) -> torch.Tensor:
    """[rows, 1, width, prefix + width] True where a query may attend: the prefix, and its own prompt up to itself.

    Padding is one more segment (it sees the prefix and itself, so no row of the softmax is empty;
    no real token sees it).
    """
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        for start, i in zip(offsets[r], row, strict=True):
            segment[r, start : start + lengths[i]] = i
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    own = (segment[:, :, None] == segment[:, None, :]) & causal
    sees_prefix = torch.ones((len(rows), width, prefix), dtype=torch.bool)
    return torch.cat([sees_prefix, own], dim=-1)[:, None]


@dataclass
class PreferenceCollate:
    """Collate for preference (DPO): chosen and rejected sequences of every pair packed into the same rows.

    Sequence ``2i`` is pair i's chosen answer, ``2i + 1`` its rejected one; ``sequence_index[p]``
    says which sequence the target at position p belongs to (-1: none), so one forward pass gives
    both answers' log-probabilities. ``reference`` [pairs, 2] holds the precomputed reference
    log-probabilities (zeros before they are computed).
    """

    pad_id: int
    max_length: int
    packing: bool = True
    row_tokens: int | None = None

    def __call__(self, examples: Sequence[PreferenceExample]) -> dict[str, torch.Tensor]:
        ids, labels = [], []
        for e in examples:
            ids += [e.chosen_ids, e.rejected_ids]
            labels += [e.chosen_labels, e.rejected_labels]
        rows = _layout([len(x) for x in ids], self.packing, self.row_tokens or self.max_length)
        input_ids, position_ids, offsets = _row_tensors(rows, ids, self.pad_id)
        targets = torch.full_like(input_ids, IGNORE_INDEX)
        sequence_index = torch.full_like(input_ids, -1)
        for r, row in enumerate(rows):
            for start, i in zip(offsets[r], row, strict=True):
                shifted = torch.tensor(labels[i][1:], dtype=torch.long)
                end = start + len(shifted)
                targets[r, start:end] = shifted
                sequence_index[r, start:end] = torch.where(shifted != IGNORE_INDEX, i, -1)
        reference = torch.tensor(
            [[e.reference_chosen or 0.0, e.reference_rejected or 0.0] for e in examples], dtype=torch.float32
        )
        answer_tokens = torch.tensor([[e.chosen_tokens, e.rejected_tokens] for e in examples], dtype=torch.float32)
        return {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "targets": targets,
            "sequence_index": sequence_index,
            "reference": reference,
            "answer_tokens": answer_tokens,
        }


def trained_targets(example: TokenizedExample | ClassifyExample | PreferenceExample) -> int:
    """How many loss terms an example contributes (the loss normaliser counts these): one per pair for DPO."""
    if isinstance(example, ClassifyExample | PreferenceExample):
        return 1
    return example.trained_tokens


def real_tokens(example: TokenizedExample | ClassifyExample | PreferenceExample) -> int:
    if isinstance(example, PreferenceExample):
        return len(example.chosen_ids) + len(example.rejected_ids)
    return len(example.input_ids)


@dataclass(frozen=True)
class StepPlan:
    """Which examples every optimizer step uses, fixed by the seed (so a resumed run sees the same order).

    Epoch ``e`` is a permutation of the training examples drawn from ``seed + e``; the permutations
    are concatenated and cut into global steps of ``batch_size * grad_accum * world_size`` examples.
    """

    num_examples: int
    global_batch: int
    seed: int

    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.num_examples / self.global_batch))

    def indices(self, step: int) -> list[int]:
        """Example indices of optimizer step ``step`` (0-based), across all processes and micro-batches."""
        start = step * self.global_batch
        result: list[int] = []
        position = start
        while len(result) < self.global_batch:
            epoch, offset = divmod(position, self.num_examples)
            permutation = self._permutation(epoch)
            take = min(self.global_batch - len(result), self.num_examples - offset)
            result.extend(permutation[offset : offset + take])
            position += take
        return result

    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_examples, generator=generator).tolist()


def micro_batches(
    step_examples: Sequence, *, batch_size: int, grad_accum: int, world_size: int, rank: int, bucket: bool
) -> list[list]:
    """This process's micro-batches of one optimizer step.

    Micro-batch ``m`` of rank ``r`` takes slot ``m * world_size + r`` of the step, so the union over
    processes is the same for any number of processes with the same global batch.
    """
    ordered = list(step_examples)
    if bucket:
        ordered.sort(key=real_tokens)
    batches = []
    for m in range(grad_accum):
        slot = m * world_size + rank
        chunk = ordered[slot * batch_size : (slot + 1) * batch_size]
        if chunk:
            batches.append(chunk)
    return batches


def split_passes(examples: Sequence, max_tokens: int | None) -> list[list]:
    """``examples`` (one micro-batch) as consecutive passes of at most ``max_tokens`` real tokens each.

    The loss is a sum normalised by the whole step's targets, so gradients accumulated over the passes
    equal the micro-batch's in one pass; only the activation memory (and cache footprint) shrinks.
    """
    if max_tokens is None:
        return [list(examples)] if examples else []
    passes: list[list] = []
    current: list = []
    size = 0
    for example in examples:
        tokens = real_tokens(example)
        if current and size + tokens > max_tokens:
            passes.append(current)
            current, size = [], 0
        current.append(example)
        size += tokens
    if current:
        passes.append(current)
    return passes
