"""`tunelab monitor --run RUN_DIR` names the run to compare the traffic with: a folder that is not there (a typo,
a run deleted since) was a note under a table of skipped signals, with status ok and exit code 0, so a cron job
judging against it reported "ok" at every check; it is one error line naming the folder now."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tunelab.errors import DataError
from tunelab.monitor import run_monitor
from tunelab.serve.request_log import RequestLog


def test_a_reference_run_folder_that_is_not_there_is_an_error_not_an_ok_report(tmp_path):
    log_path = tmp_path / "requests.db"
    log = RequestLog(log_path)
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    log.record({"time": now, "endpoint": "/v1/classify", "model": "router", "prompt": json.dumps("refund please"), "output": "billing",
                "status": 200, "stream": 0, "response_id": "clf-1", "run_id": "r1", "predicted_label": "billing"})
    log.close()
    missing = tmp_path / "runs" / "routr"
    with pytest.raises(DataError, match="no run folder") as refused:
        run_monitor(log_path, run_dir=missing)
    assert str(missing) in refused.value.message and "\n" not in refused.value.message
