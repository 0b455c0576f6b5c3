"""Promote and roll back from a run's page, through the UI's HTTP API on a real server on the loopback: the same library
function as `tunelab promote` / `tunelab rollback`, so the same checks and the same one-line refusals."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pytest

from tunelab.registry import Registry
from tunelab.serve.errors import ServeError
from tunelab.serve.server import BackgroundServer
from tunelab.tasks.retrain import promote
from tunelab.ui import UISettings, create_app

HEADERS = {"X-Tunelab-UI": "1"}


def _fake_runs():
    """The serving tests' fake LoRA run folders and evaluations (their conftest is not importable by name from here)."""
    path = Path(__file__).resolve().parents[1] / "serve" / "conftest.py"
    spec = importlib.util.spec_from_file_location("serve_fake_runs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def promotable(tmp_path, tiny_model_dir, tiny_tokenizer):
    """A registry with two servable classify runs, a servable sft run, a finished run whose folder is gone, and a
    cancelled one."""
    fake = _fake_runs()
    runs = tmp_path / "runs"
    registry = Registry(runs / "registry.db")
    ids = {}
    for name, seed, task in (("router-v1", 11, "classify"), ("router-v2", 12, "classify"), ("legal", 13, "sft")):
        folder = fake.write_fake_run(runs / name, tiny_model_dir, tiny_tokenizer, seed=seed, task=task)
        if task == "classify":
            # Equally good on one test set: router-v2 is not worse than router-v1, so `tunelab promote` lets it replace it.
            fake.write_fake_evaluation(folder, 150)
        ids[name] = registry.create_run(name=name, task=task, model=str(tiny_model_dir), status="finished", run_dir=str(folder)).id
    ids["gone"] = registry.create_run(name="gone", task="classify", status="finished", run_dir=str(runs / "no-such-run")).id
    ids["stopped"] = registry.create_run(name="stopped", task="classify", status="cancelled", run_dir=str(runs / "router-v1")).id
    return registry, ids


def test_a_run_is_promoted_and_rolled_back_from_its_page_with_the_clis_checks(promotable):
    registry, ids = promotable
    with BackgroundServer(create_app(UISettings(registry=registry.path)), port=0) as url, httpx.Client(base_url=url, timeout=120) as client:
        page = client.get(f"/runs/{ids['router-v1']}").text
        assert 'id="promote-button"' in page and "No alias points at this run" in page
        done = client.post(f"/api/runs/{ids['router-v1']}/promote", json={"alias": "router"}, headers=HEADERS)
        assert done.status_code == 200, done.text
        assert done.json()["run_id"] == ids["router-v1"] and done.json()["previous_run_id"] is None
        assert registry.alias("router") == ids["router-v1"]
        assert 'data-alias="router"' in client.get(f"/runs/{ids['router-v1']}").text  # the page says which aliases point at it
        assert client.post(f"/api/runs/{ids['router-v2']}/promote", json={"alias": "router"}, headers=HEADERS).status_code == 200
        assert registry.alias("router") == ids["router-v2"] and registry.alias_history("router")[-1].previous_run_id == ids["router-v1"]
        v2 = client.get(f"/runs/{ids['router-v2']}").text
        assert 'data-alias="router"' in v2 and "router-v1" in v2  # the rollback names where it goes back to
        assert "not worse by more than the margin 0.02" in v2  # how the promotion was judged, as `tunelab aliases router` says
        assert 'data-alias="router"' not in client.get(f"/runs/{ids['router-v1']}").text

        # Refused as `tunelab promote` refuses: the library's one-line message, and the alias stays where it was.
        for run, alias in ((ids["legal"], "router"), (ids["gone"], "router"), (ids["router-v1"], "no spaces")):
            with pytest.raises(Exception) as cli:
                promote(registry, alias, run, reason="check")
            refused = client.post(f"/api/runs/{run}/promote", json={"alias": alias}, headers=HEADERS)
            assert refused.status_code == 400 and refused.json()["error"] == cli.value.message and "\n" not in refused.json()["error"]
            assert registry.alias("router") == ids["router-v2"]
        assert "it is a sft run, and the alias's run answers classify requests" in client.post(
            f"/api/runs/{ids['legal']}/promote", json={"alias": "router"}, headers=HEADERS).json()["error"]
        with pytest.raises(ServeError):
            promote(registry, "router", ids["gone"], reason="check")
        stopped = client.post(f"/api/runs/{ids['stopped']}/promote", json={"alias": "router"}, headers=HEADERS)
        assert stopped.status_code == 400 and "not finished" in stopped.json()["error"]
        assert 'id="promote-button"' not in client.get(f"/runs/{ids['stopped']}").text  # offered on finished runs only
        no_header = client.post(f"/api/runs/{ids['router-v1']}/promote", json={"alias": "router"})
        assert no_header.status_code == 403 and registry.alias("router") == ids["router-v2"]

        # Rollback: back to the run served before, as `tunelab rollback router`.
        back = client.post("/api/aliases/router/rollback", headers=HEADERS)
        assert back.status_code == 200, back.text
        assert back.json()["run_id"] == ids["router-v1"] and registry.alias("router") == ids["router-v1"]
        assert registry.alias_history("router")[-1].action == "rollback"
        nothing = client.post("/api/aliases/router/rollback", headers=HEADERS)
        assert nothing.status_code == 400 and "no earlier run to roll back to" in nothing.json()["error"]
        unknown = client.post("/api/aliases/nope/rollback", headers=HEADERS)
        assert unknown.status_code == 400 and "no alias 'nope'" in unknown.json()["error"]
