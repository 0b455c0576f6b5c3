"""Evaluation's generation keeps prompt + answer inside the model's context (``models.generate.context_length``),
the one rule ``tunelab generate`` and the server follow: a GPT-2-style model (absolute positions) past ``n_positions``
failed mid-evaluation with an IndexError traceback."""

from __future__ import annotations

import pytest
from tests.conftest import build_tiny_gpt2

from tunelab.config import DataConfig, EvalConfig
from tunelab.data.records import SFTRecord
from tunelab.errors import ConfigError
from tunelab.evaluation.evaluate import evaluate
from tunelab.models.loader import LoadedModel
from tunelab.models.resolve import ModelSource

CONTEXT = 32


@pytest.fixture(scope="module")
def gpt2(tiny_tokenizer):
    return LoadedModel(build_tiny_gpt2(len(tiny_tokenizer), CONTEXT), tiny_tokenizer, ModelSource("folder", "/tiny-gpt2", "tiny-gpt2"))


def _record(question: str) -> SFTRecord:
    return SFTRecord(({"role": "user", "content": question}, {"role": "assistant", "content": "four"}), source="test.jsonl:1")


def test_prompt_plus_answer_past_the_context_keeps_the_answer_and_cuts_the_prompt(gpt2, monkeypatch):
    from tunelab.models import generate

    asked: list[tuple[int, int]] = []
    real = generate.generate_ids

    def spy(model, input_ids, attention_mask, **options):
        asked.append((input_ids.shape[1], options["max_new_tokens"]))
        return real(model, input_ids, attention_mask, **options)

    monkeypatch.setattr(generate, "generate_ids", spy)
    # data.max_length 64 and eval.max_new_tokens 20 both pass on their own; together they run past 32 positions.
    records = [_record("What is two plus two?"), _record("Four score and seven years ago our fathers brought forth " * 2)]
    result = evaluate(gpt2, records, "sft", config=EvalConfig(max_new_tokens=20, batch_size=1), data_config=DataConfig(max_length=64))
    assert result.n == 2
    assert asked and all(prompt + new <= CONTEXT and new == 20 for prompt, new in asked), asked
    assert any(
        "sft prompts were longer than" in w and f"context of {CONTEXT}" in w and "eval.max_new_tokens=20" in w for w in result.warnings
    ), result.warnings


def test_an_answer_as_long_as_the_context_is_one_line_naming_the_key(gpt2):
    with pytest.raises(ConfigError) as caught:
        evaluate(gpt2, [_record("hello")], "sft", config=EvalConfig(max_new_tokens=CONTEXT), data_config=DataConfig(max_length=64))
    message = str(caught.value)
    assert "\n" not in message and "eval.max_new_tokens" in message and f"context of {CONTEXT}" in message, message


def test_text_windows_longer_than_the_context_are_cut_to_it(gpt2, monkeypatch):
    # Perplexity windows of data.max_length (64) past n_positions (32) were an IndexError traceback (the base model's
    # perplexity, before any training); each window now fits the model's context, and the result says so.
    import importlib

    from tunelab.data.records import TextRecord

    module = importlib.import_module("tunelab.evaluation.evaluate")  # the package exports the function of that name

    widths: list[int] = []
    real = module.window_nll

    def spy(model, windows, **options):
        widths.extend(len(ids) for ids, _ in windows)
        return real(model, windows, **options)

    monkeypatch.setattr(module, "window_nll", spy)
    document = TextRecord("Four score and seven years ago our fathers brought forth on this continent a new nation. " * 3)
    result = evaluate(gpt2, [document], "text", config=EvalConfig(), data_config=DataConfig(max_length=64))
    assert widths and max(widths) <= CONTEXT and result.metrics["perplexity"] > 0
    assert result.settings["stride"] <= CONTEXT // 2
    assert any(f"context of {CONTEXT}" in warning and "data.max_length=64" in warning for warning in result.warnings), result.warnings


@pytest.mark.parametrize("baseline", [False, True])
def test_classify_prompts_longer_than_the_context_have_their_text_shortened_to_it(gpt2, tiny_tokenizer, baseline):
    # A classify prompt of data.max_length (64, more with the zero-shot label list) past n_positions (32) was an
    # IndexError traceback; the text is shortened so the prompt fits the model's context, and the result says so.
    from tunelab.data.labels import build_label_map
    from tunelab.data.records import ClassifyRecord

    records = [ClassifyRecord("my card has not arrived yet and I need help with billing " * 3, "billing", source="test.csv:2"),
               ClassifyRecord("cannot login", "technical", source="test.csv:3")]
    label_map = build_label_map(["billing", "technical"], tiny_tokenizer)
    result = evaluate(gpt2, records, "classify", config=EvalConfig(), data_config=DataConfig(max_length=64), label_map=label_map,
                      baseline=baseline)
    assert result.n == 2 and all(row["prediction"] in label_map.labels for row in result.rows)
    assert any(f"context of {CONTEXT}" in warning for warning in result.warnings), result.warnings


