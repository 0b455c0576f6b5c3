"""``live_accuracy`` judged a drop as if the test accuracy were exact, and on whatever labels came back.

The test accuracy is itself a sample (80 rows on the quickstart): 30/40 live answers right (0.75) against 70/80 on
the test set (0.875) was drifted, though the two proportions' difference is within their joint noise. Its *watch*
was a bare point drop (8/10 right: watch). And the README told clients to send corrections for the wrong answers:
accuracy on corrections alone is 0 whatever the model, so every healthy model was called drifted.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from tunelab.config import MonitorConfig
from tunelab.evaluation.result import EvalResult
from tunelab.monitor.check import Reference, compute_signals, load_reference
from tunelab.monitor.traffic import Traffic


def _reference(test_n: int | None = 80) -> Reference:
    return Reference("r", None, task="classify", train_labels=Counter(a=5, b=5), test_accuracy=0.875, test_n=test_n)


def _live_accuracy(right: int, wrong: int, reference: Reference | None = None, wrong_label: str = "b"):
    feedback = [("a", "a")] * right + [("a", wrong_label)] * wrong
    traffic = Traffic("m", "r", "s", "u", len(feedback), 0, 0, None, None, np.array([5.0]), feedback=feedback)
    signals = compute_signals(traffic, reference or _reference(), MonitorConfig())
    return next(s for s in signals if s.name == "live_accuracy")


def test_a_drop_within_the_test_sets_own_noise_is_not_drift():
    # 30/40 has its Wilson interval (0.60 to 0.86) below 0.875, but 70/80 against 30/40 differ by -0.016 to 0.287.
    signal = _live_accuracy(30, 10)
    assert signal.value == 0.75 and signal.status == "ok", signal.detail
    assert signal.extra["difference_low"] < 0 < signal.extra["difference_high"]
    assert "70/80" in signal.detail


def test_watch_needs_the_drop_beyond_chance_too():
    # 8/10 is a point drop of 0.075 (>= 0.05): chance at 10 labelled answers, not a warning.
    assert _live_accuracy(8, 2).status == "ok"
    # A real drop is still seen: 20/40 against 70/80 (difference 0.20 to 0.53), and at least 30 labelled answers.
    assert _live_accuracy(20, 20).status == "drifted"
    # Beyond chance but under 30 labelled answers: at most watch, as before.
    few = _live_accuracy(2, 8)
    assert few.status == "watch" and "too few" in few.detail


def test_without_the_test_size_the_test_accuracy_is_taken_as_exact():
    reference = _reference(test_n=None)
    assert _live_accuracy(30, 10, reference).status == "drifted"  # the Wilson interval alone is below 0.875
    assert "test size unknown" in _live_accuracy(30, 10, reference).detail


def test_corrections_alone_are_not_the_models_accuracy():
    signal = _live_accuracy(0, 40, wrong_label="c")
    assert signal.status == "ok" and signal.value is None and signal.n == 40
    assert "only corrections (40 of 40)" in signal.detail and "not the model's" in signal.detail
    # What they name is still counted: the run never learnt label c.
    assert signal.extra["new_labels"] == ["c"] and signal.extra["corrections"] == 40
    # One confirmed answer among them and the labels are not only corrections: judged (1/41 is drifted).
    assert _live_accuracy(1, 40).status == "drifted"


def test_the_reference_reads_the_test_size(tmp_path):
    rows = [{"id": str(i), "prompt": "x", "reference": "a", "prediction": "a" if i < 70 else "b",
             "scores": {"correct": float(i < 70), "confidence": 0.9}} for i in range(80)]
    EvalResult("classify", "m", 80, {"accuracy": 0.875}, rows).save(tmp_path / "eval" / "tuned.json")
    reference = load_reference(tmp_path, "r")
    assert reference.test_accuracy == 0.875 and reference.test_n == 80
