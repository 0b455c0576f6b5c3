"""`tunelab retrain RUN --log-db LOG --served-model NAME` with a NAME no labelled feedback is on (a typo, the alias
instead of the served name) said "no labelled feedback in the log" of a log that holds some, or, beside --data,
retrained without any of it and without a word; it names the served names that have labelled feedback now. A name
that was served but has no corrections yet still retrains on --data alone (as the --every loop does)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tunelab.config import parse_config
from tunelab.errors import DataError
from tunelab.registry.store import Registry
from tunelab.serve.request_log import Feedback, RequestLog, add_feedback
from tunelab.tasks.pipeline import run_pipeline
from tunelab.tasks.retrain import retrain


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _rows(label, start, count):
    words = {"A": ["billing", "refund", "cancel", "shipping"], "B": ["technical", "login", "account", "other"]}[label]
    return [{"text": f"{words[i % 4]} {words[(i // 4) % 4]} number {1000 + 2 * i + 'AB'.index(label)}", "label": label} for i in range(start, start + count)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_served_name_without_labelled_feedback_is_named_not_called_an_empty_log(tmp_path, tiny_model_dir):
    runs = tmp_path / "runs"
    registry_path = runs / "registry.db"
    train = _write(tmp_path / "train.jsonl", _rows("A", 0, 24) + _rows("B", 0, 24))
    config = parse_config({
        "task": "classify", "model": str(tiny_model_dir), "name": "router-v1", "registry": str(registry_path),
        "data": {"train": str(train), "test_size": 0.25, "validation_size": 0.1, "max_length": 64},
        "train": {"method": "lora", "lr": 5e-3, "epochs": 1, "batch_size": 8, "output_dir": str(runs)},
        "eval": {"bootstrap_samples": 100, "baselines": []},
    })
    champion = run_pipeline(config, calibrate=False)
    log_path = tmp_path / "requests.db"
    log = RequestLog(log_path)
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    rows = _rows("A", 100, 10) + _rows("B", 100, 10)
    for index, row in enumerate(rows):
        log.record({"time": now, "endpoint": "/v1/classify", "model": "router", "prompt": json.dumps(row["text"]), "status": 200,
                    "stream": 0, "response_id": f"clf-{index}", "run_id": champion.registry_id, "predicted_label": row["label"]})
    log.close()
    add_feedback(log_path, [Feedback(f"clf-{index}", label=row["label"]) for index, row in enumerate(rows)], source="test")
    new = _write(tmp_path / "new.jsonl", _rows("A", 200, 10) + _rows("B", 200, 10))
    for data in ([], [new]):
        with pytest.raises(DataError, match="no request for served name 'routr'") as refused:
            retrain(champion.registry_id, data, registry_path=registry_path, log_path=log_path, served_model="routr", promote=False)
        assert "router" in refused.value.message and "\n" not in refused.value.message
    assert len(Registry(registry_path).list_runs()) == 1  # no challenger was trained
    # A name the log served, with no corrections yet: --data alone, as before.
    log = RequestLog(log_path)
    log.record({"time": now, "endpoint": "/v1/classify", "model": "router-b", "prompt": json.dumps("login please"), "status": 200,
                "stream": 0, "response_id": "clf-b", "run_id": champion.registry_id, "predicted_label": "B"})
    log.close()
    outcome = retrain(champion.registry_id, [new], registry_path=registry_path, log_path=log_path, served_model="router-b", promote=False)
    assert outcome.sizes["recent_test"] + outcome.sizes["new_train"] + outcome.sizes["new_validation"] == 20
