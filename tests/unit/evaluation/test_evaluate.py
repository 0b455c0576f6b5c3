import dataclasses
import math

import pytest
import torch

from tunelab.config import DataConfig, EvalConfig
from tunelab.data.labels import build_label_map
from tunelab.data.records import ClassifyRecord, SFTRecord, TextRecord
from tunelab.errors import ConfigError, DataError
from tunelab.evaluation.evaluate import evaluate, select_test_records
from tunelab.evaluation.result import EvalResult
from tunelab.models.loader import LoadedModel
from tunelab.models.resolve import ModelSource

TEXTS = ["my card has not arrived yet", "I need a refund", "cannot login to my account", "billing is wrong", "cancel it"]
LABELS = ["billing", "technical", "billing", "refund", "technical"]


@pytest.fixture
def loaded(tiny_model, tiny_tokenizer):
    return LoadedModel(tiny_model, tiny_tokenizer, ModelSource("folder", "/tiny", "tiny"))


def _classify_records():
    return [ClassifyRecord(t, label, source=f"test.csv:{i + 2}") for i, (t, label) in enumerate(zip(TEXTS, LABELS, strict=True))]


def test_classify_predictions_are_the_argmax_over_label_tokens(loaded, tiny_tokenizer):
    records = _classify_records()
    label_map = build_label_map(["billing", "technical", "refund"], tiny_tokenizer)
    result = evaluate(loaded, records, "classify", config=EvalConfig(batch_size=2), data_config=DataConfig(), label_map=label_map)
    assert result.n == 5 and result.labels == label_map.labels
    assert result.metrics["primary"] == "accuracy"
    correct = [row["scores"]["correct"] for row in result.rows]
    assert result.metrics["accuracy"] == pytest.approx(sum(correct) / 5)
    for row in result.rows:
        assert row["prediction"] in label_map.labels
        assert 1 / 3 <= row["scores"]["confidence"] <= 1
        assert row["scores"]["probability_of_reference"] <= row["scores"]["confidence"] + 1e-9
    assert sum(map(sum, result.metrics["confusion_matrix"]["matrix"])) == 5
    assert result.settings["prompt"] == "trained"


def test_baseline_uses_the_zero_shot_prompt_over_the_same_label_tokens(loaded, tiny_tokenizer):
    records = _classify_records()
    label_map = build_label_map(["billing", "technical", "refund"], tiny_tokenizer)
    tuned = evaluate(loaded, records, "classify", config=EvalConfig(), data_config=DataConfig(), label_map=label_map)
    base = evaluate(loaded, records, "classify", config=EvalConfig(), data_config=DataConfig(), label_map=label_map, baseline=True)
    assert base.settings["prompt"] == "zero_shot" and base.baseline
    assert base.test_fingerprint == tuned.test_fingerprint
    # Different prompts, so different probabilities for the same model.
    assert [r["scores"]["confidence"] for r in base.rows] != [r["scores"]["confidence"] for r in tuned.rows]


def test_a_long_label_list_is_never_cut_from_the_zero_shot_prompt(loaded, tiny_tokenizer, monkeypatch):
    """77 BANKING77 labels make a zero-shot template longer than max_length: the text, not the list, is what fits."""
    import tunelab.inference as inference_module
    from tunelab.evaluation.evaluate import zero_shot_extra_tokens

    labels = [f"intent_{i}" for i in range(40)]
    label_map = build_label_map(labels, tiny_tokenizer)
    records = [ClassifyRecord(f"request number {i}", labels[i]) for i in range(4)]
    data_config = DataConfig(max_length=128)  # the trained prompt of these texts fits (about 90 tokens)
    extra = zero_shot_extra_tokens(tiny_tokenizer, label_map, None)
    assert extra > data_config.max_length  # the list alone is longer than max_length
    seen = []
    real = inference_module.prefix_label_logits  # the one classify inference runs it
    monkeypatch.setattr(inference_module, "prefix_label_logits", lambda model, prompts, *a, **k: seen.extend(prompts) or real(model, prompts, *a, **k))
    base = evaluate(loaded, records, "classify", config=EvalConfig(), data_config=data_config, label_map=label_map, baseline=True)
    assert not any("shortened" in w for w in base.warnings)
    for record, prompt in zip(records, seen, strict=True):
        text = tiny_tokenizer.decode(prompt)
        assert all(label in text for label in labels) and record.text in text


def test_unknown_test_labels_count_as_wrong_and_are_listed(loaded, tiny_tokenizer):
    records = _classify_records() + [ClassifyRecord("where is my parcel", "shipping", source="test.csv:9")]
    label_map = build_label_map(["billing", "technical", "refund"], tiny_tokenizer)
    result = evaluate(loaded, records, "classify", config=EvalConfig(), data_config=DataConfig(), label_map=label_map)
    assert result.metrics["unknown_labels"] == {"shipping": 1}
    assert result.metrics["unknown_label_examples"] == ["test.csv:9"]
    assert result.rows[-1]["scores"]["correct"] == 0.0
    assert any("never trained on" in w for w in result.warnings)


