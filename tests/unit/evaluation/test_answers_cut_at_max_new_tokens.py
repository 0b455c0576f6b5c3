"""An sft answer that reaches eval.max_new_tokens before any end of turn is scored as it was cut, mid-sentence: the
evaluation says how many were, so a low score from answers that never stop (or a budget too small for the references)
is not read as wrong answers."""

from __future__ import annotations

import torch

from tunelab.config import DataConfig, EvalConfig
from tunelab.data.records import SFTRecord
from tunelab.evaluation.evaluate import evaluate
from tunelab.models.loader import LoadedModel
from tunelab.models.resolve import ModelSource


def _record(question: str) -> SFTRecord:
    return SFTRecord(({"role": "user", "content": question}, {"role": "assistant", "content": "Paris"}), source=f"{question}.jsonl:1")


def test_answers_that_run_to_the_limit_are_counted(tiny_model, tiny_tokenizer, monkeypatch):
    from tunelab.models import generate

    paris = tiny_tokenizer.encode("Paris", add_special_tokens=False)
    end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")

    def scripted(model, input_ids, attention_mask, *, max_new_tokens, **options):
        # The prompt asking to stop gets "Paris" and the end of turn; the other runs on to the limit.
        stops = "stop" in tiny_tokenizer.decode(input_ids[0].tolist())
        new = (paris + [end] if stops else paris * max_new_tokens)[:max_new_tokens]
        return torch.cat([input_ids, torch.tensor([new])], dim=1)

    monkeypatch.setattr(generate, "generate_ids", scripted)
    records = [_record("stop"), _record("go on")]
    result = evaluate(LoadedModel(tiny_model, tiny_tokenizer, ModelSource("folder", "/tiny", "tiny")), records, "sft",
                      config=EvalConfig(max_new_tokens=6, batch_size=1), data_config=DataConfig(max_length=64))
    assert [row["prediction"] for row in result.rows][0] == "Paris"
    assert any("1 of 2 answers" in w and "eval.max_new_tokens=6" in w for w in result.warnings), result.warnings
