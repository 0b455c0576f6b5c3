"""A real `tunelab distill` process stopped (Ctrl-C / SIGINT, SIGTERM) while a slow loopback teacher answers, then resumed."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest
from fake_provider import FakeProvider

from tunelab.remote.cache import RequestCache
from tunelab.tasks.distill import read_distill_file
from tunelab.ui.jobs import start_process

TEACHER = "gpt-4o-mini-2024-07-18"


@pytest.fixture
def slow_teacher():
    provider = FakeProvider()
    provider.chat_delay_s = 0.3
    url = provider.start()
    try:
        yield provider, url
    finally:
        provider.stop()


@pytest.mark.parametrize(("signum", "said", "code"), [(signal.SIGINT, "cancelled (Ctrl-C)", 130), (signal.SIGTERM, "cancelled (SIGTERM)", 143)],
                         ids=["sigint", "sigterm"])
def test_a_distillation_stopped_while_the_teacher_answers_says_how_to_resume_and_resumes(slow_teacher, tiny_model_dir, tmp_path, signum,
                                                                                        said, code):
    # Ctrl-C said nothing (an empty line, exit 130) and SIGTERM ended Python at once: `distill` lacked the cancel handling
    # of `run` and `train`, and nobody was told that `tunelab distill --resume RUN` continues the run.
    provider, url = slow_teacher
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"What is {i} plus one?", "completion": f"It is {i + 1}."}) + "\n" for i in range(24)))
    config = tmp_path / "distill.yaml"
    config.write_text(
        f"task: sft\nname: stopped\nmodel: {tiny_model_dir}\ndata: {{train: {train}, test_size: 0.2, validation_size: 0.1, max_length: 64}}\n"
        f"train: {{max_steps: 2, batch_size: 4, output_dir: {tmp_path / 'runs'}, threads: 1}}\n"
        "eval: {max_new_tokens: 6, baselines: [base], bootstrap_samples: 100}\n"
        f"distill: {{teacher: {{base_url: '{url}', name: {TEACHER}, max_retries: 0, timeout_s: 30}}, concurrency: 2}}\n"
    )
    run = tmp_path / "runs" / "stopped"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_REMOTE_CACHE": str(tmp_path / "requests.db")}
    log = tmp_path / "log.txt"
    with log.open("wb") as out:
        process = start_process([sys.executable, "-m", "tunelab.cli.main", "distill", str(config), "--no-calibrate"], out, env)
        try:
            deadline = time.monotonic() + 300
            while len(read_distill_file(run / "distill.jsonl")) < 3:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.1)
            process.send_signal(signum)
            exit_code = process.wait(120)
        finally:
            if process.poll() is None:
                process.kill()
    output = log.read_text()
    assert exit_code == code, output[-3000:]
    assert said in output and f"tunelab distill --resume {run}" in " ".join(output.split()), output[-3000:]
    text = (run / "distill.jsonl").read_text()
    assert text.endswith("\n") and all(json.loads(line)["status"] == "ok" for line in text.splitlines())  # nothing half-written
    answered = len(text.splitlines())

    # An answer in flight at the signal may have been paid for and kept in the request cache without reaching
    # distill.jsonl: the resume reads it from the cache instead of paying for it again.
    cache = RequestCache(tmp_path / "requests.db")
    paid = len(cache)
    cache.close()
    assert answered <= paid <= answered + 2  # at most the two in flight (concurrency 2)
    arrived = provider.chats_arrived
    provider.chat_delay_s = 0.0
    resumed = start_process([sys.executable, "-m", "tunelab.cli.main", "distill", "--resume", str(run), "--no-calibrate"],
                            (tmp_path / "resume.txt").open("wb"), env)
    assert resumed.wait(300) == 0, (tmp_path / "resume.txt").read_text()[-3000:]
    lines = read_distill_file(run / "distill.jsonl")
    test_prompts = len((run / "distill" / "test.jsonl").read_text().splitlines())
    # Only what was never paid for is asked again (the answered ones come from distill.jsonl, the one in flight from the
    # cache), then the teacher's test prompts.
    assert provider.chats_arrived - arrived == len(lines) - paid + test_prompts


def test_a_distillation_cancelled_while_the_student_trains_names_distills_resume_in_its_row(slow_teacher, tiny_model_dir, tmp_path, monkeypatch):
    # The row said "`tunelab run --resume RUN` continues it": that finishes the student but never compares it with the
    # teacher (no distill report), which only `tunelab distill --resume RUN` does.
    from tunelab.config import parse_config
    from tunelab.registry.store import Registry
    from tunelab.tasks.distill import run_distill

    provider, url = slow_teacher
    provider.chat_delay_s = 0.0
    monkeypatch.setenv("TUNELAB_REMOTE_CACHE", str(tmp_path / "requests.db"))
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"What is {i} plus one?", "completion": f"It is {i + 1}."}) + "\n" for i in range(14)))
    config = parse_config({
        "task": "sft", "name": "stopped", "model": str(tiny_model_dir),
        "data": {"train": str(train), "test_size": 0.3, "validation_size": 0.15, "max_length": 64},
        "train": {"max_steps": 50, "batch_size": 4, "output_dir": str(tmp_path / "runs"), "threads": 1},
        "eval": {"max_new_tokens": 6, "baselines": [], "bootstrap_samples": 100},
        "distill": {"teacher": {"base_url": url, "name": TEACHER, "max_retries": 0, "timeout_s": 30}},
    })

    def stop(*args):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_distill(config, calibrate=False, train_progress=stop)
    record = Registry(tmp_path / "runs" / "registry.db").get_run("stopped")
    assert record.status == "cancelled" and "`tunelab distill --resume RUN`" in record.error, record.error
