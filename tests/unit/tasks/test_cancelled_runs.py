"""A run the user stops (Ctrl-C / SIGINT, SIGTERM: what `kill` and the UI's Cancel send) is `cancelled` in the registry,
with the signal as its reason: `tunelab runs` tells it from a run that broke (`failed`) or was killed (`interrupted`)
(its resume: tests/unit/tasks/test_pipeline.py). Real `tunelab train` / `tunelab run` processes on the tiny model."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest

from tunelab.registry.store import Registry
from tunelab.runs import RunFolder
from tunelab.ui.jobs import start_process


def _project(tmp_path, tiny_model_dir, max_steps):
    rows = [{"text": f"apple pear {i}" if i % 2 else f"billing card {i}", "label": "AB"[i % 2]} for i in range(48)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(
        f"task: classify\nmodel: {tiny_model_dir}\nname: stopped\ndata:\n  train: {tmp_path / 'train.jsonl'}\n  max_length: 64\n"
        f"train:\n  max_steps: {max_steps}\n  batch_size: 8\n  output_dir: {tmp_path / 'runs'}\n"
        "eval:\n  baselines: []\n  bootstrap_samples: 100\n"
    )
    return config


def _stop_while_training(command, tmp_path, signum):
    """Start ``command`` as the UI starts a run, send ``signum`` once it trains; its exit code and output."""
    folder = RunFolder(tmp_path / "runs" / "stopped")
    log = tmp_path / "log.txt"
    with log.open("wb") as out:
        process = start_process(command, out, {**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            deadline = time.monotonic() + 300
            while not (folder.metrics.is_file() and folder.metrics.read_text().strip()):
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            process.send_signal(signum)
            code = process.wait(120)
        finally:
            if process.poll() is None:
                process.kill()
    return code, log.read_text()


@pytest.mark.parametrize(("command", "signum", "reason", "code"), [
    ("train", signal.SIGINT, "cancelled by the user (Ctrl-C / SIGINT)", 130),
    ("train", signal.SIGTERM, "cancelled by SIGTERM", 143),
    ("run", signal.SIGTERM, "cancelled by SIGTERM", 143),
], ids=["train-sigint", "train-sigterm", "run-sigterm"])
def test_a_run_the_user_stops_is_cancelled_not_failed(tmp_path, tiny_model_dir, command, signum, reason, code):
    config = _project(tmp_path, tiny_model_dir, max_steps=4000)
    cli = [sys.executable, "-m", "tunelab.cli.main"]
    exit_code, output = _stop_while_training([*cli, command, str(config)], tmp_path, signum)
    assert exit_code == code, output[-3000:]
    # Ctrl-C said nothing at all (typer ends a KeyboardInterrupt quietly); SIGTERM said "cancelled (SIGTERM)".
    assert f"cancelled ({'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'})" in output, output[-3000:]
    registry = Registry(tmp_path / "runs" / "registry.db")
    record = registry.get_run("stopped")
    assert record.status == "cancelled", (record.status, record.error, output[-3000:])
    assert record.error.startswith(reason) and f"tunelab {command} --resume RUN" in record.error, record.error
    assert [r.name for r in registry.list_runs(status="cancelled")] == ["stopped"] and not registry.list_runs(status="failed")
    listed = start_process([*cli, "runs", "--status", "cancelled", "--registry", str(registry.path)], (tmp_path / "runs.txt").open("wb"), dict(os.environ))
    assert listed.wait(120) == 0 and "stopped" in (tmp_path / "runs.txt").read_text()
