"""The request cache: one SQLite row per (endpoint, model, request), so a rerun pays nothing.

The key is a hash of the base URL, the model name and the request body exactly as sent (messages,
max_tokens, temperature, top_p, seed): any change to the prompt or the decoding is a new request.
Only answers that came back are stored; a failed request is asked again next time.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.paths import cache_dir, create_private_file

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    base_url TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    text TEXT NOT NULL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    latency_s REAL,
    finish_reason TEXT,
    created_at REAL NOT NULL
)
"""


def default_cache_path() -> Path:
    """$TUNELAB_REMOTE_CACHE, else ``<user cache>/remote/requests.db``: shared by every run, so variants of a run pay once."""
    if os.environ.get("TUNELAB_REMOTE_CACHE"):
        return Path(os.environ["TUNELAB_REMOTE_CACHE"]).expanduser()
    return cache_dir() / "remote" / "requests.db"


def request_key(base_url: str, model: str, request: dict[str, Any]) -> str:
    body = json.dumps({"base_url": base_url.rstrip("/"), "model": model, "request": request}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedResponse:
    text: str
    input_tokens: int | None
    output_tokens: int | None
    latency_s: float | None
    finish_reason: str | None


class RequestCache:
    """A thread-safe SQLite cache of answers (WAL mode: several processes may share the file)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        if self.path.is_dir():
            # Never "delete it" (the damaged file's fix): a folder here is usually a cache folder full of other things.
            raise TunelabError(f"{self.path} is a folder, not the remote request cache (a file)",
                               f"point $TUNELAB_REMOTE_CACHE at a file, e.g. {self.path / 'requests.db'}")
        create_private_file(self.path)  # prompts and answers: readable by their owner only, like the request log
        self._lock = threading.Lock()
        try:
            self._connection = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
            with self._lock:
                self._connection.execute("PRAGMA journal_mode=WAL")
                self._connection.execute(SCHEMA)
                self._connection.commit()
        except sqlite3.DatabaseError as error:
            raise TunelabError(
                f"cannot use {self.path} as the remote request cache: {error}",
                "delete it (it only saves asking again), or point $TUNELAB_REMOTE_CACHE at another file",
            ) from None

    def get(self, key: str) -> CachedResponse | None:
        with self._lock:
            row = self._connection.execute(
                "SELECT text, input_tokens, output_tokens, latency_s, finish_reason FROM responses WHERE key = ?", (key,)
            ).fetchone()
        return CachedResponse(*row) if row else None

    def put(self, key: str, base_url: str, model: str, request: dict[str, Any], response: CachedResponse) -> None:
        with self._lock:
            self._connection.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, base_url, model, json.dumps(request, ensure_ascii=False), response.text, response.input_tokens,
                 response.output_tokens, response.latency_s, response.finish_reason, time.time()),
            )
            self._connection.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._connection.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._connection.close()
