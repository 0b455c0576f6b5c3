"""The request log: every request and its response, appended to a SQLite table for monitoring.

Handlers never wait for the disk: ``record`` puts the entry on a bounded in-memory queue and a
background thread writes batches of them in one transaction (WAL mode, so monitoring can read while
the server writes). If the disk cannot keep up and the queue is full, entries are dropped and
counted in ``dropped`` rather than slowing requests down. ``close`` flushes everything queued.

Table ``requests`` (one row per HTTP request)::

    id INTEGER PRIMARY KEY, time TEXT (UTC ISO-8601, when the request arrived), endpoint TEXT,
    model TEXT, prompt TEXT, output TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
    latency_ms REAL, status INTEGER (HTTP status), error TEXT, stream INTEGER (0/1)
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Any

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
)

SCHEMA = """
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
);
CREATE INDEX IF NOT EXISTS requests_time ON requests(time);
"""


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
        # Create the table now so a bad path fails at start-up, not in the writer thread.
        connection = sqlite3.connect(self.path)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)
            connection.commit()
        finally:
            connection.close()
        self._queue: queue.Queue[dict | None] = queue.Queue(maxsize=max_queue)
        self.dropped = 0
        self.written = 0
        self._closed = False
        self._thread = threading.Thread(target=self._write_loop, name="tunelab-request-log", daemon=True)
        self._thread.start()

    def record(self, entry: dict[str, Any]) -> None:
        """Queue one entry (keys from COLUMNS); never blocks."""
        if self._closed:
            return
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop the writer."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    def _write_loop(self) -> None:
        connection = sqlite3.connect(self.path, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        placeholders = ", ".join("?" for _ in COLUMNS)
        statement = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({placeholders})"
        try:
            running = True
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
                rows = [tuple(_clean(entry.get(column)) for column in COLUMNS) for entry in entries if entry is not None]
                if not rows:
                    continue
                try:
                    with connection:
                        connection.executemany(statement, rows)
                    self.written += len(rows)
                except sqlite3.Error:
                    logger.exception("request log: could not write %d rows to %s", len(rows), self.path)
                    self.dropped += len(rows)
        finally:
            connection.close()


def read_requests(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of the request log, oldest first (for monitoring and tests)."""
    connection = sqlite3.connect(Path(path))
    connection.row_factory = sqlite3.Row
    try:
        query = "SELECT * FROM requests ORDER BY id" + (f" LIMIT {int(limit)}" if limit else "")
        return [dict(row) for row in connection.execute(query)]
    finally:
        connection.close()
