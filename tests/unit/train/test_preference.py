"""DPO on the one loop: the loss against a hand computation, the reference is the SFT parent, training moves the margin."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tests.unit.train.train_helpers import assert_same_training, records_split, sft_records, tiny_config

from tunelab.data.records import PreferenceRecord
from tunelab.data.split import Split
from tunelab.data.tokenize import IGNORE_INDEX, tokenize_preference, tokenize_records
from tunelab.runs import RunFolder, load_run
from tunelab.tasks import run_training
from tunelab.train.batching import PreferenceCollate
from tunelab.train.losses import dpo_loss_sum, sequence_log_probs


def preference_records(n: int = 8) -> list[PreferenceRecord]:
    return [
        PreferenceRecord(({"role": "user", "content": f"What is {i} plus {i}?"},), f"It is {2 * i}.", f"No idea about {i}, sorry.")
        for i in range(n)
    ]


def _answer_log_prob(model, ids: list[int], labels: list[int]) -> float:
    """Summed log-probability of the labelled tokens, from a plain full forward pass (the hand computation)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    return sum(log_probs[t - 1, labels[t]].item() for t in range(1, len(ids)) if labels[t] != IGNORE_INDEX)


def test_tokenized_pair_trains_only_the_last_answer(tiny_tokenizer):
    record = PreferenceRecord(
        ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "two plus two?"}),
        "four", "five",
    )
    example = tokenize_preference(record, tiny_tokenizer, max_length=256)
    trained = tiny_tokenizer.decode([t for t in example.chosen_labels if t != IGNORE_INDEX])
    assert trained == "four<|im_end|>"  # the earlier assistant turn is context only
    assert tiny_tokenizer.decode([t for t in example.rejected_labels if t != IGNORE_INDEX]) == "five<|im_end|>"
    # A long pair loses the same prompt tokens on both sides, and keeps its answers.
    short = tokenize_preference(record, tiny_tokenizer, max_length=len(example.chosen_ids) - 3)
    assert short.truncated and short.chosen_ids == example.chosen_ids[3:] and short.rejected_ids == example.rejected_ids[3:]


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "length_normalized"])
def test_dpo_loss_matches_a_hand_computation(tiny_model, tiny_tokenizer, loss):
    examples, _ = tokenize_records(preference_records(3), "preference", tiny_tokenizer, max_length=64, use_cache=False)
    reference = [(-20.0 - i, -25.0 + i) for i in range(3)]
    examples = [
        type(e)(**{**e.__dict__, "reference_chosen": c, "reference_rejected": r}) for e, (c, r) in zip(examples, reference, strict=True)
    ]
    beta = 0.3
    batch = PreferenceCollate(tiny_tokenizer.pad_token_id, 64, row_tokens=512)(examples)
    assert batch["input_ids"].shape[0] == 1  # three pairs, six sequences, packed into one row
    with torch.no_grad():
        got = dpo_loss_sum(tiny_model, batch, beta=beta, loss=loss).item()
    expected = 0.0
    for e, (ref_c, ref_r) in zip(examples, reference, strict=True):
        ratio_c = _answer_log_prob(tiny_model, e.chosen_ids, e.chosen_labels) - ref_c
        ratio_r = _answer_log_prob(tiny_model, e.rejected_ids, e.rejected_labels) - ref_r
        if loss != "sigmoid":
            ratio_c, ratio_r = ratio_c / e.chosen_tokens, ratio_r / e.rejected_tokens
        h = ratio_c - ratio_r
        expected += (h - 1 / (2 * beta)) ** 2 if loss == "ipo" else -math.log(1 / (1 + math.exp(-beta * h)))
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_reference_is_the_sft_parent_and_dpo_moves_the_margin(tmp_path, tiny_model_dir, tiny_tokenizer):
    sft_config = tiny_config(tiny_model_dir, "sft", max_steps=8, lr=1e-2)
    sft_run = tmp_path / "sft"
    run_training(sft_config, records_split(sft_records(8)), run_dir=sft_run)

    pairs = preference_records(8)
    config = tiny_config(sft_run, "preference", max_steps=12, lr=1e-2)
    split = Split("preference", pairs, pairs[:2], [])
    result = run_training(config, split, run_dir=tmp_path / "dpo")
    assert result.steps == 12 and result.method == "lora"

    # The reference log-probabilities are the SFT model's (adapter active), computed by a plain forward pass.
    sft = load_run(sft_run)
    saved = json.loads(RunFolder(tmp_path / "dpo").reference_log_probs.read_text())
    examples, _ = tokenize_records(pairs, "preference", tiny_tokenizer, max_length=64, use_cache=False)
    assert len(saved) == len(pairs)
    for example, row in zip(examples, saved, strict=True):
        assert row["chosen"] == pytest.approx(_answer_log_prob(sft.model, example.chosen_ids, example.chosen_labels), abs=1e-3)
        assert row["rejected"] == pytest.approx(_answer_log_prob(sft.model, example.rejected_ids, example.rejected_labels), abs=1e-3)

    # The DPO run loads on top of its SFT parent; with its adapter disabled it is exactly that parent.
    dpo = load_run(tmp_path / "dpo")
    collate = PreferenceCollate(tiny_tokenizer.pad_token_id, 64)
    batch = collate(examples)
    with torch.no_grad():
        with dpo.model.disable_adapter():
            parent = sequence_log_probs(dpo.model, batch)
        after = sequence_log_probs(dpo.model, batch)
    reference = torch.tensor([[row["chosen"], row["rejected"]] for row in saved])
    assert torch.allclose(parent, reference, atol=1e-3)
    margin = ((after - reference)[:, 0] - (after - reference)[:, 1]).mean().item()
    assert margin > 0.5  # the policy now prefers the chosen answers relative to the reference


def test_dpo_step_in_smaller_passes_trains_the_same_weights(tmp_path, tiny_model_dir):
    pairs = preference_records(8)
    for name, budget in (("one-pass", None), ("passes", 1)):
        config = tiny_config(tiny_model_dir, "preference", max_steps=3, batch_size=8, lr=1e-2, max_pass_tokens=budget)
        run_training(config, Split("preference", pairs, [], []), run_dir=tmp_path / name)
    assert_same_training(tmp_path / "one-pass", tmp_path / "passes")


def test_a_pair_whose_answers_differ_only_beyond_max_length_is_reported_not_trained(tmp_path, tiny_model_dir):
    """Cut to data.max_length, chosen and rejected were the same tokens: a pair with no gradient that still counted in
    every step's mean (and as a miss in validation), trained on without a word."""
    shared = "The capital of France is Paris. The capital of Italy is Rome. " * 3
    tied = [PreferenceRecord(({"role": "user", "content": f"Tell me {i}"},), shared + "Four score.", shared + "No idea.", source=f"tied:{i}")
            for i in range(2)]
    pairs = preference_records(4)
    config = tiny_config(tiny_model_dir, "preference", max_steps=1, batch_size=8)
    config = config.model_copy(update={"data": config.data.model_copy(update={"max_length": 32})})
    result = run_training(config, Split("preference", pairs + tied, tied[:1], []), run_dir=tmp_path / "dpo")
    trained = json.loads(RunFolder(tmp_path / "dpo").reference_log_probs.read_text())
    assert sorted(row["source"] for row in trained) == sorted(p.source for p in pairs)
    assert sum("tied:" in warning and "max_length" in warning for warning in result.warnings) == 2

    from tunelab.errors import DataError

    with pytest.raises(DataError, match="max_length"):
        run_training(config, Split("preference", tied, [], []), run_dir=tmp_path / "only-tied")
