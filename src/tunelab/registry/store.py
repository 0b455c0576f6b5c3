"""The run registry: one SQLite file that remembers every run, its numbers and where its files are.

SQLite because it is a real database that needs no server: WAL journaling lets readers go on while
one process writes, ``busy_timeout`` makes a second writer wait for the lock instead of failing,
and every write takes the lock up front (``BEGIN IMMEDIATE``) so a read-modify-write such as
:meth:`Registry.record_timing` never interleaves with another process's.

A connection is opened per operation: connections must not cross ``fork()``, and opening a SQLite
file costs well under a millisecond next to anything a run does.

The file is created readable by its owner only (it holds every run's config and, through reviews,
answers). A row that says "running" while no process holds its run folder's lock belongs to a run
that was killed: whoever reads it next marks it "interrupted" (see :meth:`Registry._settle`).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import TunelabError
from tunelab.faults import kill_point
from tunelab.paths import LOCK_FILE, create_private_file, run_folder_holder
from tunelab.registry.migrations import migrate

# "interrupted": stopped without a word (killed, the machine went down, a sweep's scheduler); "cancelled": the user
# stopped it (Ctrl-C, SIGTERM, the UI's Cancel, `tunelab cancel`); "failed": it broke. The first two resume as they were.
STATUSES = ("created", "running", "finished", "failed", "interrupted", "cancelled")
JSON_FIELDS = ("estimate", "baseline_metrics", "tuned_metrics", "comparison", "timings", "artifacts")
TEXT_FIELDS = ("name", "status", "task", "model", "config", "data_fingerprint", "split_fingerprint", "run_dir", "error")
UPDATABLE_FIELDS = TEXT_FIELDS + JSON_FIELDS
# The steps whose estimated and actual durations a run records (see Registry.record_timing).
TIMED_STEPS = ("data_check", "baseline", "train", "eval")
# The metric shown as "before -> after" in listings, by task: the first one a run has is used.
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "classify": ("accuracy", "macro_f1"),
    "sft": ("rougeL", "rouge_l", "rougeLsum", "chrf", "bleu", "exact_match"),
    "text": ("perplexity", "loss"),
    "preference": ("likelihood_accuracy", "preference_accuracy", "reward_margin"),
}
BUSY_TIMEOUT_MS = 30_000


class RegistryError(TunelabError):
    """A run that does not exist, an ambiguous name, a registry file that cannot be used."""


class RegistryLocked(RegistryError):
    """Another process held the registry's write lock for longer than ``busy_timeout``."""


