"""Shared-prefix reuse in classify evaluation equals the full computation, token by token."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunelab.data.labels import build_label_map
from tunelab.data.templates import classify_messages, render_prompt_ids, zero_shot_messages
from tunelab.evaluation.predict import label_logits, prefix_label_logits, shared_prefix_length
from tunelab.models.heads import LabelHead

LABELS = ["billing", "technical", "shipping"]
TEXTS = ["the invoice shows a wrong charge", "the app has a bug and crashes", "where is my parcel", "login error again"]


def _prompts(tokenizer, style):
    label_map = build_label_map(LABELS, tokenizer)
    build = (lambda text: zero_shot_messages(text, label_map)) if style == "zero-shot" else classify_messages
    return label_map, [render_prompt_ids(tokenizer, build(text)) for text in TEXTS]


@pytest.mark.parametrize("style", ["zero-shot", "trained"])
def test_every_token_after_the_prefix_scores_as_in_the_full_prompt(style, tiny_model, tiny_tokenizer):
    label_map, prompts = _prompts(tiny_tokenizer, style)
    prefix = shared_prefix_length(prompts)
    assert prefix >= 16 and all(len(p) > prefix for p in prompts)
    # Every position after the shared prefix of every prompt, scored as its own prompt: token by token.
    cuts = [p[: prefix + j] for p in prompts for j in range(1, len(p) - prefix + 1)]
    assert shared_prefix_length(cuts) == prefix
    full = label_logits(tiny_model, cuts, label_map.token_ids, batch_size=5)
    reused = prefix_label_logits(tiny_model, cuts, label_map.token_ids, batch_size=5)
    np.testing.assert_allclose(reused, full, rtol=1e-4, atol=1e-5)
    assert (reused.argmax(axis=1) == full.argmax(axis=1)).all()


def test_prefix_reuse_applies_a_trained_label_head(tiny_model, tiny_tokenizer):
    label_map, prompts = _prompts(tiny_tokenizer, "trained")
    torch.manual_seed(0)
    hidden = tiny_model.config.hidden_size
    head = LabelHead(label_map.token_ids, torch.randn(len(label_map.token_ids), hidden))
    full = label_logits(tiny_model, prompts, label_map.token_ids, label_head=head)
    reused = prefix_label_logits(tiny_model, prompts, label_map.token_ids, label_head=head)
    np.testing.assert_allclose(reused, full, rtol=1e-4, atol=1e-5)
    assert not np.allclose(full, label_logits(tiny_model, prompts, label_map.token_ids), atol=1e-3)  # the head mattered
