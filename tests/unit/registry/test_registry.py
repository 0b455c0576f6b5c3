"""The run registry: migrations, CRUD, filters, comparison, baseline cache, two writing processes."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

from tunelab.registry import (
    MIGRATIONS,
    Registry,
    RegistryError,
    baseline_key,
    config_differences,
    default_registry_path,
    metric_values,
    migrate,
)


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(tmp_path / "runs" / "registry.db")


def test_migrations_are_recorded_and_idempotent(tmp_path):
    path = tmp_path / "registry.db"
    Registry(path)
    Registry(path)  # a second open must apply nothing again
    db = sqlite3.connect(path, isolation_level=None)
    names = [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY rowid")]
    assert names == [function.__name__ for function in MIGRATIONS]
    assert migrate(db) == []
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "baseline_cache", "_migrations"} <= tables


def test_a_new_migration_runs_once_on_an_existing_registry(tmp_path, monkeypatch):
    from tunelab.registry import migrations

    path = tmp_path / "registry.db"
    Registry(path)
    calls = []

    def m999_test_column(db):
        calls.append(1)
        db.execute("ALTER TABLE runs ADD COLUMN note TEXT")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, m999_test_column])
    db = sqlite3.connect(path, isolation_level=None)
    assert migrations.migrate(db) == ["m999_test_column"]
    assert migrations.migrate(db) == []
    assert calls == [1]
    assert "note" in [row[1] for row in db.execute("PRAGMA table_info(runs)")]


def test_create_get_update(registry):
    run = registry.create_run(name="first", task="classify", model="default", config={"task": "classify", "train": {"lr": 1e-4}})
    assert run.status == "created" and run.task == "classify" and run.created_at == run.updated_at
    assert run.config_dict == {"task": "classify", "train": {"lr": 1e-4}}
    assert registry.get_run("first").id == run.id
    assert registry.get_run(run.id).name == "first"
    assert registry.get_run(run.id[:6]).name == "first"

    updated = registry.update_run(
        "first",
        status="finished",
        baseline_metrics={"accuracy": 0.25},
        tuned_metrics={"accuracy": {"value": 0.75, "ci": [0.6, 0.9]}},
        comparison={"verdict": "better"},
        estimate={"seconds": {"train": 100.0}},
        artifacts={"adapter": "runs/first/adapter"},
        run_dir="runs/first",
    )
    assert updated.status == "finished"
    assert updated.tuned_metrics["accuracy"]["value"] == 0.75
    assert updated.artifacts == {"adapter": "runs/first/adapter"}
    assert updated.verdict == "better"
    assert updated.key_metric() == ("accuracy", 0.25, 0.75)
    assert updated.updated_at >= run.updated_at


def test_generated_names_are_unique_and_duplicates_are_refused(registry):
    a = registry.create_run(task="sft", model="/models/SmolLM2 135M")
    b = registry.create_run(task="sft", model="/models/SmolLM2 135M")
    assert a.name != b.name and a.name.startswith("sft-smollm2-135m-")
    registry.create_run(name="taken")
    with pytest.raises(RegistryError, match="already exists"):
        registry.create_run(name="taken")


def test_bad_fields_and_missing_runs(registry):
    registry.create_run(name="r")
    with pytest.raises(ValueError, match="unknown status"):
        registry.update_run("r", status="done")
    with pytest.raises(ValueError, match="unknown run field"):
        registry.update_run("r", colour="blue")
    with pytest.raises(RegistryError, match="no run 'nope'"):
        registry.get_run("nope")


def test_record_timing_merges_estimate_and_actual(registry):
    registry.create_run(name="timed")
    registry.record_timing("timed", "train", estimated_s=100)
    registry.record_timing("timed", "eval", estimated_s=10)
    run = registry.record_timing("timed", "train", actual_s=110.5)
    assert run.timings == {"train": {"estimated_s": 100.0, "actual_s": 110.5}, "eval": {"estimated_s": 10.0}}


def test_list_filters_and_order(registry):
    registry.create_run(name="a", task="classify", status="finished")
    registry.create_run(name="b", task="sft", status="failed")
    registry.create_run(name="c", task="classify", status="running")
    assert [run.name for run in registry.list_runs()] == ["c", "b", "a"]
    assert [run.name for run in registry.list_runs(task="classify")] == ["c", "a"]
    assert [run.name for run in registry.list_runs(status="failed")] == ["b"]
    assert [run.name for run in registry.list_runs(task="classify", status="finished")] == ["a"]
    assert [run.name for run in registry.list_runs(limit=1)] == ["c"]
    registry.delete_run("b")
    assert [run.name for run in registry.list_runs()] == ["c", "a"]


def test_compare_runs_lists_metrics_and_differing_config_keys(registry):
    base = {"task": "classify", "model": {"name": "default"}, "train": {"lr": 0.0002, "epochs": 2}, "lora": {"r": 16}}
    registry.create_run(name="r16", config=base, tuned_metrics={"accuracy": 0.8, "macro_f1": 0.7}, baseline_metrics={"accuracy": 0.3})
    other = {"task": "classify", "model": {"name": "default"}, "train": {"lr": 0.0005, "epochs": 2}, "lora": {"r": 8, "alpha": 16}}
    registry.create_run(name="r8", config=other, tuned_metrics={"accuracy": 0.85}, comparison={"verdict": "better"})
    comparison = registry.compare_runs(["r16", "r8"])
    assert comparison.runs == ["r16", "r8"]
    assert comparison.tuned_metrics == {"accuracy": [0.8, 0.85], "macro_f1": [0.7, None]}
    assert comparison.baseline_metrics == {"accuracy": [0.3, None]}
    assert comparison.config_differences == {"lora.alpha": [None, 16], "lora.r": [16, 8], "train.lr": [0.0002, 0.0005]}
    assert comparison.verdicts == [None, "better"]
    with pytest.raises(RegistryError):
        registry.compare_runs(["r16"])


def test_compare_never_shows_another_baselines_metrics_as_the_base_models(registry):
    # A row written before the registry kept only the base model's "before" held the classical baseline's metrics when
    # the base model was skipped; `tunelab runs` says "n/a (base skipped)", and compare (CLI, the UI's "Base model
    # metrics") must not show them as the base model's either.
    skipped = {"base": "it cannot win, so it is not scored on the test rows"}
    registry.create_run(name="skipped", task="classify", baseline_metrics={"accuracy": 0.85}, tuned_metrics={"accuracy": 0.86},
                        comparison={"verdict": "no significant difference", "skipped": skipped})
    registry.create_run(name="scored", task="classify", baseline_metrics={"accuracy": 0.3}, tuned_metrics={"accuracy": 0.8})
    comparison = registry.compare_runs(["skipped", "scored"])
    assert comparison.baseline_metrics == {"accuracy": [None, 0.3]}


def test_config_differences_and_metric_values():
    assert config_differences([{"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 1, "c": [1, 3]}}]) == {"a.c": [[1, 2], [1, 3]]}
    assert config_differences([{"x": 1}, {"x": 1}]) == {}
    # A key an older run's config does not have yet is no difference while the newer run leaves it null.
    assert config_differences([{"data": {"seed": 0}}, {"data": {"seed": 0, "group_field": None}}]) == {}
    assert config_differences([{"data": {"seed": 0}}, {"data": {"seed": 0, "group_field": "country"}}]) == {"data.group_field": [None, "country"]}
    assert metric_values({"metrics": {"accuracy": {"value": 0.5}, "n": 10, "ok": True, "name": "x"}}) == {"accuracy": 0.5, "n": 10.0}


def test_baseline_cache(registry):
    key = baseline_key("default@abc", "test-fp", {"task": "classify", "eval": {"batch_size": 16}})
    same = baseline_key("default@abc", "test-fp", {"eval": {"batch_size": 16}, "task": "classify"})
    different = baseline_key("default@abc", "test-fp", {"task": "classify", "eval": {"batch_size": 8}})
    assert key == same and key != different
    assert registry.get_cached_baseline(key) is None
    registry.put_cached_baseline(key, {"accuracy": 0.2}, predictions_path="runs/a/eval/base.json", run_id="abc")
    cached = registry.get_cached_baseline(key)
    assert cached.metrics == {"accuracy": 0.2} and cached.predictions_path == "runs/a/eval/base.json"
    assert registry.get_cached_baseline(different) is None
    registry.put_cached_baseline(key, {"accuracy": 0.3})
    assert registry.get_cached_baseline(key).metrics == {"accuracy": 0.3}


def test_default_path_follows_config():
    from tunelab.config import parse_config

    assert str(default_registry_path(None)) == "runs/registry.db"
    assert str(default_registry_path(parse_config({"task": "text", "train": {"output_dir": "out"}}))) == "out/registry.db"
    assert str(default_registry_path(parse_config({"task": "text", "registry": "/tmp/r.db"}))) == "/tmp/r.db"


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path):
    path = tmp_path / "registry.db"
    path.write_text("this is not a database, it is a note to myself\n" * 20)
    with pytest.raises(RegistryError, match="cannot use"):
        Registry(path)


def test_a_registry_damaged_after_its_header_is_a_clear_error_not_a_traceback(tmp_path):
    """A file whose header is fine but whose pages are not (a disk error, a copy cut short) opens; every read
    of it then fails in SQLite. Each failure is one RegistryError naming the file, as an unusable file's is."""
    path = tmp_path / "registry.db"
    registry = Registry(path)
    for index in range(60):
        registry.create_run(name=f"run-{index}", task="classify", config={"notes": "x" * 500}, status="finished")
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    data[8192:] = b"\x55" * (len(data) - 8192)  # every page after the second
    path.write_bytes(bytes(data))
    damaged = Registry(path)
    for read in (damaged.list_runs, lambda: damaged.get_run("run-3")):
        with pytest.raises(RegistryError) as error:
            read()
        assert str(path) in error.value.message and "damaged" in error.value.message
        assert "\n" not in error.value.message


