"""Schema migrations of the run registry: append-only functions, applied once each, in order.

A migration is never edited once it has shipped, because registries created by earlier versions
already ran it; a schema change is a new function at the end of ``MIGRATIONS``. The ``_migrations``
table records the name of every migration that ran, so opening a registry twice (or from two
processes at once) applies nothing twice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []


def migration(function: Migration) -> Migration:
    """Register ``function`` as the next migration (the order of definition is the order applied)."""
    MIGRATIONS.append(function)
    return function


@migration
def m001_runs(db: sqlite3.Connection) -> None:
    # JSON columns hold text; json_valid() checks keep hand edits from breaking readers later.
    db.execute(
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('created', 'running', 'finished', 'failed', 'interrupted')),
            task TEXT,
            model TEXT,
            config TEXT,
            data_fingerprint TEXT,
            split_fingerprint TEXT,
            estimate TEXT CHECK (estimate IS NULL OR json_valid(estimate)),
            baseline_metrics TEXT CHECK (baseline_metrics IS NULL OR json_valid(baseline_metrics)),
            tuned_metrics TEXT CHECK (tuned_metrics IS NULL OR json_valid(tuned_metrics)),
            comparison TEXT CHECK (comparison IS NULL OR json_valid(comparison)),
            timings TEXT CHECK (timings IS NULL OR json_valid(timings)),
            run_dir TEXT,
            artifacts TEXT CHECK (artifacts IS NULL OR json_valid(artifacts)),
            error TEXT
        )
        """
    )
    db.execute("CREATE INDEX runs_task_status ON runs (task, status)")
    db.execute("CREATE INDEX runs_created ON runs (created_at)")


@migration
def m002_baseline_cache(db: sqlite3.Connection) -> None:
    # A base model's scores on one test set with one set of eval settings never change, so a sweep
    # of variants pays for the baseline once.
    db.execute(
        """
        CREATE TABLE baseline_cache (
            key TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            test_fingerprint TEXT NOT NULL,
            settings_hash TEXT NOT NULL,
            metrics TEXT NOT NULL CHECK (json_valid(metrics)),
            predictions_path TEXT,
            run_id TEXT,
            created_at TEXT NOT NULL
        )
        """
    )


@migration
def m003_reviews(db: sqlite3.Connection) -> None:
    # Blind A/B judgments made in `tunelab ui`, one row per click: append-only, so a reviewer changing
    # their mind is a newer row (the latest per reviewer and example counts, see evaluation/review.py)
    # and nothing a reviewer did is ever lost. ``sheet`` is the review sheet whose key unblinds the row.
    db.execute(
        """
        CREATE TABLE reviews (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL,
            sheet TEXT NOT NULL,
            example_id TEXT NOT NULL,
            reviewer TEXT NOT NULL,
            preference TEXT NOT NULL CHECK (preference IN ('A', 'B', 'tie', 'skip')),
            created_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX reviews_run ON reviews (run_id, sheet)")


@migration
def m004_aliases(db: sqlite3.Connection) -> None:
    # A served name follows an alias (router -> run id); every change is kept, so a rollback knows
    # where to go back to and an audit can tell which run answered when.
    db.execute(
        """
        CREATE TABLE aliases (
            name TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE alias_history (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            run_id TEXT NOT NULL,
            previous_run_id TEXT,
            action TEXT NOT NULL CHECK (action IN ('promote', 'rollback')),
            reason TEXT,
            details TEXT CHECK (details IS NULL OR json_valid(details)),
            created_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX alias_history_name ON alias_history (name, id)")


@migration
def m005_cancelled_status(db: sqlite3.Connection) -> None:
    # A run the user stopped (Ctrl-C, SIGTERM, the UI's Cancel, a cancelled cloud job) is told apart from one that
    # broke. SQLite cannot change a CHECK in place: the table is rebuilt with the same columns, rows and indexes.
    columns = (
        "id, name, created_at, updated_at, status, task, model, config, data_fingerprint, split_fingerprint, estimate, "
        "baseline_metrics, tuned_metrics, comparison, timings, run_dir, artifacts, error"
    )
    db.execute(
        """
        CREATE TABLE runs_new (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('created', 'running', 'finished', 'failed', 'interrupted', 'cancelled')),
            task TEXT,
            model TEXT,
            config TEXT,
            data_fingerprint TEXT,
            split_fingerprint TEXT,
            estimate TEXT CHECK (estimate IS NULL OR json_valid(estimate)),
            baseline_metrics TEXT CHECK (baseline_metrics IS NULL OR json_valid(baseline_metrics)),
            tuned_metrics TEXT CHECK (tuned_metrics IS NULL OR json_valid(tuned_metrics)),
            comparison TEXT CHECK (comparison IS NULL OR json_valid(comparison)),
            timings TEXT CHECK (timings IS NULL OR json_valid(timings)),
            run_dir TEXT,
            artifacts TEXT CHECK (artifacts IS NULL OR json_valid(artifacts)),
            error TEXT
        )
        """
    )
    # ORDER BY rowid: listings break created_at ties by rowid, so the copy keeps the order runs were made in.
    db.execute(f"INSERT INTO runs_new ({columns}) SELECT {columns} FROM runs ORDER BY rowid")
    db.execute("DROP TABLE runs")
    db.execute("ALTER TABLE runs_new RENAME TO runs")
    db.execute("CREATE INDEX runs_task_status ON runs (task, status)")
    db.execute("CREATE INDEX runs_created ON runs (created_at)")


@migration
def m006_alias_history_run_name(db: sqlite3.Connection) -> None:
    # A history row kept only the run's id: once the run was deleted, `tunelab aliases` and `tunelab rollback` could
    # say only "77a6c178f568". The name it had when the alias moved is kept with the row; rows written before are
    # filled from the runs still there (a run deleted before this migration keeps only its id).
    db.execute("ALTER TABLE alias_history ADD COLUMN run_name TEXT")
    db.execute("UPDATE alias_history SET run_name = (SELECT name FROM runs WHERE runs.id = alias_history.run_id)")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def applied_migrations(db: sqlite3.Connection) -> list[str]:
    """Names of the migrations already applied to ``db`` (empty for a fresh database)."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    return [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY rowid")]


def migrate(db: sqlite3.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply every migration not yet applied, each in the same write transaction; return their names.

    ``migrations``: the list to apply (default: the registry's; the serving request log passes its own).
    The caller's connection must be in autocommit mode (``isolation_level=None``): this function
    takes the write lock itself (``BEGIN IMMEDIATE``) so two processes migrating a fresh database at
    the same moment serialize, and the second one finds nothing left to do. A database that is up to
    date is only read (no write lock: many processes open one at once).
    """
    migrations = MIGRATIONS if migrations is None else migrations
    if {function.__name__ for function in migrations} <= set(applied_migrations(db)):
        return []
    db.execute("BEGIN IMMEDIATE")
    try:
        done = set(applied_migrations(db))
        applied = []
        for function in migrations:
            if function.__name__ in done:
                continue
            function(db)
            db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (function.__name__, _now()))
            applied.append(function.__name__)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return applied
