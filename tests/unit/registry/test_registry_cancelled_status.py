"""The `cancelled` status (a run the user stopped, told apart from one that broke) in a registry.db written by an
older tunelab: its runs table refused the status by a CHECK; opening it migrates the table, keeping every row."""

from __future__ import annotations

import sqlite3

import pytest

from tunelab.registry import STATUSES, Registry, migrations


def _old_registry(path):
    """A registry.db as tunelab wrote it before `cancelled` existed (migrations m001-m004), with runs in it."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    migrations.applied_migrations(db)
    old = [function for function in migrations.MIGRATIONS if function.__name__ < "m005"]
    assert [function.__name__ for function in old] == ["m001_runs", "m002_baseline_cache", "m003_reviews", "m004_aliases"]
    for function in old:
        function(db)
        db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, 'then')", (function.__name__,))
    for index, (name, status) in enumerate([("a", "finished"), ("b", "failed"), ("c", "interrupted")]):
        db.execute(
            "INSERT INTO runs (id, name, created_at, updated_at, status, task, tuned_metrics, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (f"id{index}", name, "2026-01-01T00:00:00.000+00:00", "2026-01-01T00:00:00.000+00:00", status, "classify",
             '{"accuracy": 0.5}', None if status == "finished" else "why"),
        )
    db.execute("INSERT INTO aliases (name, run_id, updated_at) VALUES ('router', 'id0', 'then')")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        db.execute("UPDATE runs SET status = 'cancelled' WHERE id = 'id2'")
    db.execute("COMMIT")
    db.close()


def test_a_registry_written_before_cancelled_existed_opens_and_takes_it(tmp_path):
    path = tmp_path / "registry.db"
    _old_registry(path)
    registry = Registry(path)
    assert "cancelled" in STATUSES
    # Every row as it was, in the order it was listed (same created_at: listings break ties by rowid).
    assert [(r.name, r.status, r.tuned_metrics) for r in registry.list_runs()] == [
        ("c", "interrupted", {"accuracy": 0.5}), ("b", "failed", {"accuracy": 0.5}), ("a", "finished", {"accuracy": 0.5}),
    ]
    assert registry.alias("router") == "id0"
    cancelled = registry.update_run("c", status="cancelled", error="cancelled by the user (Ctrl-C)")
    assert cancelled.status == "cancelled" and [r.name for r in registry.list_runs(status="cancelled")] == ["c"]
    registry.create_run(name="d", status="cancelled")
    db = sqlite3.connect(path)
    indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs'")}
    assert {"runs_task_status", "runs_created"} <= indexes
    assert "m005_cancelled_status" in [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY rowid")]
    assert registry.integrity_check() == "ok"
    # Still refused: a status no version knows.
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        db.execute("UPDATE runs SET status = 'stopped' WHERE name = 'd'")
    db.close()
    Registry(path)  # a second open applies nothing again
    assert len(Registry(path).list_runs()) == 4