def _writer(path: str, worker: int, count: int) -> None:
    registry = Registry(path)
    for index in range(count):
        run = registry.create_run(name=f"w{worker}-{index}", task="classify", status="running")
        registry.update_run(run.id, status="finished", tuned_metrics={"accuracy": index / count})
        registry.record_timing(run.id, "train", estimated_s=index, actual_s=index + 1)
        # Both processes also touch one shared row: read-modify-write must not lose either's step.
        registry.record_timing("shared", f"w{worker}-{index}", actual_s=index)


def test_two_processes_writing_at_once(tmp_path):
    path = tmp_path / "registry.db"
    Registry(path).create_run(name="shared")
    count = 25
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(path), worker, count)) for worker in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    registry = Registry(path)
    runs = {run.name: run for run in registry.list_runs()}
    assert len(runs) == 2 * count + 1
    for worker in range(2):
        for index in range(count):
            run = runs[f"w{worker}-{index}"]
            assert run.status == "finished"
            assert run.timings == {"train": {"estimated_s": float(index), "actual_s": float(index + 1)}}
    assert len(runs["shared"].timings) == 2 * count
    assert registry.integrity_check() == "ok"


def _fresh_opener(path: str, worker: int) -> None:
    registry = Registry(path)
    for index in range(5):
        registry.create_run(name=f"fresh{worker}-{index}")