def test_bad_test_sets_are_clear_errors_or_warnings(loaded):
    with pytest.raises(DataError, match="empty"):
        evaluate(loaded, [], "classify", config=EvalConfig(), data_config=DataConfig())
    with pytest.raises(DataError, match="not sft records"):
        evaluate(loaded, _classify_records(), "sft", config=EvalConfig(), data_config=DataConfig())
    no_answer = SFTRecord(({"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}), source="t.jsonl:4")
    with pytest.raises(DataError, match="t.jsonl:4: no reference"):
        evaluate(loaded, [no_answer], "sft", config=EvalConfig(), data_config=DataConfig())
    records = _classify_records()
    result = evaluate(loaded, records, "classify", config=EvalConfig(), data_config=DataConfig(), train_ids={records[1].id})
    assert "also appear in the training data" in result.warnings[0] and "test.csv:3" in result.warnings[0]


def test_sft_generates_and_scores_against_every_reference(loaded, tmp_path):
    @dataclasses.dataclass(frozen=True)
    class MultiReference(SFTRecord):
        references: tuple[str, ...] = ()

    plain = SFTRecord(({"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "four"}), source="a:1")
    multi = MultiReference(
        ({"role": "user", "content": "capital of France"}, {"role": "assistant", "content": "Paris"}), source="a:2", references=("Paris", "It is Paris")
    )
    result = evaluate(loaded, [plain, multi], "sft", config=EvalConfig(max_new_tokens=5), data_config=DataConfig())
    assert result.metrics["primary"] == "rougeL"
    assert result.rows[1]["references"] == ["Paris", "It is Paris"]
    assert "references" not in result.rows[0]
    for key in ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match", "length"):
        assert key in result.metrics
    again = EvalResult.load(result.save(tmp_path / "sft.json"))
    assert again.rows == result.rows and again.metrics == result.metrics


def test_text_perplexity_equals_hand_computation_when_the_window_covers_the_document(loaded, tiny_tokenizer, tiny_model):
    documents = [TextRecord("The capital of France is Paris."), TextRecord("Four score and seven years ago our fathers brought forth.")]
    result = evaluate(loaded, documents, "text", config=EvalConfig(batch_size=2), data_config=DataConfig(max_length=256))
    total, count = 0.0, 0
    for document in documents:
        # The document's own tokens, the first after the EOS (the tiny tokenizer adds no BOS): metrics.TEXT_SCORING.
        ids = [tiny_tokenizer.eos_token_id] + tiny_tokenizer.encode(document.text, add_special_tokens=False)
        with torch.no_grad():
            log_probs = torch.log_softmax(tiny_model(input_ids=torch.tensor([ids])).logits[0], dim=-1)
        total -= sum(log_probs[t - 1, ids[t]].item() for t in range(1, len(ids)))
        count += len(ids) - 1
    assert result.metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    byte_count = sum(len(d.text.encode()) for d in documents)
    assert result.metrics["bits_per_byte"] == pytest.approx(total / math.log(2) / byte_count, rel=1e-5)


def test_sliding_window_perplexity_counts_each_token_once(loaded, tiny_tokenizer):
    document = TextRecord("Four score and seven years ago our fathers brought forth on this continent a new nation. " * 4)
    n = len(tiny_tokenizer.encode(document.text, add_special_tokens=False)) + 1
    windowed = evaluate(loaded, [document], "text", config=EvalConfig(), data_config=DataConfig(max_length=24))
    full = evaluate(loaded, [document], "text", config=EvalConfig(), data_config=DataConfig(max_length=1024))
    assert windowed.settings["windows"] > 1 and full.settings["windows"] == 1
    assert windowed.metrics["tokens"] == full.metrics["tokens"] == n - 1
    # Less context per token, so a different (here: random-model) perplexity, of the same magnitude.
    assert windowed.metrics["perplexity"] == pytest.approx(full.metrics["perplexity"], rel=0.5)


def test_max_test_examples_is_a_seeded_sample_by_id():
    records = [TextRecord(f"document {i}") for i in range(20)]
    first = select_test_records(records, 5, seed=1)
    # The same examples whatever the order of the file, so before and after see the same sample.
    assert len(first) == 5
    assert {r.id for r in first} == {r.id for r in select_test_records(list(reversed(records)), 5, seed=1)}
    assert {r.id for r in first} != {r.id for r in select_test_records(records, 5, seed=2)}
    assert select_test_records(records, 50, seed=1) == records


def test_sft_answers_that_are_data_are_judged_on_the_configured_metric(loaded):
    def record(answer):
        return SFTRecord(({"role": "user", "content": "order two apples"}, {"role": "assistant", "content": answer}))

    orders = [record('{"item": "apple", "qty": 2}'), record('```json\n{"item": "pear", "qty": 1}\n```')]
    result = evaluate(loaded, orders, "sft", config=EvalConfig(max_new_tokens=4, metric="json_f1"), data_config=DataConfig())
    assert result.metrics["primary"] == "json_f1"
    # A tiny random model writes no JSON: every answer is invalid, and scores 0 (not missing).
    assert result.metrics["json_valid"] == result.metrics["json_f1"] == 0.0 and "tool_call_exact" not in result.metrics
    with pytest.raises(ConfigError, match="eval.metric json_f1 needs every test reference to be JSON"):
        evaluate(loaded, [record("two apples")], "sft", config=EvalConfig(max_new_tokens=4, metric="json_f1"), data_config=DataConfig())