class AliasMoved(RegistryError):
    """``set_alias(only_from=...)`` found the alias pointing at another run (``current``)."""

    def __init__(self, alias: str, current: str) -> None:
        super().__init__(f"alias {alias} points at run {current} now")
        self.alias, self.current = alias, current


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class RunRecord:
    """One row of the registry, with JSON columns parsed into Python values."""

    id: str
    name: str
    created_at: str
    updated_at: str
    status: str
    task: str | None = None
    model: str | None = None
    config: str | None = None
    data_fingerprint: str | None = None
    split_fingerprint: str | None = None
    estimate: dict | None = None
    baseline_metrics: dict | None = None
    tuned_metrics: dict | None = None
    comparison: dict | None = None
    timings: dict | None = None
    run_dir: str | None = None
    artifacts: dict | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def config_dict(self) -> dict[str, Any]:
        """The stored resolved config (YAML or JSON text) as a dict; empty when none is stored."""
        if not self.config:
            return {}
        loaded = yaml.safe_load(self.config)
        return loaded if isinstance(loaded, dict) else {}

    @property
    def verdict(self) -> str | None:
        """The comparison's verdict ("better", "worse", "no significant difference", ...), if any."""
        if isinstance(self.comparison, dict):
            value = self.comparison.get("verdict")
            return str(value) if value is not None else None
        return None

    @property
    def baselines_skipped(self) -> dict[str, str]:
        """Each baseline of ``eval.baselines`` that was not scored, with why (it cannot run here, or cannot win), as the
        verdict and the artifacts keep them (a run without a verdict, e.g. one that stopped after the baselines step,
        has only the artifacts')."""
        skipped: dict[str, str] = {}
        for kept in ((self.artifacts or {}).get("baselines_skipped"), (self.comparison or {}).get("skipped")):
            if isinstance(kept, dict):
                skipped.update({str(name): str(reason) for name, reason in kept.items()})
        return skipped

    @property
    def base_skipped(self) -> str | None:
        """Why the base model was not scored (``eval.skip_hopeless``: it cannot win); None when it was scored or
        nothing says so."""
        return self.baselines_skipped.get("base")

    def base_metrics(self) -> dict[str, float]:
        """The base model's metrics ("before"): ``baseline_metrics``, unless the run says the base model was skipped.
        Rows written before that column held only the base model's kept another baseline's metrics there (the
        classical baseline's when the base model was skipped), never to be shown as the base model's."""
        return {} if self.base_skipped is not None else metric_values(self.baseline_metrics)

    def base_not_compared(self) -> dict[str, str]:
        """The metrics the verdict does not compare with the base model, with why (its ``not_compared``, decided once by
        ``evaluation.compare.compare_evaluations``): a preference run's base model is the reference scored as itself,
        whose stored value of a metric measured against the reference (a reward margin of 0) is no value of its own.
        The base model's entry first, then any baseline's (a cloud run's base model is named otherwise)."""
        comparisons = self.comparison.get("comparisons") if isinstance(self.comparison, dict) else None
        if not isinstance(comparisons, dict):
            return {}
        reasons: dict[str, str] = {}
        for name in sorted(comparisons, key=lambda name: name != "base"):
            metrics = comparisons[name].get("metrics") if isinstance(comparisons[name], dict) else None
            for metric in metrics if isinstance(metrics, list) else []:
                if isinstance(metric, dict) and metric.get("not_compared"):
                    reasons.setdefault(str(metric.get("name")), str(metric["not_compared"]))
        return reasons

    def key_metric(self) -> tuple[str, float | None, float | None] | None:
        """(metric name, base model's value, tuned value) of the run's headline metric, if either is known: the metric its
        verdict is on (the tuned evaluation's ``primary``: eval.metric), else the task's."""
        primary = (self.tuned_metrics or {}).get("primary") if isinstance(self.tuned_metrics, dict) else None
        candidates = ((primary,) if isinstance(primary, str) else ()) + KEY_METRICS.get(self.task or "", ())
        for name in candidates + tuple(metric_values(self.tuned_metrics) or metric_values(self.baseline_metrics)):
            before = self.base_metrics().get(name)
            after = metric_values(self.tuned_metrics).get(name)
            if before is not None or after is not None:
                return name, before, after
        return None


def metric_values(metrics: dict | None) -> dict[str, float]:
    """The numeric metrics of a metrics JSON: ``{"accuracy": 0.8}`` or ``{"accuracy": {"value": 0.8, ...}}``.

    Nested ``{"metrics": {...}}`` is looked through, so a whole evaluation result can be stored as is.
    """
    if not isinstance(metrics, dict):
        return {}
    if isinstance(metrics.get("metrics"), dict):
        metrics = metrics["metrics"]
    values: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            value = value.get("value", value.get("mean"))
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            values[name] = float(value)
    return values


@dataclass(frozen=True)
class BaselineKey:
    """What makes two baseline evaluations the same: model, test set, and the evaluation settings."""

    model: str
    test_fingerprint: str
    settings_hash: str

    @property
    def key(self) -> str:
        return f"{self.model}|{self.test_fingerprint}|{self.settings_hash}"


def baseline_key(model: str, test_fingerprint: str, eval_settings: dict[str, Any]) -> BaselineKey:
    """Build the cache key of a baseline evaluation.

    Args:
        model: the base model's fingerprint, or its resolved name/location when it has none.
        test_fingerprint: fingerprint of the exact test records (ids in order).
        eval_settings: everything that changes the scores (e.g. the ``eval`` config section, the
            task, the label map, the system prompt); hashed as canonical JSON.
    """
    canonical = json.dumps(eval_settings, sort_keys=True, separators=(",", ":"), default=str)
    return BaselineKey(model, test_fingerprint, hashlib.sha256(canonical.encode()).hexdigest()[:16])


@dataclass
class CachedBaseline:
    key: BaselineKey
    metrics: dict
    predictions_path: str | None
    run_id: str | None
    created_at: str


REVIEW_PREFERENCES = ("A", "B", "tie", "skip")


@dataclass(frozen=True)
class ReviewRecord:
    """One stored A/B judgment (a row of the ``reviews`` table)."""

    id: int
    run_id: str
    sheet: str
    example_id: str
    reviewer: str
    preference: str
    created_at: str


@dataclass
class AliasChange:
    """One row of an alias's history: the alias moved from ``previous_run_id`` to ``run_id``."""

    id: int
    name: str
    run_id: str
    previous_run_id: str | None
    action: str  # "promote" or "rollback"
    reason: str | None
    details: dict | None
    created_at: str
    run_name: str | None = None  # the run's name when the alias moved: it still reads once the run is deleted

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunComparison:
    """Runs side by side: ``metrics[name] = [value per run]`` and the config keys that differ."""

    runs: list[str]
    baseline_metrics: dict[str, list[float | None]] = field(default_factory=dict)
    # Per baseline metric and run: why the run's verdict does not compare it with the base model (RunRecord.base_not_compared),
    # else None; a renderer shows the reason, not the stored value.
    baseline_not_compared: dict[str, list[str | None]] = field(default_factory=dict)
    tuned_metrics: dict[str, list[float | None]] = field(default_factory=dict)
    config_differences: dict[str, list[Any]] = field(default_factory=dict)
    verdicts: list[str | None] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what keeps the numbers from comparing (different test sets)
    # Per group of the test set (data.group_field), per run: its verdict for that group (n, opponent, metric, tuned,
    # opponent_value, difference, low, high, outcome as the verdict saved them), None where the run has no such group.
    # Only when every run was judged by group on the same test set, and for at most MAX_GROUPS_SIDE_BY_SIDE groups.
    groups: dict[str, list[dict[str, Any] | None]] = field(default_factory=dict)
    groups_note: str | None = None  # why groups there are were not set side by side (too many)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# More groups than this are not set side by side (`tunelab compare`): a table that long is not read; each run's own
# table (`tunelab show`) still has them all.
MAX_GROUPS_SIDE_BY_SIDE = 12
_GROUP_KEYS = ("n", "opponent", "metric", "tuned", "opponent_value", "difference", "low", "high", "outcome")


def _groups_side_by_side(records: list[RunRecord], different_test_sets: bool) -> tuple[dict[str, list[dict[str, Any] | None]], str | None]:
    """Each run's verdict by group, per group (``RunComparison.groups``), and the note when there are too many; nothing
    unless every run has one, on one test set (otherwise its numbers compare no better than the runs' metrics do)."""
    per_run = []
    for record in records:
        saved = record.comparison.get("groups") if isinstance(record.comparison, dict) else None
        per_run.append({str(group["group"]): group for group in saved or () if isinstance(group, dict) and "group" in group})
    if different_test_sets or not all(per_run):
        return {}, None
    names = list(dict.fromkeys(name for groups in per_run for name in groups))  # the first run's order, then the others'
    if len(names) > MAX_GROUPS_SIDE_BY_SIDE:
        return {}, (f"{len(names)} groups: too many to set side by side (at most {MAX_GROUPS_SIDE_BY_SIDE}); "
                    "`tunelab show RUN` tables each run's verdict for every group")
    return {name: [{key: groups[name].get(key) for key in _GROUP_KEYS} if name in groups else None for groups in per_run]
            for name in names}, None