def test_two_processes_creating_a_fresh_registry_migrate_once(tmp_path):
    path = tmp_path / "new" / "registry.db"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_fresh_opener, args=(str(path), worker)) for worker in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM _migrations").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 10


def test_reviews_table_is_added_to_a_registry_made_before_it(tmp_path):
    from tunelab.registry import migrations

    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    migrations.applied_migrations(db)
    for function in migrations.MIGRATIONS[:2]:  # what a registry written before m003 holds
        function(db)
        db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, 'then')", (function.__name__,))
    db.execute("COMMIT")
    registry = Registry(path)
    run = registry.create_run(name="old-run")
    first = registry.add_review(run.id, sheet="/r/review.csv", example_id="q1", reviewer="ann", preference="A")
    registry.add_review(run.id, sheet="/r/review.csv", example_id="q1", reviewer="ann", preference="tie")
    registry.add_review(run.id, sheet="/other.csv", example_id="q1", reviewer="ann", preference="B")
    assert [r.preference for r in registry.list_reviews("old-run", sheet="/r/review.csv")] == ["A", "tie"]
    assert len(registry.list_reviews(run.id)) == 3 and first.run_id == run.id and first.reviewer == "ann"


def test_opening_waits_out_a_lock_the_busy_handler_does_not_cover(tmp_path, monkeypatch):
    from tunelab.registry import store

    real, calls = store.migrate, []

    def locked_twice(db):
        calls.append(1)
        if len(calls) <= 2:  # what a second process switching the fresh file to WAL looks like
            raise sqlite3.OperationalError("database is locked")
        return real(db)

    monkeypatch.setattr(store, "migrate", locked_twice)
    registry = Registry(tmp_path / "r.db")
    assert len(calls) == 3 and registry.create_run(name="after-the-wait").name == "after-the-wait"
    monkeypatch.setattr(store, "migrate", lambda db: (_ for _ in ()).throw(sqlite3.OperationalError("disk I/O error")))
    with pytest.raises(RegistryError, match="disk I/O error"):  # anything but a lock is not retried
        Registry(tmp_path / "other.db")


