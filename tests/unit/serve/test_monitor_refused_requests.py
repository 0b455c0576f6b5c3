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
