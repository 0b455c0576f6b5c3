"""``tunelab runs`` / ``show`` say how much disk a run takes; ``tunelab delete`` removes runs (library:
tests/unit/registry/test_run_deletion.py)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunelab.errors import TunelabError
from tunelab.registry import Registry

pytestmark = pytest.mark.usefixtures("wide_console")

@pytest.fixture
def runs(tmp_path):
    runs = tmp_path / "runs"
    registry = Registry(runs / "registry.db")
    for name, status, sizes in (("keeper", "finished", {"checkpoints/step-1/model.bin": 3_000_000, "adapter/a.bin": 500_000}),
                                ("broken", "failed", {"config.yaml": 1_500})):
        folder = runs / name
        for relative, size in sizes.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(b"x" * size)
        registry.create_run(name=name, task="sft", model="default", status=status, run_dir=str(folder.absolute()))
    registry.create_run(name="vanished", task="sft", model="default", status="failed", run_dir=str(runs / "vanished"))
    return runs


def invoke(app, *args, input=None):
    return CliRunner().invoke(app, list(args), input=input)


def test_runs_has_a_size_column_and_json_carries_bytes(app, runs):
    result = invoke(app, "runs", "--registry", str(runs / "registry.db"))
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    assert "size" in result.output and "3.5 MB" in lines["keeper"] and "1.5 KB" in lines["broken"]
    assert "│ -" in lines["vanished"].split("failed")[1]
    listed = json.loads(invoke(app, "runs", "--registry", str(runs / "registry.db"), "--json").output)
    assert {run["name"]: run["bytes"] for run in listed} == {"keeper": 3_500_000, "broken": 1_500, "vanished": None}


def test_show_says_the_size_and_the_biggest_parts(app, runs):
    result = invoke(app, "show", "keeper", "--registry", str(runs / "registry.db"))
    assert result.exit_code == 0, result.output
    assert "3.5 MB" in result.output and "checkpoints 3.0 MB" in result.output and "adapter 500.0 KB" in result.output
    shown = json.loads(invoke(app, "show", "keeper", "--registry", str(runs / "registry.db"), "--json").output)
    assert shown["bytes"] == 3_500_000


def test_a_dry_run_lists_what_would_go_and_changes_nothing(app, runs):
    result = invoke(app, "delete", "--status", "failed", "--dry-run", "--registry", str(runs / "registry.db"))
    assert result.exit_code == 0, result.output
    assert "broken" in result.output and "vanished" in result.output and "keeper" not in result.output
    assert "1.5 KB" in result.output and "would" in result.output
    assert (runs / "broken").is_dir() and len(Registry(runs / "registry.db").list_runs()) == 3


def test_delete_asks_first_and_removes_folder_and_row_when_confirmed(app, runs):
    registry_file = str(runs / "registry.db")
    declined = invoke(app, "delete", "broken", "--registry", registry_file, input="n\n")
    assert declined.exit_code != 0 and (runs / "broken").is_dir()
    result = invoke(app, "delete", "broken", "vanished", "--registry", registry_file, input="y\n")
    assert result.exit_code == 0, result.output
    assert "deleted broken" in result.output and "gone already" in result.output
    assert not (runs / "broken").exists()
    for command in ("show", "delete"):
        args = ("--yes",) if command == "delete" else ()
        gone = invoke(app, command, "broken", "--registry", registry_file, *args)
        assert isinstance(gone.exception, TunelabError) and "no run 'broken'" in str(gone.exception)
    listed = invoke(app, "runs", "--registry", registry_file)
    assert "broken" not in listed.output and "keeper" in listed.output


def test_a_refused_run_is_named_with_its_reason_and_exits_nonzero(app, runs):
    registry = Registry(runs / "registry.db")
    registry.set_alias("router", "keeper")
    result = invoke(app, "delete", "keeper", "broken", "--yes", "--registry", str(runs / "registry.db"))
    assert result.exit_code == 1, result.output
    assert "refused keeper: alias router points at it now" in " ".join(result.output.split())
    assert (runs / "keeper").is_dir() and not (runs / "broken").exists()