def test_a_registry_another_process_keeps_locked_is_one_line_naming_it(tmp_path, monkeypatch):
    """A write that waited out busy_timeout behind another writer (a `sqlite3` shell left in a transaction, a stuck
    process) was a `sqlite3.OperationalError: database is locked` traceback out of `tunelab run`, naming no file."""
    from tunelab.registry import store

    path = tmp_path / "registry.db"
    registry = Registry(path)
    dead = tmp_path / "dead-run"  # a killed run's folder: its row is marked interrupted when read, if the file lets it
    dead.mkdir()
    (dead / ".lock").write_text("999999999\n")
    registry.create_run(name="before", run_dir=str(dead))
    monkeypatch.setattr(store, "BUSY_TIMEOUT_MS", 100)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("UPDATE runs SET status = 'running'")  # as the killed run left it (not through Registry: it settles)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RegistryError) as error:
            registry.create_run(name="blocked")
        # Reading goes on beside the writer (WAL): the killed run's row shown as stored.
        assert [(run.name, run.status) for run in registry.list_runs()] == [("before", "running")]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert str(path) in error.value.message and "locked by another process" in error.value.message
    assert "\n" not in str(error.value)
    assert registry.create_run(name="after").name == "after"


def test_an_alias_moved_only_from_a_given_run_is_checked_in_the_same_write(tmp_path):
    """A retrain's challenger replaces only the champion it was judged against: with only_from, an alias that
    points at another run by the time of the write stays where it is, its history untouched."""
    from tunelab.registry.store import AliasMoved

    registry = Registry(tmp_path / "registry.db")
    a, b, c = (registry.create_run(name=name, task="classify", status="finished").id for name in ("a", "b", "c"))
    registry.set_alias("router", a, only_from=b)  # unset: any run may take it
    registry.set_alias("router", b)  # another promotion lands meanwhile
    with pytest.raises(AliasMoved) as moved:
        registry.set_alias("router", c, only_from=a)
    assert moved.value.current == b and registry.alias("router") == b
    assert [change.run_id for change in registry.alias_history("router")] == [a, b]
    assert registry.set_alias("router", c, only_from=b).previous_run_id == b


def test_a_rollback_after_the_same_run_was_promoted_twice_goes_back_to_the_run_before(tmp_path):
    """`tunelab promote router B` run twice (a re-run script) recorded B twice in the chain: the next rollback moved
    the alias from B to B and the run that served before B stayed out of service."""
    registry = Registry(tmp_path / "registry.db")
    a, b = (registry.create_run(name=name, task="classify", status="finished").id for name in ("a", "b"))
    registry.set_alias("router", a)
    registry.set_alias("router", b)
    registry.set_alias("router", b)
    change = registry.rollback_alias("router")
    assert (change.previous_run_id, change.run_id) == (b, a) and registry.alias("router") == a
    with pytest.raises(RegistryError, match="no earlier run"):
        registry.rollback_alias("router")


def test_a_run_is_found_by_the_folder_the_run_printed(registry, tmp_path, monkeypatch):
    # `tunelab run` ends with "run folder: runs/NAME"; `tunelab show runs/NAME` said there was no such run.
    folder = tmp_path / "runs" / "r1"
    folder.mkdir(parents=True)
    registry.create_run(name="r1", task="classify", run_dir=str(folder.resolve()))
    monkeypatch.chdir(tmp_path)
    assert registry.get_run("runs/r1").name == "r1"
    assert registry.get_run(str(folder) + "/").name == "r1"
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(RegistryError, match="no run 'elsewhere'"):
        registry.get_run("elsewhere")  # a folder that is no run's stays an unknown run
