"""Ctrl-C (or SIGTERM: `kill`, the UI's second Cancel) while a batch of remote requests is in flight stops the run at once.

The batch waited for every request in flight (and, in its pool, for every one queued), retries and timeouts included,
before the interrupt reached the pipeline: the UI's Cancel of a cloud run sat out its 30 s wait, and a second Cancel
(SIGTERM) then killed the process, which left the run `interrupted` instead of `cancelled`. A real `tunelab run` process
against a provider on the loopback that takes a minute per answer.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
from contextlib import closing

import pytest
from fake_provider import FakeProvider

from tunelab.registry.store import Registry
from tunelab.ui.jobs import start_process

BASE_MODEL = "gpt-4o-mini-2024-07-18"
SLOW_S = 60.0  # each answer; the run must be over long before the first one would come back


@pytest.fixture
def slow_provider():
    fake = FakeProvider()
    fake.chat_delay_s = SLOW_S
    fake.url = fake.start()
    yield fake
    fake.stop()


def _cloud_project(tmp_path, provider, model):
    rows = [{"text": f"my bill number {i} is wrong" if i % 2 else f"the app crashes at step {i}", "label": ["technical", "billing"][i % 2]}
            for i in range(20)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = tmp_path / "cloud.yaml"
    config.write_text(json.dumps({
        "task": "classify", "name": "cloud",
        "model": {"name": str(model), "endpoint": {"base_url": provider.url, "name": BASE_MODEL, "concurrency": 2, "timeout_s": 600}},
        "data": {"train": str(tmp_path / "train.jsonl"), "test_size": 0.3, "validation_size": 0.0},
        "train": {"backend": "openai", "epochs": 1, "output_dir": str(tmp_path / "runs")},
        "eval": {"baselines": ["base"], "bootstrap_samples": 100},
    }))  # JSON is YAML
    return config


def _status(registry, name: str) -> str | None:
    """The run's status as its row says now, read only (a Registry settles a row whose process it finds gone)."""
    with closing(sqlite3.connect(f"file:{registry}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT status FROM runs WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None


@pytest.mark.parametrize(("signum", "second_cancel", "reason", "codes"), [
    (signal.SIGINT, False, "cancelled by the user (Ctrl-C / SIGINT)", {130}),
    (signal.SIGTERM, False, "cancelled by SIGTERM", {143}),
    # The UI's second Cancel: SIGTERM a second after the first one's SIGINT ends the process at once (by design); the run
    # was cancelled by then, where it used to be waiting for its requests and be killed as it waited (`interrupted`).
    (signal.SIGINT, True, "cancelled by the user (Ctrl-C / SIGINT)", {130, -signal.SIGTERM}),
], ids=["sigint", "sigterm", "ui-second-cancel"])
def test_an_interrupt_during_a_slow_remote_batch_cancels_the_run_at_once(slow_provider, tmp_path, tiny_model_dir, signum, second_cancel,
                                                                         reason, codes):
    config = _cloud_project(tmp_path, slow_provider, tiny_model_dir)
    log = tmp_path / "log.txt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TUNELAB_CLOUD_POLL_S": "0.01"}
    with log.open("wb") as out:
        process = start_process([sys.executable, "-m", "tunelab.cli.main", "run", str(config)], out, env)  # as the UI starts it
        try:
            deadline = time.monotonic() + 300
            while slow_provider.chats_arrived < 2:  # the base model's evaluation: two requests in flight, the rest queued
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.1)
            time.sleep(0.5)
            process.send_signal(signum)
            sent = time.monotonic()
            if second_cancel:
                # The second Cancel comes once the first has cancelled the run (as a person clicks again after a
                # moment), not after a fixed second: that bet on how soon a busy machine commits the row (an fsync).
                # A run still waiting for its requests keeps saying running, the SIGTERM kills it: `interrupted`.
                while _status(tmp_path / "runs" / "registry.db", "cloud") != "cancelled" and process.poll() is None:
                    if time.monotonic() - sent > SLOW_S / 3:
                        break
                    time.sleep(0.05)
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            try:
                exit_code = process.wait(SLOW_S / 2)
            except Exception:
                pytest.fail(f"the run still waited for its requests {SLOW_S / 2:.0f} s after {signum.name}:\n{log.read_text()[-3000:]}")
            waited = time.monotonic() - sent
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = log.read_text()
    assert exit_code in codes, output[-3000:]
    assert waited < SLOW_S / 3, waited  # nowhere near an answer's minute: the requests in flight were abandoned
    assert slow_provider.chats_arrived == 2  # the queued requests were never sent
    record = Registry(tmp_path / "runs" / "registry.db").get_run("cloud")
    assert record.status == "cancelled" and record.error.startswith(reason), (record.status, record.error, output[-3000:])
