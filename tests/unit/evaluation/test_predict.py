import math

import numpy as np
import pytest
import torch

from tunelab.data.records import TextRecord
from tunelab.data.templates import render_prompt_ids
from tunelab.data.tokenize import tokenize_text
from tunelab.evaluation.predict import label_logits, window_nll
from tunelab.models.generate import generate_batch

PROMPTS = [
    "What is two plus two?",
    "capital of France",
    "my card has not arrived yet, I need help with billing and my account please",
    "Four score",
    "refund",
]


def _prompt_ids(tokenizer):
    return [render_prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS]


def _sharpen(model, seed=1):
    # Default init (std 0.02) gives near-uniform logits and the same token forever; larger weights give varied answers.
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 0.3)
    return model


def test_batched_greedy_generation_equals_one_at_a_time(tiny_model, tiny_tokenizer):
    _sharpen(tiny_model)
    prompts = _prompt_ids(tiny_tokenizer)
    assert len({len(p) for p in prompts}) > 1  # different lengths, so left padding is exercised
    batched = generate_batch(tiny_model, tiny_tokenizer, prompts, max_new_tokens=12, batch_size=5)
    single = [generate_batch(tiny_model, tiny_tokenizer, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert len(set(batched)) == len(batched)  # real, distinct answers, not all empty


def test_generation_stops_at_end_of_turn(tiny_model, tiny_tokenizer):
    end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    # Make <|im_end|> the overwhelmingly likely next token: the answer is empty, not 12 tokens of noise.
    with torch.no_grad():
        tiny_model.lm_head.weight[end] += 50 * tiny_model.model.norm.weight.sign()
    answers = generate_batch(tiny_model, tiny_tokenizer, _prompt_ids(tiny_tokenizer)[:2], max_new_tokens=12)
    assert answers == ["", ""]


def test_label_scores_equal_full_logits_restricted_to_label_columns(tiny_model, tiny_tokenizer):
    prompts = _prompt_ids(tiny_tokenizer)
    label_ids = [tiny_tokenizer.convert_tokens_to_ids(t) for t in ("A", "B", "C", "D")]
    scores = label_logits(tiny_model, prompts, label_ids, batch_size=2)
    for row, ids in enumerate(prompts):
        with torch.no_grad():
            full = tiny_model(input_ids=torch.tensor([ids])).logits[0, -1]
        restricted = full[label_ids].numpy()
        np.testing.assert_allclose(scores[row], restricted, rtol=1e-4, atol=1e-5)
        assert scores[row].argmax() == restricted.argmax()


def test_label_scores_through_a_peft_adapter(tiny_model, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.eval()
    prompts = _prompt_ids(tiny_tokenizer)[:2]
    label_ids = [tiny_tokenizer.convert_tokens_to_ids(t) for t in ("A", "B")]
    scores = label_logits(peft_model, prompts, label_ids)
    with torch.no_grad():
        full = peft_model(input_ids=torch.tensor([prompts[0]])).logits[0, -1, label_ids].numpy()
        plain = peft_model.get_base_model()
        with peft_model.disable_adapter():
            unadapted = plain(input_ids=torch.tensor([prompts[0]])).logits[0, -1, label_ids].numpy()
    np.testing.assert_allclose(scores[0], full, rtol=1e-4, atol=1e-5)
    assert not np.allclose(scores[0], unadapted)  # the adapter is really in the scored path


def test_perplexity_is_exp_of_mean_nll_over_all_predicted_tokens(tiny_model, tiny_tokenizer):
    record = TextRecord("The capital of France is Paris. Four score and seven years ago our fathers brought forth.")
    ids = tiny_tokenizer.encode(record.text, add_special_tokens=False) + [tiny_tokenizer.eos_token_id]
    with torch.no_grad():
        logits = tiny_model(input_ids=torch.tensor([ids])).logits[0]
    log_probs = torch.log_softmax(logits, dim=-1)
    by_hand = -sum(log_probs[t - 1, ids[t]].item() for t in range(1, len(ids)))
    whole = window_nll(tiny_model, [(w.input_ids, w.labels) for w in tokenize_text(record, tiny_tokenizer, 512)])
    assert sum(c for _, c in whole) == len(ids) - 1
    assert math.isclose(sum(s for s, _ in whole), by_hand, rel_tol=1e-4)


@pytest.mark.parametrize("stride", [None, 8])
def test_sliding_window_counts_every_token_once(tiny_model, tiny_tokenizer, stride):
    record = TextRecord("Four score and seven years ago our fathers brought forth on this continent a new nation. " * 3)
    n = len(tiny_tokenizer.encode(record.text, add_special_tokens=False)) + 1
    windows = tokenize_text(record, tiny_tokenizer, 16, stride)
    assert len(windows) > 1
    counted = sum(c for _, c in window_nll(tiny_model, [(w.input_ids, w.labels) for w in windows], batch_size=3))
    # Every token but the document's first is predicted once: windows share at least one token (without that, each
    # window's first was lost).
    assert counted == n - 1
