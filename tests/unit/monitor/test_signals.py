"""The numbers of monitoring against hand-computed values and known distributions."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tunelab.config import MonitorConfig, parse_duration
from tunelab.errors import ConfigError
from tunelab.monitor.signals import (
    CentroidModel,
    oov_share,
    psi,
    psi_noise,
    status_for,
    worst,
)


def test_psi_matches_a_hand_computed_value_and_its_noise_level():
    expected, actual = Counter(a=50, b=50), Counter(a=80, b=20)
    e = np.array([50.5, 50.5]) / 101
    a = np.array([80.5, 20.5]) / 101
    assert psi(expected, actual) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    assert psi(expected, expected) == 0.0
    # Two samples of one uniform distribution: PSI averages about (k-1)(1/N+1/n).
    rng = np.random.default_rng(0)
    values = [psi(Counter(rng.integers(0, 20, 400).tolist()), Counter(rng.integers(0, 20, 400).tolist())) for _ in range(200)]
    assert np.mean(values) == pytest.approx(psi_noise(20, 400, 400), rel=0.25)


def test_wilson_interval_and_statuses():
    from tunelab.evaluation.metrics import wilson_interval

    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # the textbook Wilson interval of 8/10
    assert [status_for(x, (0.1, 0.2)) for x in (0.05, 0.1, 0.25, None)] == ["ok", "watch", "drifted", "ok"]
    assert worst(["ok", "drifted", "watch"]) == "drifted" and worst([]) == "ok"


def test_oov_share_and_centroid_distance():
    assert oov_share({"my", "card"}, ["My card", "crypto card"]) == pytest.approx(1 / 4)
    model = CentroidModel(["my card is lost", "my card was stolen", "refund my card"])
    assert model.distance(["my card is lost"]) < model.distance(["crypto wallet transfer"])


def test_a_drift_signal_over_training_texts_without_words():
    # ":)", "😡": texts the data layer accepts; the monitor's text signal was sklearn's "empty vocabulary" ValueError.
    model = CentroidModel([":)", "😡", "!!!", ":("])
    assert model.distance([":)", ":("]) < model.distance(["😡😡", "?"])
    assert model.distance(["a word"]) == pytest.approx(1.0)


def test_durations_and_monitor_config_errors():
    assert parse_duration("7d") == 7 * 86400 and parse_duration("90s") == 90 and parse_duration("6h") == 21600
    with pytest.raises(ConfigError, match="monitor.window"):
        MonitorConfig(window="soon")
    from tunelab.monitor import load_monitor_config

    with pytest.raises(ConfigError, match="Did you mean 'window'"):
        load_monitor_config(None, {"windw": "1d"})


def test_a_monitor_section_with_its_keys_commented_out_is_the_defaults(tmp_path):
    # `monitor:` alone is null to YAML: "'monitor' must be a mapping", where a run config takes it as the defaults.
    from tunelab.monitor import load_monitor_config

    (tmp_path / "run.yaml").write_text("task: classify\nmonitor:\n#  window: 1d\n")
    assert load_monitor_config(tmp_path / "run.yaml") == MonitorConfig()


def test_an_sft_run_is_a_reference_of_its_prompts(tmp_path):
    """`tunelab monitor` on an sft run's traffic read the training prompts through a property it called (TypeError)."""
    import json

    from tunelab.config import dump_config, parse_config
    from tunelab.data.split import make_split
    from tunelab.monitor.check import load_reference
    from tunelab.runs import RunFolder

    rows = [{"prompt": f"question number {i} about billing", "completion": f"answer {i}"} for i in range(20)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = parse_config({"task": "sft", "data": {"train": str(data), "test_size": 0.2, "validation_size": 0.0}})
    run = RunFolder(tmp_path / "run")
    run.adapter.mkdir(parents=True)
    run.config.write_text(dump_config(config))
    make_split(config).save(run.split)
    reference = load_reference(run.root, "r1")
    assert reference.task == "sft" and not any("cannot read" in note for note in reference.notes)
    assert len(reference.train_texts) == 16 and all(text.startswith("question number") for text in reference.train_texts)
    assert len(reference.heldout_texts) == 4


def test_the_out_of_scope_share_counts_the_answers_whatever_score_the_rule_uses():
    """With a rule on the nearest-request score the top probabilities say nothing about rejections: the share is
    read from the answers themselves (it was the share of top probabilities below the threshold)."""
    from tunelab.monitor.check import Reference, compute_signals
    from tunelab.monitor.traffic import Traffic

    traffic = Traffic(model="router", run_id="r1", since="2026-01-01", until="2026-01-02", requests=40, server_errors=0, client_errors=0,
                      first=None, last=None, latency_ms=np.zeros(40), predicted=Counter({"billing": 28, "out_of_scope": 12}),
                      top_probabilities=np.full(40, 0.99))
    reference = Reference(run_id="r1", run_dir=None, task="classify", oos_threshold=0.95, oos_label="out_of_scope")
    config = MonitorConfig(min_requests=10)
    signal = next(s for s in compute_signals(traffic, reference, config) if s.name == "oos_share")
    assert signal.value == pytest.approx(12 / 40) and signal.n == 40 and "out_of_scope" in signal.detail
    assert signal.status == "drifted"  # 0.30 against 0.10 / 0.25
    without = next(s for s in compute_signals(traffic, Reference(run_id="r1", run_dir=None, task="classify"), config) if s.name == "oos_share")
    assert without.value is None and "no out-of-scope rule" in without.detail


def test_one_unlucky_correction_is_not_drift():
    """A quiet window with one request and one correction said live_accuracy drifted (exit code 3, a retrain with
    --retrain-on drift): 0/1 has the Wilson interval 0 to 0.79, "below" a test accuracy of 0.9."""
    from tunelab.evaluation.compare import MIN_TEST_EXAMPLES
    from tunelab.monitor.check import Reference, compute_signals
    from tunelab.monitor.traffic import Traffic

    reference = Reference("r", None, task="classify", train_labels=Counter(a=5, b=5), test_accuracy=0.9)

    def live_accuracy(feedback):
        traffic = Traffic("m", "r", "s", "u", len(feedback), 0, 0, None, None, np.array([5.0]), feedback=feedback)
        return next(s for s in compute_signals(traffic, reference, MonitorConfig()) if s.name == "live_accuracy")

    # A lone correction is no accuracy at all (only corrections: not judged); one answer right and nine corrected is
    # beyond chance, but too few for a verdict.
    assert live_accuracy([("a", "b")]).status == "ok"
    few = live_accuracy([("a", "a")] + [("a", "b")] * 9)
    assert few.status == "watch" and "too few" in few.detail
    # As many labelled answers as a verdict needs: drifted.
    assert live_accuracy([("a", "a")] + [("a", "b")] * (MIN_TEST_EXAMPLES - 1)).status == "drifted"


def test_a_rating_after_a_correction_keeps_the_corrected_label(tmp_path):
    """A thumbs-up sent after a label correction of the same answer was its newest feedback row, and the label
    vanished from live accuracy and from what retrain learns from."""
    import json
    from datetime import UTC, datetime, timedelta

    from tunelab.monitor.traffic import labelled_requests, read_traffic, window_bounds
    from tunelab.serve.request_log import Feedback, RequestLog, add_feedback

    log_path = tmp_path / "requests.db"
    log = RequestLog(log_path)
    log.record({
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"), "endpoint": "/v1/classify", "model": "router",
        "prompt": json.dumps("my card is lost"), "output": "card", "status": 200, "stream": 0, "latency_ms": 5.0,
        "response_id": "clf-1", "run_id": "r", "predicted_label": "card", "top_probability": 0.9,
    })
    log.close()
    add_feedback(log_path, [Feedback("clf-1", label="refund")], source="test")
    add_feedback(log_path, [Feedback("clf-1", rating=1)], source="test")
    assert [(item["text"], item["label"]) for item in labelled_requests(log_path)] == [("my card is lost", "refund")]
    since, until = window_bounds(3600, datetime.now(UTC) + timedelta(seconds=1))
    traffic = read_traffic(log_path, "router", "r", since, until)
    assert traffic.feedback == [("card", "refund")] and traffic.ratings == Counter({1: 1})
    # A newer label replaces the older one.
    add_feedback(log_path, [Feedback("clf-1", label="card")], source="test")
    assert [item["label"] for item in labelled_requests(log_path)] == ["card"]


def test_a_correction_to_the_out_of_scope_label_is_no_new_label():
    """live_accuracy's new_labels (the labels corrections bring that the run never learnt) listed the run's own
    out-of-scope label, which is never trained on by design: a false "new intent" for an alert to act on."""
    from tunelab.monitor.check import Reference, compute_signals
    from tunelab.monitor.traffic import Traffic

    reference = Reference("r", None, task="classify", train_labels=Counter(a=5, b=5), test_accuracy=0.9,
                          oos_threshold=0.5, oos_label="out_of_scope")
    feedback = [("a", "out_of_scope"), ("a", "a"), ("b", "c")]
    traffic = Traffic("m", "r", "s", "u", len(feedback), 0, 0, None, None, np.array([5.0]), feedback=feedback)
    signal = next(s for s in compute_signals(traffic, reference, MonitorConfig()) if s.name == "live_accuracy")
    assert signal.extra["new_labels"] == ["c"]
