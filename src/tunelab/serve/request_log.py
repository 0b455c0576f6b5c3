"""The request log: every request and its response, appended to a SQLite table for monitoring.

Handlers never wait for the disk: ``record`` puts the entry on a bounded in-memory queue and a
background thread writes batches of them in one transaction (WAL mode, so monitoring can read while
the server writes). If the disk cannot keep up and the queue is full, entries are dropped and
counted in ``dropped`` rather than slowing requests down. ``close`` flushes everything queued.

Table ``requests`` (one row per HTTP request)::

    id INTEGER PRIMARY KEY, time TEXT (UTC ISO-8601, when the request arrived), endpoint TEXT,
    model TEXT, prompt TEXT, output TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
    latency_ms REAL, status INTEGER (HTTP status), error TEXT, stream INTEGER (0/1),
    response_id TEXT (the id the response carried: chatcmpl-/cmpl-/clf-...), run_id TEXT (the run behind
    the served name when the request came, refused or answered; NULL for the base model and for a name not
    served, refused with 404), predicted_label TEXT, top_probability REAL (classify,
    one input), probabilities TEXT (classify: JSON list, one {label: p} per input)

Table ``feedback`` (the correct answer for a logged response, from ``POST /v1/feedback`` or
``tunelab feedback import``; the newest row per (response_id, item) wins)::

    id INTEGER PRIMARY KEY, time TEXT, response_id TEXT, item INTEGER (input index of a multi-input
    classify request), label TEXT, completion TEXT, rating INTEGER (+1 / -1), source TEXT

The schema grows by append-only migrations (``MIGRATIONS``, recorded in ``_migrations``), like the
run registry's: a log written by an older server gains the new columns on the next start, its rows
kept (their new columns are NULL).
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunelab.errors import DataError
from tunelab.paths import create_private_file, disk_full_error, is_disk_full
from tunelab.registry.migrations import Migration
from tunelab.registry.migrations import migrate as apply_migrations

logger = logging.getLogger("tunelab.serve")

COLUMNS = (
    "time",
    "endpoint",
    "model",
    "prompt",
    "output",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "status",
    "error",
    "stream",
    "response_id",
    "run_id",
    "predicted_label",
    "top_probability",
    "probabilities",
)

# The endpoints whose body names the model that answers (its ``model`` field): the traffic monitoring reads.
SERVING_ENDPOINTS = ("/v1/classify", "/v1/chat/completions", "/v1/completions")
CLASSIFY = SERVING_ENDPOINTS[0]  # the one endpoint whose answers a feedback 'label' corrects
MIGRATIONS: list[Migration] = []  # the request log's own, applied by the registry's runner
BUSY_TIMEOUT_S = 30.0


def _migration(function: Migration) -> Migration:
    MIGRATIONS.append(function)
    return function


@_migration
def m001_requests(db: sqlite3.Connection) -> None:
    # IF NOT EXISTS: logs written before migrations existed already have this table.
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS requests (
            id INTEGER PRIMARY KEY,
            time TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            model TEXT,
            prompt TEXT,
            output TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            latency_ms REAL,
            status INTEGER NOT NULL,
            error TEXT,
            stream INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    db.execute("CREATE INDEX IF NOT EXISTS requests_time ON requests(time)")


@_migration
def m002_response_ids_and_predictions(db: sqlite3.Connection) -> None:
    # What monitoring and feedback need: which response a correction is about, which run answered
    # (a promotion must not mix two models' traffic), and the classify prediction with its confidence.
    for column, kind in (
        ("response_id", "TEXT"), ("run_id", "TEXT"), ("predicted_label", "TEXT"), ("top_probability", "REAL"), ("probabilities", "TEXT"),
    ):
        db.execute(f"ALTER TABLE requests ADD COLUMN {column} {kind}")
    db.execute("CREATE INDEX requests_response_id ON requests(response_id)")
    db.execute("CREATE INDEX requests_model_time ON requests(model, time)")


@_migration
def m003_feedback(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE feedback (
            id INTEGER PRIMARY KEY,
            time TEXT NOT NULL,
            response_id TEXT NOT NULL,
            item INTEGER NOT NULL DEFAULT 0,
            label TEXT,
            completion TEXT,
            rating INTEGER CHECK (rating IS NULL OR rating IN (-1, 1)),
            source TEXT
        )
        """
    )
    db.execute("CREATE INDEX feedback_response ON feedback(response_id, item)")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def connect(path: Path) -> sqlite3.Connection:
    """An autocommit connection to the request log at ``path`` with its schema up to date (WAL mode)."""
    path = Path(path)
    create_private_file(path)  # every prompt and answer: readable by the server's user only (0600)
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    migrate(db)
    return db


