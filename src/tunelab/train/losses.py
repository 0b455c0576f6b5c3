"""Losses that compute only what is used.

Both losses run the base transformer for hidden states and apply the LM head themselves, only at
positions that carry a target:

- ``lm_loss_sum``: next-token cross-entropy, summed over target positions. The head is applied in
  chunks of positions inside one autograd function that also computes the gradients chunk by chunk
  (softmax minus one-hot), so neither the forward nor the backward ever holds logits for more than
  one chunk: a 49k vocabulary never materialises fp32 logits for the whole batch, and nothing is
  recomputed.
- ``dpo_loss_sum``: DPO and its variants over the answer tokens of chosen and rejected, packed into
  the same rows (one forward pass), against reference log-probabilities computed once beforehand.
- ``classify_loss_sum``: cross-entropy over the label tokens only, from the hidden state at the
  last prompt position times the label tokens' rows of the head.

Losses are sums; the loop divides by the number of targets of the whole optimizer step (all
micro-batches, all processes), so every target weighs the same however the step is split.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.data.tokenize import IGNORE_INDEX
from tunelab.models.heads import LabelHead, causal_lm_of, label_logits
from tunelab.models.prefix import prefix_hidden_states

DEFAULT_CHUNK = 1024


def hidden_states(model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Last hidden states [rows, width, hidden] from the decoder, without the LM head.

    The attention mask is left out on purpose: with position ids restarting per example,
    transformers isolates the attention of each packed example (see ``tunelab.train.batching``).
    """
    decoder = causal_lm_of(model).get_decoder()
    output = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False)
    return output.last_hidden_state


