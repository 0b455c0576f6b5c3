"""Scoring only the tokens that matter: the label columns of the LM head.

Classification needs the logits of a handful of label tokens at one position, never the full
vocabulary (49k columns for SmolLM2). Training (the loss), evaluation (one-pass label scoring) and
serving (``/v1/classify``) all compute them here, so the three agree to the last bit.

A classify run also trains a ``LabelHead``: a delta over the label tokens' rows of the output head.
It is needed because the default model ties its output head to its input embeddings, so LoRA on the
linear layers never moves the rows the answer is read from; and it lets each label's row start
from the meaning of the label's name (the mean embedding of its name's tokens) instead of from an
arbitrary code token such as "A". A LoRA run saves the trained rows inside its PEFT adapter as PEFT's own
trainable tokens on the output head (``trainable_token_indices``), so plain ``peft`` loads them
(``label_rows_as_trainable_tokens``); runs saved before kept the delta beside it (``label_head.safetensors``,
still read). tunelab itself reads either form back as a ``LabelHead`` (``models.adapters.read_label_head``) and
scores the label columns only; merge/export fold the rows into an untied output head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LABEL_HEAD_FILE = "label_head.safetensors"


def causal_lm_of(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside ``model``; a PEFT wrapper is looked through.

    PEFT injects adapter layers into the base model in place, so its decoder runs them (and honours
    ``disable_adapter()``).
    """
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class LabelHead(nn.Module):
    """A trainable delta [labels, hidden] added to the label tokens' rows of the output head."""

    def __init__(self, token_ids: list[int] | torch.Tensor, delta: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("token_ids", torch.as_tensor(token_ids, dtype=torch.long), persistent=False)
        self.delta = nn.Parameter(delta.detach().clone().float())

    @classmethod
    def initialise(cls, model: nn.Module, token_ids: list[int], name_token_ids: list[list[int]] | None) -> LabelHead:
        """A head whose label rows start at the label names' meaning (``name_token_ids``) or, when
        None, at the label tokens' own rows (delta zero).

        A label's name row is the mean input embedding of its name's tokens, rescaled to the norm of
        the row it replaces: averaging shrinks a vector, and the logit scale of the other rows must match.
        """
        lm = causal_lm_of(model)
        head_rows = lm.get_output_embeddings().weight.detach()[torch.tensor(token_ids)].float()
        if name_token_ids is None:
            return cls(token_ids, torch.zeros_like(head_rows))
        embeddings = lm.get_input_embeddings().weight.detach()
        targets = torch.stack([embeddings[torch.tensor(ids)].float().mean(0) for ids in name_token_ids])
        targets = targets * (head_rows.norm(dim=-1, keepdim=True) / targets.norm(dim=-1, keepdim=True).clamp(min=1e-6))
        return cls(token_ids, targets - head_rows)

    def save(self, folder: Path) -> Path:
        from safetensors.torch import save_file

        path = Path(folder) / LABEL_HEAD_FILE
        save_file({"delta": self.delta.detach().cpu().contiguous(), "token_ids": self.token_ids.cpu()}, str(path))
        return path

    @classmethod
    def load(cls, folder: Path) -> LabelHead | None:
        """The head saved in ``folder``, or None when the run has none (runs from before it existed)."""
        path = Path(folder) / LABEL_HEAD_FILE
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        return cls(tensors["token_ids"], tensors["delta"])

    def with_temperature(self, model: nn.Module, temperature: float) -> LabelHead:
        """The head whose label logits are this head's divided by ``temperature`` (temperature scaling, folded in).

        logits / T = h (W + delta)^T / T, so the new delta is (W + delta) / T - W over the output head's label
        rows W: the answers stay, the probabilities are calibrated, and everything that scores through the
        head (evaluation, serving, the merged export) gives the calibrated ones. Exact for a plain linear head
        without bias (the default model's); soft-capped logits are scaled before the cap.
        """
        weight = _plain_head(causal_lm_of(model).get_output_embeddings()).weight.detach()
        rows = weight[self.token_ids.to(weight.device)].float().cpu()
        delta = (rows + self.delta.detach().float().cpu()) / float(temperature) - rows
        return LabelHead(self.token_ids.cpu(), delta)

    def fold_into(self, model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Add the delta to the output head's label rows for good, untying the head from the input
        embeddings first (the label tokens also occur in input text, whose embeddings must not move).

        ``state_dict``: ``model``'s whole weights when its own are shards (FSDP, DeepSpeed): the folded head goes there.
        """
        if state_dict is None:
            weight = causal_lm_of(model).get_output_embeddings().weight.detach().clone()
        else:
            key, weight = _gathered_head(model, state_dict)
            weight = weight.detach().clone()
        weight[self.token_ids.to(weight.device)] += self.delta.detach().to(weight.device, weight.dtype)
        if state_dict is None:
            untie_output_head(model, weight)
            return
        state_dict[key] = weight  # under the head's own name, untied in the config as untie_output_head does
        lm = causal_lm_of(model)
        lm.config.tie_word_embeddings = False
        if hasattr(lm.config, "get_text_config"):
            lm.config.get_text_config().tie_word_embeddings = False


def untie_output_head(model: nn.Module, weight: torch.Tensor) -> None:
    """Give the output head (the linear layer under a LoRA wrapper) ``weight`` as its own parameter, no longer tied
    to the input embeddings, and say so in the config (so saving and loading keep the two apart)."""
    lm = causal_lm_of(model)
    head = lm.get_output_embeddings()
    getattr(head, "base_layer", head).weight = nn.Parameter(weight, requires_grad=False)
    lm.config.tie_word_embeddings = False
    if hasattr(lm.config, "get_text_config"):
        lm.config.get_text_config().tie_word_embeddings = False


def output_head_name(model: nn.Module) -> str:
    """The output head's module name inside the causal LM (``lm_head`` for Llama): where PEFT's trainable tokens go."""
    lm = causal_lm_of(model)
    head = lm.get_output_embeddings()
    return next(name for name, module in lm.named_modules() if module is head)


def label_rows_as_trainable_tokens(
    model: nn.Module, label_head: LabelHead, state_dict: dict[str, torch.Tensor] | None = None
) -> tuple[str, list[int], torch.Tensor]:
    """(output head's module name, label token ids, their trained rows): a run's label head in PEFT's own form.

    PEFT's ``trainable_token_indices`` (a ``TrainableTokensWrapper`` on the output head) stores replacement rows
    for chosen token ids, so a plain ``PeftModel.from_pretrained`` scores the labels as tunelab does. Only the
    output head is wrapped: the label tokens' input embeddings stay as they were, tied head or not.

    ``state_dict``: ``model``'s whole weights when its own are shards (FSDP, DeepSpeed), where the head's are read.
    """
    lm = causal_lm_of(model)
    head = _plain_head(lm.get_output_embeddings())
    weight = head.weight.detach()
    if state_dict is not None:
        weight = _gathered_head(model, state_dict)[1].detach()
    ids = label_head.token_ids.tolist()
    rows = weight[label_head.token_ids.to(weight.device)].float() + label_head.delta.detach().to(weight.device).float()
    return output_head_name(model), [int(i) for i in ids], rows.to(weight.dtype).cpu().contiguous()


def _gathered_head(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> tuple[str, torch.Tensor]:
    """(the output head's weight name in ``model``, its weight in ``state_dict``): ``model``'s whole weights, gathered.

    A sharded head's weight is a DTensor that only every process together can read; the gathered copy is whole.
    A tied head may be saved under the input embeddings' name only.
    """
    lm = causal_lm_of(model)
    names = {module: f"{name}.weight" for name, module in model.named_modules()}
    own = names[_plain_head(lm.get_output_embeddings())]
    found = next((key for key in (own, names.get(lm.get_input_embeddings())) if key in state_dict), None)
    if found is None:
        raise KeyError(f"the gathered weights hold no output head ({own})")
    return own, state_dict[found]


def _plain_head(head: nn.Module) -> nn.Module:
    """The linear layer under a PEFT trainable-tokens wrapper (the head itself when not wrapped)."""
    adapter = getattr(head, "token_adapter", None)
    return adapter.get_base_layer() if adapter is not None else head


def label_logits(
    model: nn.Module, hidden: torch.Tensor, label_token_ids: torch.Tensor, label_head: LabelHead | None = None
) -> torch.Tensor:
    """Logits of the label tokens only, [N, labels], from final hidden states [N, hidden].

    A plain ``nn.Linear`` head is sliced to the label rows; a wrapped head (LoRA on ``lm_head``) has no
    single weight to slice, so it is applied and the label columns picked. ``label_head`` adds a
    classify run's trained delta to those rows. Logit soft-capping (``final_logit_softcapping``, e.g.
    Gemma 2) is applied as the model itself would.
    """
    lm = causal_lm_of(model)
    head = lm.get_output_embeddings()
    label_token_ids = label_token_ids.to(hidden.device)
    if type(head) is nn.Linear:
        rows = head.weight[label_token_ids]
        if label_head is not None:
            rows = rows + label_head.delta.to(rows.device, rows.dtype)
        bias = head.bias[label_token_ids] if head.bias is not None else None
        logits = F.linear(hidden.to(rows.dtype), rows, bias)
    else:
        logits = head(hidden)[..., label_token_ids]
        if label_head is not None:
            delta = label_head.delta.to(hidden.device)
            logits = logits + (hidden.to(delta.dtype) @ delta.T).to(logits.dtype)
    softcap: Any = getattr(getattr(lm, "config", None), "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits
