import math

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tunelab.evaluation.metrics import (
    TASK_METRICS,
    classify_metrics,
    corpus_statistics,
    expected_calibration_error,
    metric_values,
    normalize_answer,
    score_table,
    sft_example_scores,
    text_metrics,
)

REFS = ["a", "a", "a", "b", "b", "c"]
PREDS = ["a", "a", "b", "b", "c", "c"]


def test_classify_metrics_on_a_small_confusion():
    metrics = classify_metrics(REFS, PREDS, [0.9] * 6, ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # a: P=2/2 R=2/3 F1=0.8; b: P=1/2 R=1/2 F1=0.5; c: P=1/2 R=1/1 F1=2/3.
    assert metrics["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert metrics["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert metrics["per_class"]["c"]["recall"] == pytest.approx(1.0)
    assert metrics["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert metrics["confusion_matrix"] == {"labels": ["a", "b", "c"], "matrix": [[2, 1, 0], [0, 1, 1], [0, 0, 1]]}


def test_expected_calibration_error_by_hand():
    # Bin of 0.9: accuracy 3/4 -> |0.75-0.9| x 4; bin of 0.6: accuracy 1/2 -> |0.5-0.6| x 2; over 6 examples.
    confidence = np.array([0.9, 0.9, 0.9, 0.9, 0.6, 0.6])
    correct = np.array([1, 1, 1, 0, 1, 0])
    assert expected_calibration_error(confidence, correct) == pytest.approx((0.15 * 4 + 0.1 * 2) / 6)
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([1, 1])) == pytest.approx(0.0)


def test_unknown_reference_label_counts_wrong_and_gets_a_row():
    metrics = classify_metrics(["a", "zzz"], ["a", "a"], [0.8, 0.7], ["a", "b"])
    assert metrics["accuracy"] == 0.5
    assert metrics["confusion_matrix"]["labels"] == ["a", "b", "zzz"]
    assert metrics["confusion_matrix"]["matrix"][2] == [1, 0, 0]


def test_bootstrap_macro_f1_equals_sklearn_on_the_full_set():
    rows = [{"reference": r, "prediction": p, "scores": {"correct": float(r == p), "confidence": 0.9}} for r, p in zip(REFS, PREDS, strict=True)]
    assert metric_values("classify", rows)["macro_f1"] == pytest.approx(classify_metrics(REFS, PREDS, [0.9] * 6, ["a", "b", "c"])["macro_f1"])


def test_rouge_against_hand_values_and_the_library():
    scores = sft_example_scores("cat dog bird fish", ["cat dog bird cow"])
    assert scores["rouge1"] == pytest.approx(0.75)
    assert scores["rouge2"] == pytest.approx(2 / 3)
    assert scores["rougeL"] == pytest.approx(0.75)
    library = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score("the cats sat on a mat", "the cat sat on the mat")
    assert sft_example_scores("the cat sat on the mat", ["the cats sat on a mat"])["rougeL"] == pytest.approx(library["rougeL"].fmeasure)


def test_multi_reference_takes_the_best_reference():
    scores = sft_example_scores("Paris.", ["Rome", "the paris"])
    assert scores["exact_match"] == 1.0
    assert scores["rouge1"] == pytest.approx(2 / 3)  # ROUGE keeps "the": P=1, R=1/2
    assert scores["length"] == 1.0
    with pytest.raises(ValueError):
        sft_example_scores("x", [])


def test_normalize_answer():
    assert normalize_answer("  The Answer,  is: 42! ") == "answer is 42"


def test_exact_match_ignores_unicode_forms_and_non_ascii_punctuation():
    # The same answer written another way: decomposed accents (NFD, as macOS and some editors save), a typographic
    # apostrophe, CJK full stops and full-width digits. Each was scored as a miss (exact_match 0).
    for prediction, reference in (("Cafe\u0301", "Café."), ("It's Paris", "It\u2019s Paris."), ("北京", "北京。"),
                                  ("«Oui»", "oui"), ("１２", "12"), ("STRASSE", "Straße")):
        assert sft_example_scores(prediction, [reference])["exact_match"] == 1.0, (prediction, reference)
    assert sft_example_scores("Café", ["Cafe"])["exact_match"] == 0.0  # an accent is part of the word


def test_an_empty_answer_is_not_an_exact_match_of_a_one_letter_choice():
    # A multiple-choice reference "A" normalises to nothing (the article goes), as does an empty answer: a model that
    # answered nothing scored exact_match 1 on every question whose answer is A.
    scores = lambda prediction, reference: sft_example_scores(prediction, [reference])["exact_match"]  # noqa: E731
    assert scores("", "A") == 0.0 and scores("The", "A") == 0.0 and scores("...", "A.") == 0.0
    assert scores("a", "A") == 1.0 and scores("A.", "(A)") == 1.0 and scores("B", "b") == 1.0 and scores("B", "A") == 0.0
    assert scores("the Paris", "Paris") == 1.0  # articles still go when a word is left


def _sft_rows(predictions, references):
    stats = corpus_statistics(predictions, references)
    rows = []
    for i, (p, refs) in enumerate(zip(predictions, references, strict=True)):
        scores = sft_example_scores(p, refs)
        scores.update(bleu_stats=stats["bleu"][i], chrf_stats=stats["chrf"][i])
        rows.append({"scores": scores})
    return rows


def test_corpus_bleu_and_chrf_from_stats_equal_sacrebleu_with_multiple_references():
    predictions = ["the cat sat on the mat", "a quick brown fox jumps", "hello world"]
    references = [["the cat is on the mat", "there is a cat on the mat"], ["the quick brown fox jumped"], ["hello there world"]]
    values = metric_values("sft", _sft_rows(predictions, references))
    streams = [[r[0] for r in references], [r[1] if len(r) > 1 else None for r in references]]
    assert values["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, streams).score)
    assert values["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, streams).score)
    # A subset's corpus BLEU is recomputed from its own statistics, not averaged.
    spec = next(s for s in TASK_METRICS["sft"] if s.name == "bleu")
    table = score_table("sft", _sft_rows(predictions, references))
    subset = spec.compute(table, np.array([[0, 2]]))[0]
    assert subset == pytest.approx(sacrebleu.corpus_bleu([predictions[0], predictions[2]], [[s[0], s[2]] for s in streams]).score)


def test_text_metrics_by_hand():
    metrics = text_metrics(nll_sum=20.0, tokens=10, byte_count=40)
    assert metrics["perplexity"] == pytest.approx(math.exp(2.0))
    assert metrics["bits_per_byte"] == pytest.approx(20.0 / (math.log(2) * 40))
