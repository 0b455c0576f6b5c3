"""A request the server refused as overloaded (429, `tunelab serve --max-waiting`) is the server's failure to keep up,
judged with its errors, never one of the client's mistakes (4xx, not judged)."""

from __future__ import annotations

from datetime import UTC, datetime

from tunelab.monitor import run_monitor
from tunelab.serve.request_log import RequestLog


def test_overload_refusals_count_as_the_server_s_errors_not_the_client_s(tmp_path):
    log_path = tmp_path / "requests.db"
    log = RequestLog(log_path)
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    row = {"time": now, "endpoint": "/v1/chat/completions", "model": "default", "prompt": "[]", "stream": 0}
    for _ in range(6):
        log.record({**row, "output": "hi", "status": 200, "latency_ms": 5.0})
    for _ in range(3):
        log.record({**row, "status": 429, "error": "The server is overloaded"})
    log.record({**row, "status": 400, "error": "n other than 1"})
    log.close()
    (served,) = run_monitor(log_path).models
    signal = served.signal("error_rate")
    assert served.requests == 10
    assert signal.value == 0.3  # the 3 refused as overloaded, of 10
    assert "1 client errors" in signal.detail and "3 refused as overloaded (429)" in signal.detail
