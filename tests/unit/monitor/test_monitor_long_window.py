"""`tunelab monitor --window 1000000d` (everything the log holds, in a user's words) ended in an OverflowError
traceback: the window's start fell before the year 1. It starts at the earliest time then: the whole log."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tunelab.config import MonitorConfig
from tunelab.monitor import run_monitor
from tunelab.serve.request_log import RequestLog


def test_a_window_longer_than_the_calendar_reads_the_whole_log(tmp_path):
    log_path = tmp_path / "requests.db"
    log = RequestLog(log_path)
    log.record({"time": "1999-01-02T00:00:00.000+00:00", "endpoint": "/v1/classify", "model": "router", "prompt": json.dumps("refund please"),
                "output": "billing", "status": 200, "stream": 0, "response_id": "clf-1", "run_id": None, "predicted_label": "billing"})
    log.close()
    report = run_monitor(log_path, MonitorConfig(window="1000000d"), until=datetime(2026, 1, 1, tzinfo=UTC))
    assert [(m.model, m.requests) for m in report.models] == [("router", 1)]
