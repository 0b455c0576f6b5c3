"""Preference evaluation scores the pairs training can learn from: a pair whose two answers are cut by max_length to
the same tokens ranks neither above the other for any model, and training leaves it out (``tasks.preference``);
evaluation counted it as a wrong ranking for every model, so accuracy was pulled down by pairs no model can win."""

from __future__ import annotations

from tunelab.config import DataConfig, EvalConfig
from tunelab.data.records import PreferenceRecord
from tunelab.evaluation.evaluate import evaluate
from tunelab.models.loader import LoadedModel
from tunelab.models.resolve import ModelSource

SHARED = "The capital of France is Paris. The capital of Italy is Rome. " * 3


def test_a_pair_cut_to_identical_answers_is_not_scored(tiny_model, tiny_tokenizer):
    loaded = LoadedModel(tiny_model, tiny_tokenizer, ModelSource("folder", "/tiny", "tiny"))
    prompt = ({"role": "user", "content": "Name a capital."},)
    records = [
        PreferenceRecord(prompt, "Paris", "Rome", source="pairs.jsonl:1"),
        # The answers differ only after SHARED, which max_length cuts off: both sides are the same tokens.
        PreferenceRecord(prompt, SHARED + "Yes.", SHARED + "No.", source="pairs.jsonl:2"),
    ]
    result = evaluate(loaded, records, "preference", config=EvalConfig(), data_config=DataConfig(max_length=48), baseline=True)
    assert [row["source"] for row in result.rows] == ["pairs.jsonl:1"]
    assert any("1 pair" in w and "max_length" in w for w in result.warnings), result.warnings
