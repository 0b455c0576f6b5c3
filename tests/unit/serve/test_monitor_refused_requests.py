"""`tunelab monitor` over requests a real server refused: a name it does not serve (404), a served run's bad request (400)."""

from __future__ import annotations

import httpx
from typer.testing import CliRunner

from tunelab.cli.main import _register_commands, app
from tunelab.errors import DataError
from tunelab.monitor import run_monitor
from tunelab.serve import BackgroundServer, ServeSettings, create_app
from tunelab.serve.adapters import load_registry


def test_refused_requests_are_never_reported_as_another_model_s_traffic(tiny_model_dir, router_versions, tmp_path):
    # A client's typo ("routr", 404) was reported as a served model "routr (no run)" with the note "no run answered these
    # requests (the base model)"; a served run's request refused with 400 (n=2) was logged without its run, so it
    # showed as a second group "router (no run)" said to be the base model's, and the run's own group said 0 client errors.
    served = load_registry(str(tiny_model_dir), [("router", str(router_versions[0]))])
    log_path = tmp_path / "requests.db"
    app_ = create_app(served, ServeSettings(log_path=log_path))
    with BackgroundServer(app_) as url, httpx.Client(base_url=url, timeout=60) as client:
        for i in range(3):
            assert client.post("/v1/classify", json={"model": "router", "input": f"my card {i} has not arrived"}).status_code == 200
        for _ in range(2):
            assert client.post("/v1/classify", json={"model": "routr", "input": "refund please"}).status_code == 404
        refused = client.post("/v1/chat/completions", json={"model": "router", "messages": [{"role": "user", "content": "hi"}], "n": 2})
        assert refused.status_code == 400
        # A body the schema refuses (no input) was logged with no model at all: counted nowhere, "0 client errors".
        assert client.post("/v1/classify", json={"model": "router"}).status_code == 400
    report = run_monitor(log_path)
    assert [(m.model, m.run_id, m.requests) for m in report.models] == [("router", served.get("router").run_id, 5)]
    assert "2 client errors" in report.models[0].signal("error_rate").detail
    assert report.unknown_models == {"routr": 2} and report.as_dict()["unknown_models"] == {"routr": 2}
    _register_commands()
    result = CliRunner().invoke(app, ["monitor", "--log-db", str(log_path), "--registry", str(tmp_path / "none.db")], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "requests for names not served here, refused with 404: routr (2)" in result.output
    assert "routr (" not in result.output.replace("routr (2)", "") and "base model" not in result.output
    alone = CliRunner().invoke(app, ["monitor", "--log-db", str(log_path), "--model", "routr"])
    assert isinstance(alone.exception, DataError) and "'routr' is not served: its 2 requests" in str(alone.exception)


def test_a_refused_body_naming_a_model_not_served_counts_once_as_that_name(tiny_model_dir, router_versions, tmp_path):
    # A classify call without input for "routr" (not served) was refused by the schema (400) and logged under "routr": the
    # monitor reported a served model "routr (no run)" with 2 requests, 2 client errors (this one and the 404 also counted
    # among the names not served). The model is checked first, as every route does: a 404, counted once, as a name not served.
    served = load_registry(str(tiny_model_dir), [("router", str(router_versions[0]))])
    log_path = tmp_path / "requests.db"
    with BackgroundServer(create_app(served, ServeSettings(log_path=log_path))) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.post("/v1/classify", json={"model": "router", "input": "my card has not arrived"}).status_code == 200
        assert client.post("/v1/classify", json={"model": "routr", "input": "refund please"}).status_code == 404
        refused = client.post("/v1/classify", json={"model": "routr"})  # no input either
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
        assert client.post("/v1/classify", json={"model": "router"}).status_code == 400  # a served run's: its client error
    report = run_monitor(log_path)
    assert [(m.model, m.requests) for m in report.models] == [("router", 2)]
    assert "1 client errors" in report.models[0].signal("error_rate").detail
    assert report.unknown_models == {"routr": 2}
    total = sum(m.requests for m in report.models) + sum(report.unknown_models.values())
    assert total == 4  # every request counted once


def test_a_404_for_a_name_once_served_is_not_also_that_models_client_error(tmp_path):
    # The base model "default" answered, then the server was restarted without it and refused the same name with 404:
    # the 404 was counted among the names not served and again as one of default's client errors.
    from datetime import UTC, datetime

    from tunelab.serve.request_log import RequestLog

    log_path = tmp_path / "requests.db"
    log = RequestLog(log_path)
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    log.record({"time": now, "endpoint": "/v1/chat/completions", "model": "default", "prompt": "[]", "output": "hi", "status": 200, "stream": 0})
    log.record({"time": now, "endpoint": "/v1/chat/completions", "model": "default", "prompt": "[]", "status": 404, "error": "not served", "stream": 0})
    log.close()
    report = run_monitor(log_path)
    assert [(m.model, m.run_id, m.requests) for m in report.models] == [("default", None, 1)]
    assert "0 client errors" in report.models[0].signal("error_rate").detail
    assert report.unknown_models == {"default": 1}
