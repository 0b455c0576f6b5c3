"""The request log's writer thread: it survives a log it cannot open, and waits for a lock as long as every
other connection to the log does."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

import pytest

from tunelab.serve.request_log import RequestLog, read_requests

ENTRY = {"time": "t", "endpoint": "/v1/classify", "status": 200, "stream": 0}
WRITER = "tunelab-request-log"  # the writer thread's name


def _fail_writer_connects(monkeypatch, error: str) -> threading.Event:
    """Make the writer thread's opens of the log raise ``error`` until the returned event is set; other connects are real."""
    real = sqlite3.connect
    fixed = threading.Event()

    def connect(*args, **kwargs):
        if threading.current_thread().name == WRITER and not fixed.is_set():
            raise sqlite3.OperationalError(error)
        return real(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    return fixed


@pytest.mark.parametrize(
    ("error", "line"),
    [("unable to open database file", "request log: could not open "), ("database or disk is full", "request log: disk full while writing ")],
)
def test_a_log_the_writer_cannot_open_is_one_line_and_dropped_rows_until_it_opens(error, line, tmp_path, monkeypatch, caplog):
    """The writer thread died with a traceback when it could not open the log: every later entry was queued and never
    written, `dropped` stayed 0 and the server went on as if it logged."""
    path = tmp_path / "requests.db"
    fixed = _fail_writer_connects(monkeypatch, error)
    with caplog.at_level(logging.INFO, logger="tunelab.serve"):
        log = RequestLog(path)
        for prompt in ("lost 1", "lost 2"):
            log.record({**ENTRY, "prompt": prompt})
            assert log.flush()
        fixed.set()  # space again, say: the writer opens the log at its next batch
        log.record({**ENTRY, "prompt": "kept"})
        assert log.flush()
        log.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None, [r.getMessage() for r in caplog.records]
    message = errors[0].getMessage()
    assert message.startswith(line) and str(path) in message and "\n" not in message, message
    assert log.dropped == 2 and log.written == 1
    assert [row["prompt"] for row in read_requests(path)] == ["kept"]


def test_the_writer_waits_for_a_lock_as_long_as_the_other_connections(tmp_path):
    """The writer used SQLite's 5 s default, not BUSY_TIMEOUT_S: a `tunelab feedback import` holding the log's write
    lock for longer made the server drop rows."""
    path = tmp_path / "requests.db"
    log = RequestLog(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the write lock, as a long import holds it
    try:
        log.record({**ENTRY, "prompt": "waited"})
        while not log._queue.empty():  # the writer has taken the entry: its wait for the lock starts now
            time.sleep(0.01)
        time.sleep(6.0)  # past SQLite's default 5 s, well within BUSY_TIMEOUT_S
    finally:
        other.execute("COMMIT")
        other.close()
    assert log.flush(timeout=60)
    log.close()
    assert log.dropped == 0 and [row["prompt"] for row in read_requests(path)] == ["waited"]


# SystemExit: what even a catch-all lets through ends the thread, and pytest names the thread's exception
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("error", [RuntimeError("a bug in a row"), SystemExit(3)])
def test_close_returns_and_counts_the_rows_when_the_writer_meets_an_unexpected_error(error, tmp_path, monkeypatch, caplog):
    """A writer thread that died of anything but an SQLite error left its queue to fill: close() then blocked for ever
    on the full queue (the server never stopped), and the queued rows were counted nowhere."""
    import tunelab.serve.request_log as request_log

    def broken(value):
        raise error

    monkeypatch.setattr(request_log, "_clean", broken)
    path = tmp_path / "requests.db"
    with caplog.at_level(logging.INFO, logger="tunelab.serve"):
        log = RequestLog(path, max_queue=2)
        log.record({**ENTRY, "prompt": "first"})
        log.flush()  # the first batch has met the error
        for number in range(3):  # more than the queue holds
            log.record({**ENTRY, "prompt": f"later {number}"})
        closing = threading.Thread(target=log.close, daemon=True)
        closing.start()
        closing.join(20)  # a guard against the hang, not a timing: close waits at most its own timeout
    assert not closing.is_alive(), "close() blocked"
    assert log.written == 0 and log.dropped == 4
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and str(path) in errors[0], errors
    assert read_requests(path) == []
