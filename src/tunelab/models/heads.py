"""Scoring only the tokens that matter: the label columns of the LM head.

Classification needs the logits of a handful of label tokens at one position, never the full
vocabulary (49k columns for SmolLM2). Training (the loss), evaluation (one-pass label scoring) and
serving (``/v1/classify``) all compute them here, so the three agree to the last bit.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def causal_lm_of(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside ``model``; a PEFT wrapper is looked through.

    PEFT injects adapter layers into the base model in place, so its decoder runs them (and honours
    ``disable_adapter()``).
    """
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def label_logits(model: nn.Module, hidden: torch.Tensor, label_token_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the label tokens only, [N, labels], from final hidden states [N, hidden].

    A plain ``nn.Linear`` head is sliced to the label rows; a wrapped head (LoRA on ``lm_head``) has no
    single weight to slice, so it is applied and the label columns picked. Logit soft-capping
    (``final_logit_softcapping``, e.g. Gemma 2) is applied as the model itself would.
    """
    lm = causal_lm_of(model)
    head = lm.get_output_embeddings()
    label_token_ids = label_token_ids.to(hidden.device)
    if type(head) is nn.Linear:
        bias = head.bias[label_token_ids] if head.bias is not None else None
        logits = F.linear(hidden.to(head.weight.dtype), head.weight[label_token_ids], bias)
    else:
        logits = head(hidden)[..., label_token_ids]
    softcap: Any = getattr(getattr(lm, "config", None), "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits
