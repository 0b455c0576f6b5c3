"""`tunelab ui --registry PATH` reads the registry PATH names, as every other command does: a mistyped path is one
line, not a new empty registry the UI then shows as "no runs"; the default location is created when missing."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import tunelab.ui
from tunelab.cli.main import _register_commands, app
from tunelab.registry import Registry, RegistryError


@pytest.fixture
def started(monkeypatch) -> list:
    """The settings `tunelab ui` would serve with (no server is started)."""
    _register_commands()
    calls: list = []
    monkeypatch.setattr(tunelab.ui, "run_ui", lambda settings, announce=None: calls.append(settings))
    return calls


def test_a_mistyped_registry_is_refused_and_not_created(tmp_path, started):
    Registry(tmp_path / "registry.db").create_run(name="demo", task="classify", status="finished")
    typo = tmp_path / "regsitry.db"
    result = CliRunner().invoke(app, ["ui", "--registry", str(typo)])
    assert isinstance(result.exception, RegistryError) and f"no run registry at {typo}" in str(result.exception)
    assert not typo.exists() and started == []
    folder = CliRunner().invoke(app, ["ui", "--registry", str(tmp_path)])
    assert isinstance(folder.exception, RegistryError) and str(tmp_path / "registry.db") in str(folder.exception)
    assert started == []
    named = CliRunner().invoke(app, ["ui", "--registry", str(tmp_path / "registry.db")])
    assert named.exit_code == 0, named.output
    assert [settings.registry for settings in started] == [tmp_path / "registry.db"]


def test_the_default_registry_is_opened_even_before_the_first_run(tmp_path, started, monkeypatch):
    # A new project: no runs/ yet. The UI starts (a run can be started from it), over runs/registry.db.
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["ui"])
    assert result.exit_code == 0, result.output
    assert [str(settings.registry) for settings in started] == ["runs/registry.db"]
