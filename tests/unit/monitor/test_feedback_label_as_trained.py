"""A correction's label is read as the training data reader reads a label: surrounding spaces (a ticket system's
export, a spreadsheet cell " billing ") are not part of it. Kept as sent, the right answer counted as wrong in
`tunelab monitor`'s live accuracy, and `tunelab retrain` learnt "billing " as a new label beside "billing"."""

from __future__ import annotations

import json

import pytest

from tunelab.errors import DataError
from tunelab.monitor.traffic import labelled_requests, read_traffic
from tunelab.serve.request_log import Feedback, RequestLog, add_feedback, import_feedback

TIME = "2026-01-02T00:00:00.000+00:00"


def _log(path, count):
    log = RequestLog(path)
    for n in range(count):
        log.record({"time": TIME, "endpoint": "/v1/classify", "model": "router", "prompt": json.dumps(f"refund please {n}"), "output": "billing",
                    "status": 200, "stream": 0, "response_id": f"clf-{n}", "run_id": "r1", "predicted_label": "billing"})
    log.close()
    return path


def test_a_corrected_label_with_spaces_around_it_is_the_label_the_run_knows(tmp_path):
    log_path = _log(tmp_path / "requests.db", 3)
    exported = tmp_path / "tickets.csv"
    exported.write_text('id,label\nclf-0, billing \n', encoding="utf-8")
    import_feedback(log_path, exported)
    lines = tmp_path / "tickets.jsonl"
    lines.write_text(json.dumps({"id": "clf-1", "label": "billing\n"}) + "\n", encoding="utf-8")
    import_feedback(log_path, lines)
    add_feedback(log_path, [Feedback("clf-2", label="\tbilling")], source="api")

    assert [item["label"] for item in labelled_requests(log_path)] == ["billing", "billing", "billing"]
    traffic = read_traffic(log_path, "router", "r1", "2026-01-01", "2026-01-03")
    assert traffic.feedback == [("billing", "billing")] * 3


def test_a_whole_number_label_is_the_label_a_run_trained_on_whole_numbers_knows(tmp_path):
    # The training reader reads a label 3 as "3" (a dataset's integer label column); a ticket export in JSON Lines
    # writing it as a number was refused ("'label' must be a non-empty string, got 3").
    log_path = _log(tmp_path / "requests.db", 2)
    lines = tmp_path / "tickets.jsonl"
    lines.write_text(json.dumps({"id": "clf-0", "label": 3}) + "\n", encoding="utf-8")
    import_feedback(log_path, lines)
    assert [item["label"] for item in labelled_requests(log_path)] == ["3"]
    refused = tmp_path / "flag.jsonl"
    refused.write_text(json.dumps({"id": "clf-1", "label": True}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="'label' must be"):
        import_feedback(log_path, refused)
