"""Out-of-scope requests: the threshold rule, the metrics, the split, the label map, config errors, baselines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunelab.config import DataConfig, EvalConfig, parse_config
from tunelab.data.labels import LabelMap, OutOfScope
from tunelab.data.records import ClassifyRecord
from tunelab.data.split import learning_records, make_split, split_records
from tunelab.errors import ConfigError, DataError
from tunelab.evaluation.baselines import calibrated_baseline, fit_classical
from tunelab.evaluation.compare import compare_evaluations
from tunelab.evaluation.evaluate import apply_out_of_scope, calibrate_out_of_scope, score_classify
from tunelab.evaluation.metrics import choose_threshold
from tunelab.evaluation.result import EvalResult


def _record(i: int, text: str, label: str) -> ClassifyRecord:
    return ClassifyRecord(id=f"r{i}", text=text, label=label, source=f"data.jsonl:{i + 1}")


# ------------------------------------------------------------------------------------ the threshold


def test_threshold_matches_a_hand_computation():
    # confidence, top label correct, out of scope
    rows = [(0.9, True, False), (0.8, True, False), (0.6, False, False), (0.5, False, True), (0.4, True, False), (0.3, False, True)]
    confidence, correct, outside = zip(*rows, strict=True)
    # Candidates 0, 0.35, 0.45, 0.55, 0.7, 0.85, 1 -> accuracy over the 6 queries:
    #   0: 3 in-scope correct accepted (0.9, 0.8, 0.4) + 0 rejected OOS = 3/6
    #   0.35: + the OOS at 0.3 rejected = 4/6
    #   0.45: the correct 0.4 is now rejected (-1) = 3/6
    #   0.55: + the OOS at 0.5 rejected = 4/6
    #   0.7: 0.6 was wrong anyway = 4/6; 0.85: 0.8 rejected = 3/6; 1: 2/6
    # Best 4/6 at 0.35, 0.55 and 0.7: ties go to the lowest.
    threshold, accuracy = choose_threshold(confidence, correct, outside)
    assert threshold == pytest.approx(0.35)
    assert accuracy == pytest.approx(4 / 6)


def test_threshold_is_zero_without_out_of_scope_queries_and_deterministic():
    confidence = [0.2, 0.9, 0.5, 0.5]
    assert choose_threshold(confidence, [False, True, False, True], [False] * 4) == (0.0, 0.5)
    # every query out of scope: only 1 rejects both (0.55 would accept the 0.9 one)
    assert choose_threshold([0.2, 0.9], [False, False], [True, True]) == (1.0, 1.0)
    assert choose_threshold([], [], []) == (0.0, 0.0)
    shuffled = choose_threshold(confidence[::-1], [True, False, True, False], [False] * 4)
    assert shuffled == choose_threshold(confidence, [False, True, False, True], [False] * 4)


# -------------------------------------------------------------------------------------- the metrics


def _scored(seed: int = 0, n: int = 60):
    rng = np.random.default_rng(seed)
    labels = ["billing", "shipping", "returns"]
    references = rng.choice(labels + ["other"], size=n, p=[0.25, 0.25, 0.25, 0.25])
    records = [_record(i, f"text {i}", str(label)) for i, label in enumerate(references)]
    probabilities = rng.dirichlet([1.0, 1.0, 1.0], size=n)
    return records, probabilities, labels


def test_out_of_scope_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    records, probabilities, labels = _scored()
    rule = OutOfScope("other", 0.5)
    rows, metrics, warnings = score_classify(records, probabilities, labels, rule)
    assert warnings == []  # the out-of-scope label is no "unknown label"
    references = [r.label for r in records]
    # Independent: the answer is the argmax label unless its probability is below 0.5.
    answers = [labels[int(p.argmax())] if p.max() >= 0.5 else "other" for p in probabilities]
    assert [row["prediction"] for row in rows] == answers
    assert metrics["accuracy"] == pytest.approx(accuracy_score(references, answers))
    inside = [i for i, r in enumerate(references) if r != "other"]
    assert metrics["in_scope_accuracy"] == pytest.approx(accuracy_score([references[i] for i in inside], [answers[i] for i in inside]))
    p, r, f, _ = precision_recall_fscore_support(
        [x == "other" for x in references], [x == "other" for x in answers], average="binary", zero_division=0
    )
    assert (metrics["out_of_scope_precision"], metrics["out_of_scope_recall"], metrics["out_of_scope_f1"]) == pytest.approx((p, r, f))
    assert metrics["out_of_scope_queries"] == references.count("other")
    assert "other" in metrics["confusion_matrix"]["labels"]


def test_comparison_has_out_of_scope_metrics_with_intervals():
    records, probabilities, labels = _scored(seed=1)
    a_rows, a_metrics, _ = score_classify(records, probabilities, labels, OutOfScope("other", 0.0))
    b_rows, b_metrics, _ = score_classify(records, probabilities, labels, OutOfScope("other", 0.6))
    make = lambda rows, metrics: EvalResult("classify", "m", len(rows), {"primary": "accuracy", **metrics}, rows, labels=labels)  # noqa: E731
    comparison = compare_evaluations(make(a_rows, a_metrics), make(b_rows, b_metrics), samples=200)
    names = [m.name for m in comparison.metrics]
    assert {"in_scope_accuracy", "out_of_scope_precision", "out_of_scope_recall", "out_of_scope_f1"} <= set(names)
    recall = comparison.metric("out_of_scope_recall")
    assert recall.before == 0.0 and recall.after == pytest.approx(b_metrics["out_of_scope_recall"]) and recall.low <= recall.difference <= recall.high
    assert comparison.metric("accuracy").after == pytest.approx(b_metrics["accuracy"])
    # Without an out-of-scope label the metric list is what it always was.
    plain_rows, plain_metrics, _ = score_classify(records, probabilities, labels)
    plain = compare_evaluations(make(plain_rows, plain_metrics), make(plain_rows, plain_metrics), samples=100)
    assert [m.name for m in plain.metrics] == ["accuracy", "macro_f1", "ece"]


def test_a_threshold_applied_afterwards_equals_scoring_with_it():
    records, probabilities, labels = _scored(seed=2)
    rows, metrics, _ = score_classify(records, probabilities, labels, OutOfScope("other", 0.0))
    result = EvalResult("classify", "m", len(rows), {"primary": "accuracy", **metrics}, rows, labels=labels)
    later = apply_out_of_scope(result, OutOfScope("other", 0.45))
    direct_rows, direct_metrics, _ = score_classify(records, probabilities, labels, OutOfScope("other", 0.45))
    assert [r["prediction"] for r in later.rows] == [r["prediction"] for r in direct_rows]
    assert later.metrics["accuracy"] == direct_metrics["accuracy"]
    assert later.settings["out_of_scope"]["threshold"] == 0.45
    # calibrate_out_of_scope is choose_threshold on the rows' top label and confidence.
    chosen = calibrate_out_of_scope(result, "other")
    expected, _ = choose_threshold(
        probabilities.max(axis=1), [labels[int(p.argmax())] == r.label for p, r in zip(probabilities, records, strict=True)],
        [r.label == "other" for r in records],
    )
    assert chosen.threshold == pytest.approx(expected) and chosen.validation["out_of_scope"] == sum(r.label == "other" for r in records)


# -------------------------------------------------------------------------- split, labels, config


def _records(n_per_label=20, n_outside=12):
    texts = [(f"{label} question number {i}", label) for label in ("billing", "shipping") for i in range(n_per_label)]
    texts += [(f"what is the weather like {i}", "other") for i in range(n_outside)]
    return [_record(i, text, label) for i, (text, label) in enumerate(texts)]


def test_out_of_scope_records_go_to_validation_and_test_only(tiny_tokenizer):
    records = _records()
    split = split_records(records, "classify", test_size=0.2, validation_size=0.2, seed=3, out_of_scope_label="other")
    assert not [r for r in split.train if r.label == "other"]
    outside_test = [r for r in split.test if r.label == "other"]
    outside_validation = [r for r in split.validation if r.label == "other"]
    assert len(outside_test) == 6 and len(outside_validation) == 6  # as the in-scope records: 8 test, 8 validation
    assert len(split.train) + len([r for r in split.test + split.validation if r.label != "other"]) == 40
    assert not any("never occur in train" in w for w in split.warnings)
    again = split_records(list(reversed(records)), "classify", test_size=0.2, validation_size=0.2, seed=3, out_of_scope_label="other")
    assert sorted(r.id for r in again.test) == sorted(r.id for r in split.test)
    other_seed = split_records(records, "classify", test_size=0.2, validation_size=0.2, seed=4, out_of_scope_label="other")
    assert {r.id for r in other_seed.test if r.label == "other"} != {r.id for r in outside_test}
    # A given test file still gets its share of the out-of-scope records (4 in-scope test : 8 validation,
    # so 4 of the 12 go to test); they never reach train.
    given = [_record(100 + i, f"billing given {i}", "billing") for i in range(4)]
    with_file = split_records(records, "classify", test_size=0.2, validation_size=0.2, seed=3, test_records=given, out_of_scope_label="other")
    assert [r.label for r in with_file.test].count("other") == 4 and [r.label for r in with_file.validation].count("other") == 8
    assert "other" not in {r.label for r in with_file.train}
    # No in-scope validation: every out-of-scope record is for test, and the split says the threshold stays 0.
    no_validation = split_records(records, "classify", test_size=0.2, validation_size=0.0, seed=3, out_of_scope_label="other")
    assert [r.label for r in no_validation.test].count("other") == 12 and any("threshold stays 0" in w for w in no_validation.warnings)
    # The out-of-scope label is never a label token, even when the records handed in carry it.
    label_map = LabelMap.for_records(records, tiny_tokenizer, "other")
    assert label_map.labels == ["billing", "shipping"]
    assert "other" not in label_map.token_strings


def test_out_of_scope_file_is_split_and_checked(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"{label} request {i}", "label": label}) + "\n" for i in range(10) for label in ("a", "b")))
    outside = tmp_path / "oos.jsonl"
    outside.write_text("".join(json.dumps({"text": f"unrelated thing {i}", "label": "other"}) + "\n" for i in range(8)))
    config = parse_config({"task": "classify", "data": {"train": str(train), "out_of_scope": str(outside), "out_of_scope_label": "other"}})
    split = make_split(config)
    assert [r.label for r in split.test].count("other") == 4 and [r.label for r in split.validation].count("other") == 4
    assert split.out_of_scope_label == "other" and "other" not in {r.label for r in split.train}
    assert learning_records(split) == split.train  # baselines never learn from the queries that choose their threshold
    outside.write_text(json.dumps({"text": "my order is late", "label": "shipping"}) + "\n")
    with pytest.raises(DataError, match="is not data.out_of_scope_label 'other'"):
        make_split(config)
    outside.write_text(json.dumps({"text": "a fine row", "label": "other"}) + "\n" + json.dumps({"label": "other"}) + "\n")
    with pytest.raises(DataError, match=r"(?s)invalid record.*oos.jsonl:2: missing field"):
        make_split(config)


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="applies to task classify only, not sft") as error:
        parse_config({"task": "sft", "data": {"out_of_scope_label": "other"}})
    assert "got" not in str(error.value)  # no dump of the whole section
    with pytest.raises(ConfigError, match="out_of_scope_label is empty"):
        parse_config({"task": "classify", "data": {"out_of_scope_label": "  "}})
    with pytest.raises(ConfigError, match="data.out_of_scope_label is not set"):
        parse_config({"task": "classify", "data": {"out_of_scope": "oos.jsonl"}})
    with pytest.raises(ConfigError, match="Did you mean 'out_of_scope_label'"):
        parse_config({"task": "classify", "data": {"out_of_scope_labels": "other"}})
    assert parse_config({"task": "classify", "data": {"out_of_scope_label": "other"}}).data.out_of_scope_label == "other"


# ------------------------------------------------------------------------------------- baselines


def test_classical_baseline_gets_its_own_threshold_from_validation():
    words = {"billing": ["invoice", "charge", "refund", "payment"], "shipping": ["parcel", "courier", "delivery", "tracking"]}
    train, validation, test = [], [], []
    for label, vocabulary in words.items():
        for i in range(12):
            train.append(_record(len(train), f"{vocabulary[i % 4]} {vocabulary[(i + 1) % 4]} help {i}", label))
        validation += [_record(200 + 10 * len(validation) + i, f"{vocabulary[i]} problem", label) for i in range(3)]
        test += [_record(300 + 10 * len(test) + i, f"{vocabulary[i]} question today", label) for i in range(3)]
    validation += [_record(250 + i, f"weather forecast tomorrow {i}", "other") for i in range(4)]
    test += [_record(350 + i, f"football score tonight {i}", "other") for i in range(4)]
    data_config = DataConfig(out_of_scope_label="other")
    result = calibrated_baseline("classical", None, test, validation, train=train, config=EvalConfig(), data_config=data_config)
    # Independent: the same classifier fitted here, its threshold chosen on validation by the one rule.
    pipeline, _ = fit_classical([r.text for r in sorted(train, key=lambda r: r.id)], [r.label for r in sorted(train, key=lambda r: r.id)])
    column = {label: i for i, label in enumerate(pipeline.classes_)}
    order = [column["billing"], column["shipping"]]
    val_probs = pipeline.predict_proba([r.text for r in validation])[:, order]
    expected, _ = choose_threshold(
        val_probs.max(axis=1), [["billing", "shipping"][int(p.argmax())] == r.label for p, r in zip(val_probs, validation, strict=True)],
        [r.label == "other" for r in validation],
    )
    assert result.settings["out_of_scope"]["threshold"] == pytest.approx(expected)
    assert result.n == len(test) and [row["id"] for row in result.rows] == [r.id for r in test]
    test_probs = pipeline.predict_proba([r.text for r in test])[:, order]
    answers = [["billing", "shipping"][int(p.argmax())] if p.max() >= expected else "other" for p in test_probs]
    assert [row["prediction"] for row in result.rows] == answers
    assert "out_of_scope_f1" in result.metrics


# ------------------------------------------------------------------------- the nearest-request score


def test_nearest_score_is_the_cosine_to_the_closest_training_state_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    training = rng.normal(size=(6, 5))
    reference = training / np.linalg.norm(training, axis=1, keepdims=True)
    rule = OutOfScope("other", 0.8, score="nearest", reference=reference)
    requests = np.vstack([training[2] * 3.0, rng.normal(size=5)])  # a training state (scaled), a random one
    by_hand = [max(float(np.dot(r, t) / np.linalg.norm(r) / np.linalg.norm(t)) for t in training) for r in requests]
    scores = rule.scores(np.full((2, 3), 1 / 3), requests)
    assert scores == pytest.approx(by_hand) and scores[0] == pytest.approx(1.0)
    assert [rule.answer("billing", s) for s in scores] == ["billing", "other" if by_hand[1] < 0.8 else "billing"]
    rule.save(tmp_path / "out_of_scope.json", tmp_path / "out_of_scope.npy")
    loaded = OutOfScope.load(tmp_path / "out_of_scope.json", tmp_path / "out_of_scope.npy")
    assert loaded == rule and loaded.score == "nearest" and np.allclose(loaded.reference, reference)
    assert json.loads((tmp_path / "out_of_scope.json").read_text())["score_is"].startswith("the highest cosine similarity")
    # Without its states the rule cannot answer: one clear error, not a silent fallback to the probability.
    (tmp_path / "out_of_scope.npy").unlink()
    with pytest.raises(DataError, match=r"out_of_scope\.npy.*missing"):
        OutOfScope.load(tmp_path / "out_of_scope.json", tmp_path / "out_of_scope.npy")
    with pytest.raises(ValueError, match="hidden states"):
        rule.scores(np.full((2, 3), 1 / 3))
    with pytest.raises(DataError, match="unknown out-of-scope score"):
        OutOfScope("other", 0.5, score="energy")


def test_a_rule_saved_before_the_score_existed_reads_as_the_probability(tmp_path):
    path = tmp_path / "out_of_scope.json"
    path.write_text(json.dumps({"label": "other", "threshold": 0.6}))
    rule = OutOfScope.load(path, tmp_path / "out_of_scope.npy")
    assert rule.score == "probability" and not rule.needs_features
    assert list(rule.scores(np.array([[0.7, 0.3], [0.5, 0.5]]))) == [0.7, 0.5]


def test_threshold_candidates_cover_scores_below_zero():
    # Cosine similarities can be negative: "reject nothing" must stay a candidate, and the rule still
    # picks the lowest threshold that reaches the best accuracy.
    scores = [-0.4, -0.2, 0.3, 0.9]
    correct = [True, True, False, True]
    outside = [False, False, True, False]
    threshold, accuracy = choose_threshold(scores, correct, outside)
    assert threshold == pytest.approx(-0.4) and accuracy == pytest.approx(0.75)