def open_log(path: Path) -> sqlite3.Connection:
    """:func:`connect` to a request log that must already be there (``tunelab monitor``, ``tunelab feedback import``).

    Raises:
        DataError: for a missing file, or one that is not a request log (not SQLite; another database, such as the
            run registry, which is left untouched).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"request log not found: {path}", "pass the --log-db the server wrote (default runs/requests.db)")
    try:
        probe = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)  # looked at, never changed
        try:
            tables = {row[0] for row in probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            probe.close()
        if tables and "requests" not in tables:
            raise DataError(f"{path} is not a tunelab request log (it has no requests table)", "pass the --log-db the server wrote (default runs/requests.db)")
        return connect(path)
    except sqlite3.DatabaseError as error:
        raise DataError(f"{path} is not a tunelab request log: {error}", "pass the --log-db the server wrote (default runs/requests.db)") from None


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply the request log's migrations not yet applied (under the write lock); return their names."""
    return apply_migrations(db, MIGRATIONS)



def _clean(value: Any) -> Any:
    # Lone surrogates (valid in JSON strings, invalid in UTF-8) would make SQLite refuse the row.
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


class RequestLog:
    """Append-only SQLite request log written by a background thread (see the module docstring)."""

    def __init__(self, path: Path, *, max_queue: int = 100_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Migrate now so a bad path fails at start-up, not in the writer thread.
        connect(self.path).close()
        self._queue: queue.Queue[dict | threading.Event | None] = queue.Queue(maxsize=max_queue)
        self.dropped = 0
        self.written = 0
        self._closed = False
        self._stopped = False  # the writer thread has ended (closed, or killed by what it did not expect)
        self._thread = threading.Thread(target=self._write_loop, name="tunelab-request-log", daemon=True)
        self._thread.start()

    def record(self, entry: dict[str, Any]) -> None:
        """Queue one entry (keys from COLUMNS); never blocks."""
        if self._closed:
            return
        if self._stopped:  # nobody writes the queue any more: the row is lost now, and counted
            self.dropped += 1
            return
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (feedback looks its response up after this)."""
        if self._closed or self._stopped:
            return False
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop the writer."""
        if self._closed:
            return
        self._closed = True
        # Not a blocking put: a writer that died (see _write_loop's finally) left a full queue that nobody empties.
        if not self._stopped:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                pass
        self._thread.join(timeout)
        if not self._thread.is_alive():  # a row a request queued while a dead writer emptied the queue is counted too
            self.dropped += self._drain([])

    def _open(self) -> sqlite3.Connection:
        # The busy timeout every connection to the log uses: a `tunelab feedback import` holding the write lock
        # for longer than SQLite's default 5 s made the server drop rows.
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            connection.close()
            raise
        return connection

    def _write_loop(self) -> None:
        placeholders = ", ".join("?" for _ in COLUMNS)
        statement = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({placeholders})"
        # Opened at the first batch and again at each batch after a failed open: a log that cannot be opened (a disk
        # filled since start-up, a file made unwritable) drops and counts its rows instead of ending the thread, which
        # left every later entry queued, unwritten and uncounted; logging resumes by itself once the log opens.
        connection: sqlite3.Connection | None = None
        running = True
        entries: list[Any] = []
        try:
            reported: str | None = None  # the failure ("full", "open") whose one line is logged, until a batch is written
            while running:
                first = self._queue.get()
                entries = [first]
                # Take whatever else is waiting: one transaction for many rows.
                while len(entries) < 1000:
                    try:
                        entries.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if None in entries:
                    running = False
                count = sum(isinstance(entry, dict) for entry in entries)
                if count:
                    try:
                        rows = [tuple(_clean(entry.get(column)) for column in COLUMNS) for entry in entries if isinstance(entry, dict)]
                        if connection is None:
                            connection = self._open()
                        with connection:
                            connection.executemany(statement, rows)
                        self.written += count
                        reported = None
                    except Exception as error:  # noqa: BLE001 - a batch the writer cannot write must not end the logging
                        self.dropped += count
                        # Not SQLite's (a bug, a value of a type nobody expected): it ended the thread, and close() then
                        # blocked for ever on the full queue. Now one line, as for a full disk, and the rows are counted.
                        kind = ("unexpected" if not isinstance(error, sqlite3.Error) else "full" if is_disk_full(error, self.path)
                                else "write" if connection is not None else "open")
                        if kind == "write":
                            logger.exception("request log: could not write %d rows to %s", count, self.path)
                        elif kind == "unexpected":
                            if kind != reported:
                                reported = kind
                                logger.error("request log: could not write %d rows to %s (%s: %s); requests are served, rows "
                                             "like these are not logged", count, self.path, type(error).__name__, error)
                        elif kind != reported:
                            # One line while the disk stays full or the log stays unopenable (not one per batch); the
                            # log goes on by itself once it can write again.
                            reported = kind
                            if kind == "full":
                                logger.error("request log: %s; requests are served but not logged until there is space",
                                             disk_full_error(self.path).message)
                            else:
                                logger.error("request log: could not open %s (%s); requests are served but not logged until "
                                             "it opens", self.path, error)
                for entry in entries:
                    if isinstance(entry, threading.Event):
                        entry.set()
        finally:
            self._stopped = True
            if connection is not None:
                connection.close()
            if running:  # ended by what even the handler above lets through (a SystemExit): no entry may wait on it
                self.dropped += self._drain(entries)
                logger.error("request log: the writer stopped; %d rows were not written to %s, and requests are served but "
                             "not logged", self.dropped, self.path)

    def _drain(self, entries: list[Any]) -> int:
        """The rows in ``entries`` and the queue, which no writer will write (the queue emptied, the flushes woken)."""
        lost = 0
        while True:
            for entry in entries:
                lost += isinstance(entry, dict)
                if isinstance(entry, threading.Event):
                    entry.set()
            try:
                entries = [self._queue.get_nowait()]
            except queue.Empty:
                return lost


def read_requests(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of the request log, oldest first (for monitoring and tests)."""
    connection = sqlite3.connect(Path(path))
    connection.row_factory = sqlite3.Row
    try:
        query = "SELECT * FROM requests ORDER BY id" + (f" LIMIT {int(limit)}" if limit else "")
        return [dict(row) for row in connection.execute(query)]
    finally:
        connection.close()


# -- feedback ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Feedback:
    """The correct answer for one logged response: a label (classify), a completion, or a rating (chat)."""

    response_id: str
    item: int = 0
    label: str | None = None
    completion: str | None = None
    rating: int | None = None

    def __post_init__(self) -> None:
        # A label as the training data reader reads one (``data.read``): " billing " from a spreadsheet cell is the
        # run's "billing", not a new label that monitoring counts as a wrong answer and a retrain learns beside it.
        if isinstance(self.label, int) and not isinstance(self.label, bool):
            object.__setattr__(self, "label", str(self.label))  # a dataset's integer label column: 3 is "3"
        if isinstance(self.label, str):
            object.__setattr__(self, "label", self.label.strip())

    def check(self, where: str = "feedback") -> None:
        """Raises:
            DataError: naming ``where`` when the feedback says nothing or a field has a wrong value.
        """
        if not isinstance(self.response_id, str) or not self.response_id.strip():
            raise DataError(f"{where}: 'id' (the response id the server returned) is missing or empty")
        if not isinstance(self.item, int) or self.item < 0:
            raise DataError(f"{where}: 'index' must be a whole number >= 0, got {self.item!r}")
        if self.label is None and self.completion is None and self.rating is None:
            raise DataError(f"{where}: give 'label' (classify), 'completion' or 'rating' (+1 / -1)")
        if self.label is not None and (not isinstance(self.label, str) or not self.label.strip()):
            raise DataError(f"{where}: 'label' must be a non-empty string, got {self.label!r}")
        if self.completion is not None and not isinstance(self.completion, str):
            raise DataError(f"{where}: 'completion' must be a string")
        if self.rating is not None and self.rating not in (-1, 1):
            raise DataError(f"{where}: 'rating' must be 1 (thumbs up) or -1 (thumbs down), got {self.rating!r}")


def feedback_from_dict(row: dict[str, Any], where: str = "feedback") -> Feedback:
    """``{"id", "label"}``, ``{"id", "completion"}`` or ``{"id", "rating"|"thumbs": "up"/"down"}``; ``index`` optional.

    Raises:
        DataError: for a row without an id or an answer, or with unknown keys.
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: a feedback row must be a JSON object")
    known = {"id", "response_id", "index", "label", "completion", "rating", "thumbs"}
    unknown = sorted(set(row) - known)
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    rating = row.get("rating")
    thumbs = row.get("thumbs")
    if thumbs is not None:
        if thumbs not in ("up", "down"):
            raise DataError(f"{where}: 'thumbs' must be 'up' or 'down', got {thumbs!r}")
        rating = 1 if thumbs == "up" else -1
    feedback = Feedback(
        response_id=row.get("id", row.get("response_id")), item=row.get("index", 0), label=row.get("label"),
        completion=row.get("completion"), rating=rating,
    )
    feedback.check(where)
    return feedback


def request_texts(endpoint: str, prompt: str | None) -> list[str]:
    """The input text(s) a logged request asked about (classify inputs; the last user message of a chat).

    A feedback row's ``item`` indexes this list; monitoring reads the inputs through it too.
    """
    if not prompt:
        return []
    try:
        value = json.loads(prompt)
    except json.JSONDecodeError:
        return [prompt]
    if endpoint == "/v1/chat/completions" and isinstance(value, list):
        users = [m.get("content", "") for m in value if isinstance(m, dict) and m.get("role") == "user"]
        return [str(users[-1])] if users else []
    if isinstance(value, list):
        return [str(item) for item in value]
    return [str(value)]


def logged_responses(db: sqlite3.Connection, response_ids: Iterable[str]) -> dict[str, tuple[str, int]]:
    """(endpoint, inputs) of each of ``response_ids`` that the log holds: the endpoint that answered, and how many
    inputs it was asked about (at least 1: every response answered something, and a rating is about the whole answer)."""
    ids = list(dict.fromkeys(response_ids))
    found: dict[str, tuple[str, int]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        for response_id, endpoint, prompt in db.execute(
            f"SELECT response_id, endpoint, prompt FROM requests WHERE response_id IN ({marks})", chunk
        ):
            found[response_id] = (endpoint, max(1, len(request_texts(endpoint, prompt))))
    return found


def logged_inputs(db: sqlite3.Connection, response_ids: Iterable[str]) -> dict[str, int]:
    """How many inputs each of ``response_ids`` that the log holds was asked about (see :func:`logged_responses`)."""
    return {response_id: count for response_id, (_, count) in logged_responses(db, response_ids).items()}


class FeedbackItemError(DataError):
    """Feedback about an input a logged response does not have (``index`` past its inputs)."""


class FeedbackKindError(DataError):
    """Feedback a logged response cannot take: a 'label' for an answer that is not a classification."""


def add_feedback(path: Path, items: list[Feedback], *, source: str, require_logged: bool = True) -> list[str]:
    """Store feedback rows in one transaction; return their ids (``fb-...``).

    Raises:
        DataError: when ``require_logged`` and some response id is not in the log (nothing is stored then);
            FeedbackItemError for an index past a response's inputs, FeedbackKindError for a label on an answer
            that is not a classification (nothing is stored either).
    """
    db = connect(Path(path))
    try:
        logged = logged_responses(db, (item.response_id for item in items))
        # A label corrects a classify answer: on a chat or completion answer, a retrain would learn that message as a
        # classify example of the label. Checked whenever the log holds the response, --allow-unknown or not.
        other = next((item for item in items if item.label is not None and logged.get(item.response_id, (CLASSIFY,))[0] != CLASSIFY), None)
        if other is not None:
            raise FeedbackKindError(
                f"response {other.response_id} answered {logged[other.response_id][0]}: a 'label' corrects a {CLASSIFY} answer",
                "give a chat or completion answer a 'completion' or a 'rating'",
            )
        if require_logged:
            inputs = {response_id: count for response_id, (_, count) in logged.items()}
            missing = sorted({item.response_id for item in items} - set(inputs))
            if missing:
                listed = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
                raise DataError(
                    f"no logged response with id {listed} in {path}",
                    "send the id the server returned (the response's 'id' field), to the server that logged it",
                )
            # Stored, such a row would be skipped by monitoring and retraining without a word: refused here instead.
            beyond = next((item for item in items if item.item >= inputs[item.response_id]), None)
            if beyond is not None:
                count = inputs[beyond.response_id]
                raise FeedbackItemError(
                    f"response {beyond.response_id} has {count} input{'s' if count != 1 else ''}: no index {beyond.item}",
                    "index counts a multi-input request's inputs from 0",
                )
        now = _now()
        ids = [f"fb-{uuid.uuid4().hex}" for _ in items]
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO feedback (time, response_id, item, label, completion, rating, source) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(now, i.response_id, i.item, _clean(i.label), _clean(i.completion), i.rating, source) for i in items],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return ids
    finally:
        db.close()


def read_feedback_file(path: Path) -> list[Feedback]:
    """Feedback rows of a JSONL or CSV file (columns id, label / completion / rating / thumbs, optional index).

    Raises:
        DataError: naming the file and line of the first bad row.
    """
    import io

    from tunelab.data.formats import RecordError, decode_text, iter_csv

    path = Path(path)
    if not path.is_file():
        raise DataError(f"feedback file not found: {path}")
    items: list[Feedback] = []
    if path.suffix.lower() == ".csv":
        # The training data's CSV reader: its decoding (a BOM dropped, a file not in UTF-8 one error), Excel's 'sep=;'
        # line or a delimiter sniffed from the header; column names whatever their case and surrounding spaces.
        for source, row in iter_csv(path):
            if isinstance(row, RecordError):
                raise DataError(str(row))
            clean = {str(key).strip().casefold(): value for key, value in row.items() if value not in (None, "")}
            if "index" in clean:
                try:
                    clean["index"] = int(clean["index"])
                except ValueError:
                    raise DataError(f"{source}: 'index' is not a number") from None
            if "rating" in clean:
                try:
                    clean["rating"] = int(clean["rating"])
                except ValueError:
                    raise DataError(f"{source}: 'rating' is not 1 or -1") from None
            items.append(feedback_from_dict(clean, source))
    else:
        # The training data's decoding: a BOM (a spreadsheet's "CSV UTF-8" export) dropped, a file not in UTF-8 one line.
        handle = io.StringIO(decode_text(path, path.read_bytes()), newline="")
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line}: not valid JSON: {error.msg}") from None
            items.append(feedback_from_dict(row, f"{path}:{line}"))
    if not items:
        raise DataError(f"{path} holds no feedback rows")
    return items


def import_feedback(log_path: Path, file: Path, *, require_logged: bool = True) -> dict[str, Any]:
    """``tunelab feedback import FILE``: store every row of ``file`` (all or nothing); return counts.

    Raises:
        DataError: for a bad row, or a response id the log does not hold.
    """
    open_log(log_path).close()
    items = read_feedback_file(file)
    ids = add_feedback(log_path, items, source=f"import:{Path(file).name}", require_logged=require_logged)
    return {"imported": len(ids), "labels": sum(i.label is not None for i in items), "file": str(file), "log": str(log_path)}