def _test_set_warnings(records: list[RunRecord]) -> list[str]:
    """A warning when the runs' verdicts were reached on different test sets (the verdict's ``test_fingerprint``, else
    its test example count): their metrics and verdicts then say nothing about which run is better."""
    verdicts = [record.comparison if isinstance(record.comparison, dict) else {} for record in records]
    known = [(record.name, verdict.get("test_fingerprint"), verdict.get("n")) for record, verdict in zip(records, verdicts, strict=True)]
    fingerprints = {fingerprint for _, fingerprint, _ in known if fingerprint}
    counts = {n for _, _, n in known if isinstance(n, int)}
    if len(fingerprints) < 2 and len(counts) < 2:
        return []
    described = ", ".join(f"{name}: {n if isinstance(n, int) else '?'} examples" + (f", test set {fingerprint[:8]}" if fingerprint else "")
                          for name, fingerprint, n in known)
    return [f"these runs were judged on different test sets ({described}): their metrics and verdicts do not compare; "
            "compare runs of the same data and split (data.seed, data.test_size, data.test)"]


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}``; lists stay values."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def config_differences(configs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The dotted config keys whose values are not the same in every config (absent shows as None).

    An absent key and a null one are the same: a run saved before a key existed (``data.group_field``) has none, a
    newer run its null default, and listing that as a difference would hide the ones that matter among them.
    """
    flats = [flatten(config) for config in configs]
    keys = sorted({key for flat in flats for key in flat})
    differences = {}
    for key in keys:
        values = [flat.get(key) for flat in flats]
        if any(value != values[0] for value in values[1:]):
            differences[key] = values
    return differences


def default_registry_path(config: Any = None) -> Path:
    """``config.registry`` when set, else ``<config.train.output_dir>/registry.db`` (``runs/registry.db``)."""
    if config is not None and getattr(config, "registry", None):
        return Path(config.registry)
    output_dir = getattr(getattr(config, "train", None), "output_dir", None) or "runs"
    return Path(output_dir) / "registry.db"


class Registry:
    """The SQLite run registry at ``path`` (created, with its folder, when missing).

    Raises:
        RegistryError: when the file cannot be opened as a registry (not SQLite, unwritable folder).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            create_private_file(self.path)
            self._open_file()
        except sqlite3.DatabaseError as error:
            raise RegistryError(f"cannot use {self.path} as a run registry: {error}", "pass another --registry path") from None
        except OSError as error:
            raise RegistryError(f"cannot create the registry at {self.path}: {error.strerror}") from None

    def _open_file(self) -> None:
        """Switch the file to WAL and migrate it, waiting out another process doing the same.

        Two processes opening a fresh file at once can get "database is locked" without the busy
        handler being consulted (SQLite returns SQLITE_BUSY at once where waiting could deadlock,
        e.g. while the other one changes the journal mode), so the whole opening is retried, with a
        growing pause, for as long as ``busy_timeout`` would have waited.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        pause = 0.01
        while True:
            try:
                with self._connect() as db:
                    # WAL is a property of the file: set it once (changing it takes an exclusive lock).
                    if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                        db.execute("PRAGMA journal_mode=WAL")
                    migrate(db)
                return
            except (sqlite3.OperationalError, RegistryLocked) as error:
                if "locked" not in str(error) or time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(0.5, pause * 2)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        except sqlite3.DatabaseError as error:
            name = getattr(error, "sqlite_errorname", "")
            if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                # busy_timeout has been waited out: another process keeps a write transaction open.
                raise RegistryLocked(
                    f"the run registry {self.path} is locked by another process (waited {BUSY_TIMEOUT_MS / 1000:g} s)",
                    "let that process finish, or end it (a `sqlite3` shell left in a transaction, a stuck command), "
                    "then run the same command again; `tunelab run --resume RUN` continues a run where it stopped",
                ) from None
            # A file whose header is sound but whose pages are not opens fine and fails on the first read that
            # reaches a damaged page: the same one line as a file that cannot be opened at all.
            if not name.startswith("SQLITE_CORRUPT"):
                raise
            raise RegistryError(
                f"cannot use {self.path} as a run registry: it is damaged ({error})",
                f"restore it from a backup, or save what is readable with `sqlite3 {self.path} .recover`; "
                "--registry PATH starts a new one",
            ) from None
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock before reading, so a read-modify-write cannot be
        # overtaken by another process between its read and its write (no lost updates, no
        # deadlock from two readers both upgrading).
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                kill_point("registry.before-commit")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # -- runs ---------------------------------------------------------------------------------

    def create_run(
        self,
        *,
        name: str | None = None,
        task: str | None = None,
        model: str | None = None,
        config: str | dict | None = None,
        status: str = "created",
        **fields: Any,
    ) -> RunRecord:
        """Insert a run and return it. Without ``name``, one is made from task, model and time.

        ``config`` may be YAML/JSON text or a dict (stored as YAML). Any other column of
        :class:`RunRecord` can be given as a keyword.

        Raises:
            RegistryError: when a run with ``name`` already exists.
            ValueError: for an unknown status or field (a bug in the caller).
        """
        run_id = uuid.uuid4().hex[:12]
        if name is None:
            model_part = re.sub(r"[^A-Za-z0-9]+", "-", Path(model or "model").name).strip("-").lower() or "model"
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
            name = f"{task or 'run'}-{model_part}-{stamp}-{run_id[:4]}"
        now = _now()
        values = self._column_values({"name": name, "task": task, "model": model, "config": config, "status": status, **fields})
        values.update({"id": run_id, "created_at": now, "updated_at": now})
        columns = ", ".join(values)
        placeholders = ", ".join("?" for _ in values)
        try:
            with self._write() as db:
                db.execute(f"INSERT INTO runs ({columns}) VALUES ({placeholders})", tuple(values.values()))
        except sqlite3.IntegrityError as error:
            if "runs.name" in str(error):
                raise RegistryError(f"a run named '{name}' already exists in {self.path}", "choose another name") from None
            raise
        return self.get_run(run_id)

    def update_run(self, run: str, **fields: Any) -> RunRecord:
        """Set columns of one run (by id or name); JSON columns take dicts. Returns the updated run.

        Raises:
            RegistryError: when the run does not exist.
            ValueError: for an unknown status or field.
        """
        values = self._column_values(fields)
        run_id = self.get_run(run).id
        if values:
            values["updated_at"] = _now()
            assignments = ", ".join(f"{column} = ?" for column in values)
            with self._write() as db:
                db.execute(f"UPDATE runs SET {assignments} WHERE id = ?", (*values.values(), run_id))
        return self.get_run(run_id)

    def record_timing(
        self, run: str, step: str, *, estimated_s: float | None = None, actual_s: float | None = None
    ) -> RunRecord:
        """Merge the estimated and/or actual seconds of one step into the run's timings.

        timings look like ``{"train": {"estimated_s": 300.0, "actual_s": 341.2}, ...}``; steps are
        usually those of ``TIMED_STEPS`` but any name is kept.

        Raises:
            RegistryError: when the run does not exist.
        """
        run_id = self.get_run(run).id
        with self._write() as db:
            row = db.execute("SELECT timings FROM runs WHERE id = ?", (run_id,)).fetchone()
            timings = json.loads(row["timings"]) if row["timings"] else {}
            entry = timings.setdefault(step, {})
            if estimated_s is not None:
                entry["estimated_s"] = float(estimated_s)
            if actual_s is not None:
                entry["actual_s"] = float(actual_s)
            db.execute(
                "UPDATE runs SET timings = ?, updated_at = ? WHERE id = ?", (json.dumps(timings), _now(), run_id)
            )
        return self.get_run(run_id)

    def get_run(self, run: str) -> RunRecord:
        """A run by id, by name, by a unique id prefix of at least 4 characters, or by its run folder's path.

        Raises:
            RegistryError: when no run matches, or a prefix matches several.
        """
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ? OR name = ?", (run, run)).fetchone()
            if row is None and len(run) >= 4 and re.fullmatch(r"[0-9a-f]+", run):
                rows = db.execute("SELECT * FROM runs WHERE id LIKE ? LIMIT 2", (run + "%",)).fetchall()
                if len(rows) > 1:
                    raise RegistryError(f"'{run}' matches several run ids in {self.path}", "give more characters or the name")
                row = rows[0] if rows else None
            if row is None and Path(run).expanduser().is_dir():
                # The run's folder, as `tunelab run` prints it and report, predict and review take it; kept absolute.
                folder = Path(run).expanduser()
                places = list(dict.fromkeys([str(folder.absolute()), str(folder.resolve())]))
                row = db.execute(f"SELECT * FROM runs WHERE run_dir IN ({', '.join('?' * len(places))}) "
                                 "ORDER BY created_at DESC LIMIT 1", places).fetchone()
        if row is None:
            raise RegistryError(f"no run '{run}' in {self.path}", "`tunelab runs` lists the recorded runs")
        return self._settle(self._record(row))

    def list_runs(self, task: str | None = None, status: str | None = None, limit: int | None = None) -> list[RunRecord]:
        """Runs, newest first, optionally only those of one task and/or status.

        Raises:
            ValueError: for an unknown status.
        """
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; valid: {', '.join(STATUSES)}")
        clauses, parameters = [], []
        if task is not None:
            clauses.append("task = ?")
            parameters.append(task)
        if status is not None:
            clauses.append("status = ?")
            parameters.append(status)
        sql = "SELECT * FROM runs"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY created_at DESC, rowid DESC"
        if limit is not None:
            sql += " LIMIT ?"
            parameters.append(int(limit))
        with self._connect() as db:
            records = [self._record(row) for row in db.execute(sql, parameters)]
        return [self._settle(record) for record in records]

    def delete_run(self, run: str) -> None:
        """Remove a run's row and its reviews, even one an alias points at (its folder on disk is left alone);
        ``tunelab delete`` goes through ``registry.cleanup``, which refuses a served run and removes the folder.

        Raises:
            RegistryError: when the run does not exist.
        """
        self.remove_run_row(self.get_run(run).id, even_if_served=True)

    def remove_run_row(self, run_id: str, *, even_if_served: bool = False) -> bool:
        """Remove run ``run_id``'s row and its reviews in one transaction, unless an alias points at it (False then).

        For ``registry.cleanup.delete_runs``, which deals with the folder; the alias history keeps the id (a tombstone).
        """
        with self._write() as db:
            if not even_if_served and db.execute("SELECT 1 FROM aliases WHERE run_id = ?", (run_id,)).fetchone() is not None:
                return False
            db.execute("DELETE FROM reviews WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        return True

    def compare_runs(self, runs: list[str]) -> RunComparison:
        """Baseline and tuned metrics side by side, and the config keys (dotted) whose values differ.

        Raises:
            RegistryError: when a run does not exist, or fewer than two are given.
        """
        if len(runs) < 2:
            raise RegistryError("compare needs at least two runs")
        records = [self.get_run(run) for run in runs]
        comparison = RunComparison(runs=[record.name for record in records])
        for read, target in ((RunRecord.base_metrics, comparison.baseline_metrics), (lambda record: metric_values(record.tuned_metrics), comparison.tuned_metrics)):
            per_run = [read(record) for record in records]  # the base model's "before" only (RunRecord.base_metrics)
            for name in sorted({name for values in per_run for name in values}):
                target[name] = [values.get(name) for values in per_run]
        not_compared = [record.base_not_compared() for record in records]
        comparison.baseline_not_compared = {name: [reasons.get(name) for reasons in not_compared] for name in comparison.baseline_metrics}
        comparison.config_differences = config_differences([record.config_dict for record in records])
        comparison.verdicts = [record.verdict for record in records]
        comparison.warnings = _test_set_warnings(records)
        comparison.groups, comparison.groups_note = _groups_side_by_side(records, bool(comparison.warnings))
        return comparison

    # -- baseline cache -----------------------------------------------------------------------

    def get_cached_baseline(self, key: BaselineKey) -> CachedBaseline | None:
        """The stored baseline evaluation for ``key``, or None."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM baseline_cache WHERE key = ?", (key.key,)).fetchone()
        if row is None:
            return None
        return CachedBaseline(key, json.loads(row["metrics"]), row["predictions_path"], row["run_id"], row["created_at"])

    def put_cached_baseline(
        self, key: BaselineKey, metrics: dict, *, predictions_path: str | Path | None = None, run_id: str | None = None
    ) -> CachedBaseline:
        """Store (or replace) the baseline evaluation for ``key``."""
        now = _now()
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO baseline_cache "
                "(key, model, test_fingerprint, settings_hash, metrics, predictions_path, run_id, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.key,
                    key.model,
                    key.test_fingerprint,
                    key.settings_hash,
                    json.dumps(metrics, default=str),
                    str(predictions_path) if predictions_path is not None else None,
                    run_id,
                    now,
                ),
            )
        return CachedBaseline(key, metrics, str(predictions_path) if predictions_path else None, run_id, now)

    # -- reviews ------------------------------------------------------------------------------

    def add_review(self, run: str, *, sheet: str | Path, example_id: str, reviewer: str, preference: str) -> ReviewRecord:
        """Append one A/B judgment of ``run``'s review sheet (never updates an earlier one).

        Raises:
            RegistryError: when the run does not exist, or the reviewer's name is empty.
            ValueError: for a preference other than A, B, tie or skip.
        """
        if preference not in REVIEW_PREFERENCES:
            raise ValueError(f"unknown preference {preference!r}; valid: {', '.join(REVIEW_PREFERENCES)}")
        reviewer = reviewer.strip()
        if not reviewer:
            raise RegistryError("a review needs the reviewer's name")
        run_id = self.get_run(run).id
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO reviews (run_id, sheet, example_id, reviewer, preference, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, str(sheet), example_id, reviewer, preference, _now()),
            )
            row = db.execute("SELECT * FROM reviews WHERE id = ?", (cursor.lastrowid,)).fetchone()
        return ReviewRecord(**dict(row))

    def list_reviews(self, run: str, *, sheet: str | Path | None = None) -> list[ReviewRecord]:
        """Every judgment stored for ``run`` (of one sheet when given), oldest first.

        Raises:
            RegistryError: when the run does not exist.
        """
        run_id = self.get_run(run).id
        sql, parameters = "SELECT * FROM reviews WHERE run_id = ?", [run_id]
        if sheet is not None:
            sql += " AND sheet = ?"
            parameters.append(str(sheet))
        with self._connect() as db:
            return [ReviewRecord(**dict(row)) for row in db.execute(sql + " ORDER BY id", parameters)]

    # -- aliases ------------------------------------------------------------------------------

    def alias(self, name: str) -> str | None:
        """The run id alias ``name`` points at, or None when it was never set."""
        with self._connect() as db:
            row = db.execute("SELECT run_id FROM aliases WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row["run_id"])

    def aliases(self) -> dict[str, str]:
        """Every alias and the run id it points at."""
        with self._connect() as db:
            return {row["name"]: row["run_id"] for row in db.execute("SELECT name, run_id FROM aliases ORDER BY name")}

    def aliases_by_run(self) -> dict[str, list[str]]:
        """The aliases pointing at each run (run id -> alias names, sorted): which runs are live and under what name.
        A run no alias points at is absent."""
        served: dict[str, list[str]] = {}
        for alias, run_id in self.aliases().items():  # in alias order: each run's list comes out sorted
            served.setdefault(run_id, []).append(alias)
        return served

    def resolve_alias(self, name: str) -> RunRecord:
        """The run alias ``name`` points at.

        Raises:
            RegistryError: when the alias is not set, or its run is gone.
        """
        run_id = self.alias(name)
        if run_id is None:
            raise RegistryError(f"no alias '{name}' in {self.path}", f"set it with `tunelab promote {name} RUN`")
        return self.get_run(run_id)

    def set_alias(
        self, name: str, run: str, *, reason: str | None = None, details: dict | None = None, action: str = "promote",
        only_from: str | None = None,
    ) -> AliasChange:
        """Point alias ``name`` at ``run`` (id or name) and append the change to its history.

        ``only_from`` (a run id): move the alias only while it is unset or still points at that run, checked in the
        same write transaction (a retrain's challenger replaces only the champion it was judged against, even when
        another promotion lands while it trains).

        Raises:
            RegistryError: for an unknown run, an empty alias name, or a run that did not finish.
            AliasMoved: when ``only_from`` is given and the alias points at another run (nothing is written).
        """
        if not name or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise RegistryError(f"alias name '{name}' is not letters, digits, '.', '_' or '-'")
        record = self.finished_run(run)
        now = _now()
        with self._write() as db:
            row = db.execute("SELECT run_id FROM aliases WHERE name = ?", (name,)).fetchone()
            previous = None if row is None else row["run_id"]
            if only_from is not None and previous not in (None, only_from):
                raise AliasMoved(name, previous)
            db.execute(
                "INSERT INTO aliases (name, run_id, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET run_id = excluded.run_id, updated_at = excluded.updated_at",
                (name, record.id, now),
            )
            cursor = db.execute(
                "INSERT INTO alias_history (name, run_id, previous_run_id, action, reason, details, created_at, run_name) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, record.id, previous, action, reason, json.dumps(details, default=str) if details is not None else None, now,
                 record.name),
            )
            change_id = int(cursor.lastrowid)
        return AliasChange(change_id, name, record.id, previous, action, reason, details, now, record.name)

    def finished_run(self, run: str) -> RunRecord:
        """The run an alias may point at: only a finished one can be served.

        Raises:
            RegistryError: for an unknown run, or one that did not finish.
        """
        record = self.get_run(run)
        if record.status != "finished":
            raise RegistryError(f"run '{record.name}' is {record.status}, not finished: it cannot be served", "promote a finished run")
        return record

    def alias_history(self, name: str) -> list[AliasChange]:
        """Every change of alias ``name``, oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM alias_history WHERE name = ? ORDER BY id", (name,)).fetchall()
        return [
            AliasChange(
                row["id"], row["name"], row["run_id"], row["previous_run_id"], row["action"], row["reason"],
                json.loads(row["details"]) if row["details"] else None, row["created_at"], row["run_name"],
            )
            for row in rows
        ]

    def rollback_alias(self, name: str, *, reason: str | None = None) -> AliasChange:
        """Point alias ``name`` back at the run it pointed at before its current one (:meth:`rollback_target`).

        Raises:
            RegistryError: when the alias has no earlier run to go back to.
        """
        return self.set_alias(name, self.rollback_target(name), reason=reason or "rollback", action="rollback")

    def rollback_target(self, name: str) -> str:
        """The run id a rollback of alias ``name`` goes back to: the run it pointed at before its current one.

        Walks the history backwards past earlier rollbacks, so two rollbacks in a row step back twice
        (A -> B -> C, rollback: B, rollback: A).

        Raises:
            RegistryError: when the alias has no earlier run to go back to.
        """
        history = self.alias_history(name)
        if not history:
            raise RegistryError(f"no alias '{name}' in {self.path}")
        # The chain of promotions still in force: each rollback cancels the promotion it undid.
        chain: list[str] = []
        for change in history:
            if change.action == "promote":
                # Promoting the run already served changes nothing: counted twice, the next rollback would stay on it.
                if not chain or chain[-1] != change.run_id:
                    chain.append(change.run_id)
            elif chain:
                chain.pop()
        if len(chain) < 2:
            raise RegistryError(f"alias '{name}' has no earlier run to roll back to", "`tunelab promote NAME RUN` sets one explicitly")
        with self._connect() as db:
            gone = db.execute("SELECT 1 FROM runs WHERE id = ?", (chain[-2],)).fetchone() is None
        if gone:
            # Its id stays in the history (`tunelab delete` keeps it there so the history still reads), with its name.
            known = next((change.run_name for change in reversed(history) if change.run_id == chain[-2] and change.run_name), None)
            run = f"{known} ({chain[-2]})" if known else chain[-2]
            raise RegistryError(f"alias '{name}' served run {run} before, which was deleted: nothing to roll back to",
                                f"`tunelab promote {name} RUN` points it at another run")
        return chain[-2]

    # -- helpers ------------------------------------------------------------------------------

    def _settle(self, record: RunRecord) -> RunRecord:
        """``record``, marked interrupted first when it says running but its process is gone.

        A running pipeline holds its run folder's lock (an flock, which the kernel drops when the
        process dies, SIGKILL included), so a "running" row whose folder has a lock file nobody holds
        was killed. The update is conditional on the row being unchanged since it was read: a resume
        that has just taken the folder over keeps its own status.
        """
        if record.status != "running" or not record.run_dir:
            return record
        folder = Path(record.run_dir)
        if not (folder / LOCK_FILE).is_file() or run_folder_holder(folder) is not None:
            return record
        error = record.error or "stopped without finishing (killed, or the machine went down); `tunelab run --resume RUN` continues it"
        try:
            with self._write() as db:
                db.execute(
                    "UPDATE runs SET status = 'interrupted', error = ?, updated_at = ? WHERE id = ? AND status = 'running' AND updated_at = ?",
                    (error, _now(), record.id, record.updated_at),
                )
                row = db.execute("SELECT * FROM runs WHERE id = ?", (record.id,)).fetchone()
        except (sqlite3.OperationalError, RegistryLocked):
            return record  # a read-only, full or locked registry: the row is shown as stored
        return self._record(row) if row is not None else record

    def integrity_check(self) -> str:
        """SQLite's own consistency check: ``"ok"`` when the file is sound."""
        with self._connect() as db:
            return db.execute("PRAGMA integrity_check").fetchone()[0]

    @staticmethod
    def _column_values(fields: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for column, value in fields.items():
            if column not in UPDATABLE_FIELDS:
                raise ValueError(f"unknown run field {column!r}; valid: {', '.join(UPDATABLE_FIELDS)}")
            if column == "status" and value not in STATUSES:
                raise ValueError(f"unknown status {value!r}; valid: {', '.join(STATUSES)}")
            if column == "config" and isinstance(value, dict):
                value = yaml.safe_dump(value, sort_keys=False)
            elif column in JSON_FIELDS and value is not None:
                value = json.dumps(value, default=str)
            elif value is not None and not isinstance(value, str):
                value = str(value)
            values[column] = value
        return values

    @staticmethod
    def _record(row: sqlite3.Row) -> RunRecord:
        data = dict(row)
        for column in JSON_FIELDS:
            if data.get(column) is not None:
                data[column] = json.loads(data[column])
        return RunRecord(**data)
