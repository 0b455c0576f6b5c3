"""`tunelab monitor` over traffic to the base model, which no run answered."""

from __future__ import annotations

from datetime import UTC, datetime

from typer.testing import CliRunner

from tunelab.cli.main import _register_commands, app
from tunelab.serve.request_log import RequestLog


def test_base_model_traffic_is_not_reported_as_run_none(tmp_path):
    # The base model's requests carry no run id: the report said "default (run None)" and "run None has no run
    # folder here ... (pass --run RUN_DIR)", a Python None where a person reads which run answered.
    log_path = tmp_path / "requests.db"
    log = RequestLog(log_path)
    log.record({
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"), "endpoint": "/v1/chat/completions", "model": "default",
        "prompt": "hi", "output": "hello", "status": 200, "stream": 0, "latency_ms": 5.0, "response_id": "chatcmpl-1",
    })
    log.close()
    _register_commands()
    result = CliRunner().invoke(app, ["monitor", "--log-db", str(log_path), "--registry", str(tmp_path / "none.db")], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "default (" in result.output and "None" not in result.output
