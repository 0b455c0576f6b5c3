"""Run folders' disk use and deleting runs (``tunelab.registry.cleanup``) on a real SQLite registry and real folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.registry import Registry, RegistryError
from tunelab.registry.cleanup import delete_runs, disk_use, folder_bytes, plan_deletion, trash_folder

SRC = str(Path(__file__).resolve().parents[3] / "src")


def make_run(registry: Registry, runs: Path, name: str, *, status: str = "finished", config: dict | None = None,
             sizes: dict[str, int] | None = None) -> Path:
    """A run folder with files of known sizes (relative path -> bytes) and its registry row, as the pipeline writes them."""
    folder = runs / name
    for relative, size in (sizes or {"config.yaml": 100, "adapter/adapter_model.safetensors": 2_000}).items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(b"x" * size)
    folder.mkdir(parents=True, exist_ok=True)
    registry.create_run(name=name, task="sft", model="default", status=status, run_dir=str(folder.absolute()),
                        config=config or {"task": "sft", "model": {"name": "default"}})
    return folder


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


@pytest.fixture
def registry(runs):
    return Registry(runs / "registry.db")


def names(plan_part) -> list[str]:
    return [item.name for item in plan_part]


def test_a_folders_size_is_the_bytes_of_its_files_and_its_biggest_parts_come_first(registry, runs):
    folder = make_run(registry, runs, "big", sizes={"config.yaml": 10, "adapter/a.bin": 300, "checkpoints/step-1/a.bin": 1_000,
                                                    "checkpoints/step-2/a.bin": 1_000, "eval/tuned.json": 50})
    assert folder_bytes(folder) == 2_360
    use = disk_use(folder)
    assert use.bytes == 2_360
    assert use.parts[:2] == [("checkpoints", 2_000), ("adapter", 300)]
    assert folder_bytes(runs / "no-such-run") is None and disk_use(runs / "no-such-run").bytes is None


def test_a_dry_run_plan_lists_what_would_go_and_changes_nothing(registry, runs):
    folder = make_run(registry, runs, "old", status="failed")
    plan = plan_deletion(registry, ["old"])
    assert names(plan.deletions) == ["old"] and plan.refusals == [] and plan.bytes == 2_100
    assert folder.is_dir() and registry.get_run("old").status == "failed"


def test_delete_removes_the_folder_the_row_and_its_reviews_and_keeps_the_alias_history(registry, runs):
    folder = make_run(registry, runs, "gone-soon")
    make_run(registry, runs, "served")
    registry.add_review("gone-soon", sheet="review.csv", example_id="1", reviewer="ann", preference="A")
    registry.set_alias("router", "gone-soon")
    registry.set_alias("router", "served")
    run_id = registry.get_run("gone-soon").id
    result = delete_runs(registry, plan_deletion(registry, ["gone-soon"]))
    assert names(result.deleted) == ["gone-soon"] and result.bytes == 2_100
    assert not folder.exists() and not list(runs.glob(".gone-soon*"))
    with pytest.raises(RegistryError, match="no run 'gone-soon'"):
        registry.get_run("gone-soon")
    with registry._connect() as db:
        assert db.execute("SELECT COUNT(*) FROM reviews WHERE run_id = ?", (run_id,)).fetchone()[0] == 0
    # The alias history keeps the deleted run's id as a tombstone: the audit of what served when still reads.
    assert [change.run_id for change in registry.alias_history("router")][0] == run_id


def test_a_rollback_to_a_deleted_run_is_refused_in_one_line_naming_it(registry, runs):
    make_run(registry, runs, "first")
    make_run(registry, runs, "second")
    registry.set_alias("router", "first")
    registry.set_alias("router", "second")
    delete_runs(registry, plan_deletion(registry, ["first"]))
    with pytest.raises(RegistryError, match="was deleted") as refused:
        registry.rollback_alias("router")
    assert registry.alias("router") == registry.get_run("second").id and "\n" not in refused.value.message


def test_a_run_an_alias_points_at_is_refused_even_with_force(registry, runs):
    folder = make_run(registry, runs, "live")
    registry.set_alias("router", "live")
    for force in (False, True):
        plan = plan_deletion(registry, ["live"], force=force)
        assert plan.deletions == [] and names(plan.refusals) == ["live"]
        assert "alias router" in plan.refusals[0].reason
    assert delete_runs(registry, plan).deleted == [] and folder.is_dir() and registry.get_run("live")


def test_a_run_whose_folder_another_process_holds_is_refused_and_a_dead_holder_is_not(registry, runs):
    folder = make_run(registry, runs, "training", status="running")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tunelab.paths import lock_run_folder; lock_run_folder(sys.argv[1]); "
         "print('locked', flush=True); time.sleep(600)", str(folder)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        plan = plan_deletion(registry, ["training"], force=True)
        assert plan.deletions == [] and f"process {holder.pid}" in plan.refusals[0].reason
        assert folder.is_dir()
    finally:
        holder.kill()
        holder.wait(30)
    # The holder died (SIGKILL): its lock file stays, held by nobody; the row is interrupted and the run can go.
    plan = plan_deletion(registry, ["training"])
    assert names(plan.deletions) == ["training"] and plan.deletions[0].status == "interrupted"
    delete_runs(registry, plan)
    assert not folder.exists()


def test_a_run_another_run_was_trained_on_is_refused_naming_it_unless_both_go(registry, runs):
    parent = make_run(registry, runs, "sft-parent")
    make_run(registry, runs, "dpo-child", config={"task": "preference", "model": {"name": str(parent.absolute())}})
    for force in (False, True):  # the child loads the parent's weights as its base: never safe to force
        plan = plan_deletion(registry, ["sft-parent"], force=force)
        assert plan.deletions == [] and "dpo-child" in plan.refusals[0].reason
    plan = plan_deletion(registry, ["sft-parent", "dpo-child"])
    assert sorted(names(plan.deletions)) == ["dpo-child", "sft-parent"]
    delete_runs(registry, plan)
    assert not parent.exists() and registry.list_runs() == []


def test_a_distillations_teacher_run_is_refused_unless_forced(registry, runs):
    teacher = make_run(registry, runs, "teacher")
    make_run(registry, runs, "student", config={"task": "sft", "model": {"name": "default"}, "distill": {"teacher": str(teacher)}})
    plan = plan_deletion(registry, ["teacher"])
    assert plan.deletions == [] and "student" in plan.refusals[0].reason and "--force" in plan.refusals[0].reason
    plan = plan_deletion(registry, ["teacher"], force=True)
    assert names(plan.deletions) == ["teacher"]


def test_a_row_whose_folder_is_gone_is_removed_and_said_so(registry, runs):
    folder = make_run(registry, runs, "no-folder")
    for path in sorted(folder.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    folder.rmdir()
    plan = plan_deletion(registry, ["no-folder"])
    assert plan.deletions[0].bytes is None and "gone" in plan.deletions[0].note
    result = delete_runs(registry, plan)
    assert names(result.deleted) == ["no-folder"] and registry.list_runs() == []


def test_a_delete_killed_after_moving_the_folder_aside_is_finished_by_the_next_one(registry, runs):
    folder = make_run(registry, runs, "half")
    record = registry.get_run("half")
    trash = trash_folder(folder, record.id)
    folder.rename(trash)  # where a delete killed between the rename and the row's removal leaves it
    plan = plan_deletion(registry, ["half"])
    assert plan.deletions[0].bytes == 2_100
    delete_runs(registry, plan)
    assert not trash.exists() and registry.list_runs() == []


def test_a_delete_killed_after_removing_the_row_leaves_a_folder_the_next_delete_removes(registry, runs):
    folder = make_run(registry, runs, "orphan")
    make_run(registry, runs, "other", status="failed")
    trash = trash_folder(folder, registry.get_run("orphan").id)
    folder.rename(trash)
    registry.delete_run("orphan")  # killed before the folder was removed
    plan = plan_deletion(registry, status="failed")
    assert names(plan.deletions) == ["other"] and plan.leftovers == [trash] and plan.bytes == 2 * 2_100
    delete_runs(registry, plan)
    assert not trash.exists() and not (runs / "other").exists()


def test_runs_are_chosen_by_status_and_age(registry, runs):
    make_run(registry, runs, "failed-old", status="failed")
    make_run(registry, runs, "finished-old")
    with registry._write() as db:
        db.execute("UPDATE runs SET created_at = '2020-01-01T00:00:00.000+00:00'")
    make_run(registry, runs, "failed-new", status="failed")
    assert sorted(names(plan_deletion(registry, status="failed").deletions)) == ["failed-new", "failed-old"]
    assert names(plan_deletion(registry, status="failed", older_than=30 * 86400).deletions) == ["failed-old"]
    assert sorted(names(plan_deletion(registry, older_than=30 * 86400).deletions)) == ["failed-old", "finished-old"]
    with pytest.raises(RegistryError, match="not both"):
        plan_deletion(registry, ["failed-new"], status="failed")
    with pytest.raises(RegistryError):
        plan_deletion(registry)
    with pytest.raises(RegistryError, match="no run 'nope'"):
        plan_deletion(registry, ["nope"])


def test_a_folder_that_holds_the_registry_is_never_deleted(registry, runs):
    runs.mkdir(parents=True, exist_ok=True)
    registry.create_run(name="odd", status="failed", run_dir=str(runs.absolute()))
    plan = plan_deletion(registry, ["odd"], force=True)
    assert plan.deletions == [] and "registry" in plan.refusals[0].reason


@pytest.mark.parametrize("point", ["delete.folder-moved", "delete.row-removed"])
def test_a_delete_killed_midway_leaves_a_state_the_next_commands_read_and_finish(registry, runs, point):
    from typer.testing import CliRunner

    from tunelab.cli import main as cli_main

    folder = make_run(registry, runs, "victim", status="failed")
    make_run(registry, runs, "bystander", status="failed")
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "TUNELAB_KILL_AT": point}
    killed = subprocess.run([sys.executable, "-m", "tunelab", "delete", "victim", "--yes", "--registry", str(runs / "registry.db")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert not folder.exists()  # moved aside in both cases
    if not cli_main.app.registered_commands:
        cli_main._register_commands()
    listed = CliRunner().invoke(cli_main.app, ["runs", "--registry", str(runs / "registry.db"), "--json"])
    assert listed.exit_code == 0, listed.output
    sizes = {run["name"]: run["bytes"] for run in json.loads(listed.output)}
    assert sizes == ({"victim": None, "bystander": 2_100} if point == "delete.folder-moved" else {"bystander": 2_100})
    # The next delete finishes the killed one: of that run again, or of any run in the same folder.
    plan = plan_deletion(registry, ["victim"] if point == "delete.folder-moved" else ["bystander"])
    # (the moved folder also holds the lock file the killed delete took: a few bytes more)
    assert plan.refusals == [] and plan.bytes >= (2_100 if point == "delete.folder-moved" else 2 * 2_100)
    delete_runs(registry, plan)
    assert not list(runs.glob(".victim*")) and "victim" not in [record.name for record in registry.list_runs()]


def test_a_deleted_run_is_named_in_its_alias_history_and_its_rollback_refusal(registry, runs, monkeypatch):
    # `tunelab rollback` said "served run 77a6c178f568 before, which was deleted" and `tunelab aliases router`
    # "77a6c178f568 (no longer in the registry)": the name the user knew it by is kept with the history row.
    from typer.testing import CliRunner

    from tunelab.cli.common import console
    from tunelab.cli.main import _register_commands, app

    make_run(registry, runs, "walk2")
    make_run(registry, runs, "walk3")
    first = registry.get_run("walk2").id
    registry.set_alias("router", "walk2")
    registry.set_alias("router", "walk3")
    delete_runs(registry, plan_deletion(registry, ["walk2"]))
    assert [(change.run_id, change.run_name) for change in registry.alias_history("router")] == [
        (first, "walk2"), (registry.get_run("walk3").id, "walk3")]
    with pytest.raises(RegistryError, match=f"served run walk2 \\({first}\\) before, which was deleted"):
        registry.rollback_alias("router")
    _register_commands()
    monkeypatch.setattr(console, "width", 250)
    result = CliRunner().invoke(app, ["aliases", "router", "--registry", str(registry.path)])
    assert result.exit_code == 0, result.output
    assert f"walk2 ({first}, no longer in the registry)" in result.output, result.output
