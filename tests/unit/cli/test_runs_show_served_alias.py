"""`tunelab runs` and `tunelab show RUN` never said which alias serves a run: a user with several runs could not tell
which one is live without `tunelab aliases`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunelab.cli import main as cli_main
from tunelab.registry import Registry


@pytest.fixture(scope="module")
def app():
    if not cli_main.app.registered_commands:
        cli_main._register_commands()
    return cli_main.app


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from tunelab.cli.common import console

    monkeypatch.setattr(console, "width", 250)


@pytest.fixture
def registry(tmp_path):
    registry = Registry(tmp_path / "registry.db")
    for name in ("router-v1", "router-v2", "router-v3"):
        registry.create_run(name=name, task="classify", model="default", status="finished", tuned_metrics={"accuracy": 0.9})
    registry.set_alias("prod", "router-v2")
    registry.set_alias("staging", "router-v2")
    registry.set_alias("canary", "router-v3")
    return registry


def _row(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if name in line)


def test_the_registry_says_which_aliases_serve_each_run(registry):
    served = registry.aliases_by_run()
    v1, v2, v3 = (registry.get_run(name).id for name in ("router-v1", "router-v2", "router-v3"))
    assert served == {v2: ["prod", "staging"], v3: ["canary"]} and v1 not in served


def test_runs_marks_the_runs_an_alias_serves(app, registry):
    result = CliRunner().invoke(app, ["runs", "--registry", str(registry.path)])
    assert result.exit_code == 0, result.output
    assert "prod, staging" in _row(result.output, "router-v2")
    assert "canary" in _row(result.output, "router-v3")
    assert "prod" not in _row(result.output, "router-v1") and "canary" not in _row(result.output, "router-v1")
    listed = json.loads(CliRunner().invoke(app, ["runs", "--registry", str(registry.path), "--json"]).output)
    assert {run["name"]: run["aliases"] for run in listed} == {"router-v1": [], "router-v2": ["prod", "staging"], "router-v3": ["canary"]}


def test_show_says_which_aliases_serve_the_run(app, registry):
    result = CliRunner().invoke(app, ["show", "router-v2", "--registry", str(registry.path)])
    assert result.exit_code == 0, result.output
    assert "prod, staging" in _row(result.output, "served as")
    shown = json.loads(CliRunner().invoke(app, ["show", "router-v2", "--registry", str(registry.path), "--json"]).output)
    assert shown["aliases"] == ["prod", "staging"]
    unserved = CliRunner().invoke(app, ["show", "router-v1", "--registry", str(registry.path)])
    assert "served as" in unserved.output and "no alias" in _row(unserved.output, "served as")


def test_runs_without_any_alias_has_no_alias_column(app, tmp_path):
    registry = Registry(tmp_path / "registry.db")
    registry.create_run(name="only", task="classify", model="default", status="finished")
    result = CliRunner().invoke(app, ["runs", "--registry", str(registry.path)])
    assert result.exit_code == 0 and "only" in result.output and "served as" not in result.output, result.output  # no column of dashes
