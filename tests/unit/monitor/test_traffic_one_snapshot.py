"""`tunelab monitor` reads a request log the server keeps writing. The window's counts, latencies and predicted labels
were read by separate queries, each seeing the log as it was then: a request written between two of them counted
among the latencies and labels but not the requests (the README says they are exact over the window). One snapshot now."""

from __future__ import annotations

import json
import sqlite3

from tunelab.monitor import traffic as traffic_module
from tunelab.serve.request_log import RequestLog

TIME = "2026-01-02T00:00:00.000+00:00"


def _entry(n):
    return {"time": TIME, "endpoint": "/v1/classify", "model": "router", "prompt": json.dumps(f"refund please {n}"), "output": "billing",
            "status": 200, "stream": 0, "response_id": f"clf-{n}", "run_id": "r1", "predicted_label": "billing", "top_probability": 0.9,
            "latency_ms": 10.0}


class _ServerWritingMeanwhile:
    """The monitor's connection; after its first query the server logs one more request (through another connection)."""

    def __init__(self, db, path):
        self._db, self._path, self._queries = db, path, 0

    def execute(self, *args):
        result = self._db.execute(*args)
        if args[0].lstrip().upper().startswith("SELECT"):
            self._queries += 1
            if self._queries == 1:
                writer = sqlite3.connect(self._path)
                writer.execute("INSERT INTO requests (time, endpoint, model, prompt, output, status, stream, response_id, run_id, "
                               "predicted_label, top_probability, latency_ms) VALUES (?, '/v1/classify', 'router', '\"late\"', 'billing', 200, 0, "
                               "'clf-late', 'r1', 'billing', 0.9, 10.0)", (TIME,))
                writer.commit()
                writer.close()
        return result

    def close(self):
        self._db.close()


def test_the_window_is_read_from_one_snapshot_of_a_log_being_written(tmp_path, monkeypatch):
    log_path = tmp_path / "requests.db"
    log = RequestLog(log_path)
    for n in range(3):
        log.record(_entry(n))
    log.close()
    opened = traffic_module.open_log
    monkeypatch.setattr(traffic_module, "open_log", lambda path: _ServerWritingMeanwhile(opened(path), path))
    traffic = traffic_module.read_traffic(log_path, "router", "r1", "2026-01-01", "2026-01-03")
    assert traffic.requests == traffic.latency_ms.size == sum(traffic.predicted.values()) == traffic.top_probabilities.size == traffic.text_requests