def test_few_shot_classify_prompts_stay_inside_the_context(tiny_tokenizer):
    # The examples' budget left data.max_length (128) for the text beside eval.few_shot_tokens, but not the label list:
    # a long test text made a prompt past the model's 256 positions, an IndexError in the baseline step.
    from tunelab.data.labels import build_label_map
    from tunelab.data.records import ClassifyRecord
    from tunelab.evaluation.baselines import few_shot_classify

    context = 256
    loaded = LoadedModel(build_tiny_gpt2(len(tiny_tokenizer), context), tiny_tokenizer, ModelSource("folder", "/tiny-gpt2", "tiny-gpt2"))
    label_map = build_label_map(["billing", "technical"], tiny_tokenizer)
    train = [ClassifyRecord(f"{word} {i}", label, source=f"train.csv:{i}") for i in range(8) for word, label in [("card", "billing"), ("login", "technical")]]
    test = [ClassifyRecord("my card has not arrived yet and I need help with billing " * 8, "billing", source="test.csv:2"),
            ClassifyRecord("cannot login", "technical", source="test.csv:3")]
    result = few_shot_classify(loaded, train, test, config=EvalConfig(), data_config=DataConfig(max_length=128), label_map=label_map)
    assert result.n == 2 and all(row["prediction"] in label_map.labels for row in result.rows)


def test_few_shot_examples_leave_the_text_its_max_length_beside_the_label_list(tiny_tokenizer, monkeypatch):
    # The examples' budget was the context less data.max_length, but the label list comes on top: a long test text
    # was shortened below data.max_length (what the tuned model reads), so the opponent read less than the tuned model.
    from tunelab.data.labels import build_label_map
    from tunelab.data.records import ClassifyRecord
    from tunelab.evaluation.baselines import few_shot_classify
    from tunelab.evaluation.evaluate import zero_shot_extra_tokens
    from tunelab.inference import Classifier

    limits: list[tuple[int, int]] = []
    real = Classifier.prompt

    def spy(self, text):
        limits.append((self.max_length, self.limit))
        return real(self, text)

    monkeypatch.setattr(Classifier, "prompt", spy)

    context, max_length = 320, 128
    loaded = LoadedModel(build_tiny_gpt2(len(tiny_tokenizer), context), tiny_tokenizer, ModelSource("folder", "/tiny-gpt2", "tiny-gpt2"))
    label_map = build_label_map(["billing", "technical"], tiny_tokenizer)
    train = [ClassifyRecord(f"{word} {i}", label, source=f"train.csv:{i}") for i in range(8) for word, label in [("card", "billing"), ("login", "technical")]]
    test = [ClassifyRecord("my card has not arrived yet and I need help with billing " * 8, "billing", source="test.csv:2"),
            ClassifyRecord("cannot login", "technical", source="test.csv:3")]
    result = few_shot_classify(loaded, train, test, config=EvalConfig(), data_config=DataConfig(max_length=max_length), label_map=label_map)
    budget = context - max_length - zero_shot_extra_tokens(tiny_tokenizer, label_map, None)
    assert result.settings["examples"] > 0
    assert any(f"few-shot examples get {budget} tokens" in warning for warning in result.warnings), result.warnings
    # The prompt's room (max_length + label list + examples) fits the context: the text is never cut below max_length.
    assert limits and all(room == limit for room, limit in limits), limits


def test_preference_pairs_longer_than_the_context_are_cut_to_it(tiny_tokenizer):
    # A chosen or rejected answer of data.max_length (128) past n_positions (64) was an IndexError traceback (the base
    # model's preference accuracy, before any training); each pair is now read within the context, as text windows are.
    from tunelab.data.records import PreferenceRecord

    context = 64
    loaded = LoadedModel(build_tiny_gpt2(len(tiny_tokenizer), context), tiny_tokenizer, ModelSource("folder", "/tiny-gpt2", "tiny-gpt2"))
    records = [PreferenceRecord(({"role": "user", "content": "hi"},), "ok", "no", source="test.jsonl:1"),
               PreferenceRecord(({"role": "user", "content": "hi"},), "fine thanks " * 6, "go away " * 6, source="test.jsonl:2")]
    result = evaluate(loaded, records, "preference", config=EvalConfig(), data_config=DataConfig(max_length=2 * context), baseline=True)
    assert result.n == 2
    assert any(f"context of {context}" in warning and f"data.max_length={2 * context}" in warning for warning in result.warnings), result.warnings
