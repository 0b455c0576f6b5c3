"""Texts without a word (":)", "😡", "!!!") are examples the data layer accepts: the learned baselines score them
(classical through its character n-grams), never an "empty vocabulary" traceback nor a baseline silently missing."""

from __future__ import annotations

from tunelab.config import DataConfig, EvalConfig
from tunelab.data.records import ClassifyRecord
from tunelab.evaluation import baselines as B

SYMBOLS = {"positive": [":)", ":-)", "😀", "👍", "<3", "^_^"], "negative": [":(", "😡", "!!!", "👎", ":-(", "???"]}
TEST = [(":D", "positive"), ("😠", "negative"), ("!!", "negative"), ("👍👍", "positive")]


def _train(pairs=None):
    pairs = pairs or [(text, label) for label, texts in SYMBOLS.items() for text in texts]
    return [ClassifyRecord(text, label, source=f"train.jsonl:{i + 1}") for i, (text, label) in enumerate(pairs)]


def _test():
    return [ClassifyRecord(text, label, source=f"test.jsonl:{i + 1}") for i, (text, label) in enumerate(TEST)]


def test_classical_scores_symbol_only_texts_by_their_characters():
    result = B.classical_baseline(_train(), _test(), data_config=DataConfig())
    assert result.n == len(TEST) and 0 <= result.metrics["accuracy"] <= 1
    assert all(row["prediction"] in SYMBOLS for row in result.rows)


def test_classical_fits_a_cross_validation_fold_whose_training_texts_have_no_word():
    # One worded text among symbols: the folds that hold it out have no word to learn, the whole set has one.
    pairs = [(text, label) for label, texts in SYMBOLS.items() for text in texts][:-1] + [("this is awful", "negative")]
    result = B.classical_baseline(_train(pairs), _test(), data_config=DataConfig())
    assert result.n == len(TEST) and result.settings["folds"] >= 2


def test_evaluate_baselines_scores_or_skips_each_learned_baseline_with_its_reason():
    names = ["classical", "embedding"]
    results = B.evaluate_baselines(names, None, _test(), "classify", train=_train(), config=EvalConfig(), data_config=DataConfig())
    assert set(results) | set(results.skipped) == set(names), (dict(results), results.skipped)
    assert "classical" in results
    for reason in results.skipped.values():
        assert reason and "\n" not in reason