def _compute_dtype(device_type: str) -> torch.dtype:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.float32


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum CE(hidden @ weight.T + bias, targets), with gradients computed in the forward, per chunk."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, chunk: int, dtype: torch.dtype) -> torch.Tensor:
        need_hidden = hidden.requires_grad
        need_weight = weight.requires_grad
        need_bias = bias is not None and bias.requires_grad
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None
        weight_c = weight.to(dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start : start + chunk].to(dtype)
                t = targets[start : start + chunk]
                logits = (h @ weight_c.T).float()
                if bias is not None:
                    logits = logits + bias.float()
                log_z = torch.logsumexp(logits, dim=-1)
                total += (log_z - logits.gather(1, t[:, None]).squeeze(1)).sum()
                if need_hidden or need_weight or need_bias:
                    # d(sum CE)/d logits = softmax - one_hot
                    grad_logits = torch.exp(logits - log_z[:, None])
                    grad_logits[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                    if need_hidden:
                        grad_hidden[start : start + chunk] = (grad_logits.to(dtype) @ weight_c).to(hidden.dtype)
                    if need_weight:
                        grad_weight += (grad_logits.to(dtype).T @ h).float()
                    if need_bias:
                        grad_bias += grad_logits.sum(0)
        ctx.save_for_backward(
            grad_hidden if need_hidden else torch.empty(0),
            grad_weight if need_weight else torch.empty(0),
            grad_bias if need_bias else torch.empty(0),
        )
        ctx.needs = (need_hidden, need_weight, need_bias)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs
        return (
            grad_hidden * grad_output if need_hidden else None,
            (grad_weight * grad_output).to(ctx.weight_dtype) if need_weight else None,
            (grad_bias * grad_output).to(ctx.weight_dtype) if need_bias else None,
            None,
            None,
            None,
        )


def linear_cross_entropy_sum(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """sum of CE(head(hidden[i]), targets[i]) over rows of ``hidden`` [N, H], ``chunk`` rows at a time.

    A plain ``nn.Linear`` head goes through the fused chunked function; any other head (e.g. a
    LoRA-wrapped one) is applied chunk by chunk with activation checkpointing, so its logits are
    recomputed in the backward instead of being stored.
    """
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0
    if type(head) is nn.Linear:
        dtype = _compute_dtype(hidden.device.type)
        return _ChunkedLinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, chunk, dtype)
    from torch.utils.checkpoint import checkpoint

    def piece(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), t, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        total = total + checkpoint(piece, hidden[start : start + chunk], targets[start : start + chunk], use_reentrant=False)
    return total


def lm_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Summed next-token cross-entropy over the positions whose target is not -100."""
    hidden = hidden_states(model, batch["input_ids"], batch["position_ids"])
    targets = batch["targets"]
    keep = targets != IGNORE_INDEX
    head = causal_lm_of(model).get_output_embeddings()
    return linear_cross_entropy_sum(hidden[keep], head, targets[keep], chunk)


def _classify_states(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The final hidden states of every position of a classify batch, flattened [rows x width, hidden]."""
    if "prefix_ids" in batch:
        hidden = prefix_hidden_states(model, batch)
    else:
        hidden = hidden_states(model, batch["input_ids"], batch["position_ids"])
    return hidden.reshape(-1, hidden.shape[-1])


def classify_logits(
    model: nn.Module, batch: dict[str, torch.Tensor], label_token_ids: torch.Tensor, label_head: LabelHead | None = None
) -> torch.Tensor:
    """[examples, labels] logits at each prompt's last position, computed over the label columns only."""
    return label_logits(model, _classify_states(model, batch)[batch["last_positions"]], label_token_ids, label_head)


def prompt_lm_loss_mean(model: nn.Module, batch: dict[str, torch.Tensor], states: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over a classify batch's own prompt tokens (each example's text and the template
    around it; the last position, which the label head reads, predicts nothing here).

    ``states``: the batch's flattened final hidden states (``_classify_states``). A row's real tokens run up to the
    last token of its last example (padding follows), and an example's last token is followed by the next example:
    every other real position predicts the token after it, in its own example.
    """
    rows, width = batch["input_ids"].shape
    last = batch["last_positions"].to(states.device)
    ends = torch.full((rows,), -1, dtype=torch.long, device=states.device).scatter_reduce(0, last // width, last, "amax")
    index = torch.arange(rows * width, device=states.device)
    source = index <= ends[index // width]
    source[last] = False
    positions = index[source]
    if positions.numel() == 0:
        return states.sum() * 0.0
    targets = batch["input_ids"].reshape(-1).to(states.device)[positions + 1]
    head = causal_lm_of(model).get_output_embeddings()
    return linear_cross_entropy_sum(states[positions], head, targets) / positions.numel()


def classify_loss_sum(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    label_token_ids: torch.Tensor,
    label_head: LabelHead | None = None,
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
    prompt_lm_weight: float = 0.0,
) -> torch.Tensor:
    """Summed cross-entropy over the label tokens at each prompt's last position.

    ``label_smoothing``, ``class_weights`` (one weight per label: each example's loss times its label's) and
    ``prompt_lm_weight`` (the prompts' own next-token loss, ``prompt_lm_loss_mean``, times the number of examples
    and this weight, so it scales with the summed label loss) apply while gradients are on (training steps) only:
    the validation loss the loop reports and selects by stays the plain cross-entropy.
    """
    states = _classify_states(model, batch)
    logits = label_logits(model, states[batch["last_positions"]], label_token_ids, label_head).float()
    labels = batch["class_labels"]
    if not torch.is_grad_enabled():
        return F.cross_entropy(logits, labels, reduction="sum")
    if class_weights is None:
        total = F.cross_entropy(logits, labels, reduction="sum", label_smoothing=label_smoothing)
    else:
        # Per example, not F.cross_entropy(weight=...): with label smoothing torch would also weigh the smoothed share
        # by every other label's weight, and the loop averages the sum over examples, not over weights.
        losses = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
        total = (losses * class_weights.to(losses.device)[labels]).sum()
    if prompt_lm_weight:
        total = total + prompt_lm_weight * labels.numel() * prompt_lm_loss_mean(model, batch, states)
    return total


def classify_correct_sum(
    model: nn.Module, batch: dict[str, torch.Tensor], label_token_ids: torch.Tensor, label_head: LabelHead | None = None
) -> torch.Tensor:
    """How many examples of the batch have their own label as the top-scoring one (validation accuracy)."""
    logits = classify_logits(model, batch, label_token_ids, label_head)
    return (logits.argmax(dim=-1) == batch["class_labels"]).sum()


def _token_log_probs(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """log p(targets[i] | hidden[i]) for every row, ``chunk`` rows of logits at a time.

    While training, each chunk runs under activation checkpointing: its logits are recomputed in the
    backward instead of being kept, so no more than one chunk of full-vocabulary logits ever exists.
    """
    from torch.utils.checkpoint import checkpoint

    def piece(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(head(h).float(), t, reduction="none")

    parts = []
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start : start + chunk], targets[start : start + chunk]
        parts.append(checkpoint(piece, h, t, use_reentrant=False) if torch.is_grad_enabled() and h.requires_grad else piece(h, t))
    return torch.cat(parts) if parts else hidden.new_zeros((0,), dtype=torch.float32)


def sequence_log_probs(model: nn.Module, batch: dict[str, torch.Tensor], chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """[pairs, 2] summed log-probabilities of each pair's chosen and rejected answer tokens (``PreferenceCollate``).

    One forward pass over the packed rows; only the answer positions go through the LM head.
    """
    hidden = hidden_states(model, batch["input_ids"], batch["position_ids"])
    index = batch["sequence_index"]
    keep = index >= 0
    head = causal_lm_of(model).get_output_embeddings()
    token_log_probs = _token_log_probs(hidden[keep], head, batch["targets"][keep], chunk)
    pairs = batch["reference"].shape[0]
    sums = torch.zeros(2 * pairs, dtype=torch.float32, device=hidden.device).index_add(0, index[keep], token_log_probs)
    return sums.view(pairs, 2)


def preference_logits(log_ratios: torch.Tensor, answer_tokens: torch.Tensor, loss: str) -> torch.Tensor:
    """[pairs] chosen-minus-rejected log-ratio (policy over reference); per token for ipo and length_normalized.

    ``evaluation.preference`` computes the implicit reward the same way (it may not import ``train``).
    """
    if loss in ("ipo", "length_normalized"):
        log_ratios = log_ratios / answer_tokens.clamp(min=1)
    return log_ratios[:, 0] - log_ratios[:, 1]


def dpo_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], *, beta: float, loss: str = "sigmoid", chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Summed preference loss over the pairs of ``batch`` against the precomputed reference log-probabilities.

    sigmoid (DPO): ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))``; length_normalized: the
    same on per-token averages; ipo: ``(h - 1 / (2 beta))^2`` with h on per-token averages.
    """
    log_ratios = sequence_log_probs(model, batch, chunk) - batch["reference"].float()
    logits = preference_logits(log_ratios, batch["answer_tokens"], loss)
    if loss == "ipo":
        return ((logits - 1.0 / (2.0 * beta)) ** 2).sum()
    return -F.logsigmoid(beta * logits).sum()


def preference_correct_sum(model: nn.Module, batch: dict[str, torch.Tensor], *, loss: str = "sigmoid", chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """How many pairs of the batch the implicit reward ranks chosen above rejected (validation accuracy)."""
    log_ratios = sequence_log_probs(model, batch, chunk) - batch["reference"].float()
    return (preference_logits(log_ratios, batch["answer_tokens"], loss) > 0).sum()
