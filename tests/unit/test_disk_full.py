"""A full disk, on a small tmpfs: one line ("disk full while writing X (need about N MB, M free)"), nothing
half-written, the registry row says so, and the run resumes once there is space.

Mounting needs root and a system that allows it (CI runs as root on Debian); elsewhere these tests
are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tunelab.paths import DiskFullError
from tunelab.registry.store import Registry

WORDS = {"A": ["apple", "pear", "plum", "fruit"], "B": ["billing", "account", "card", "refund"]}


class SmallDisk:
    def __init__(self, path: Path) -> None:
        self.path = path

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield SmallDisk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _config(data_dir: Path, output_dir: Path, registry: Path, model_dir: Path, **train):
    from tunelab.config import parse_config

    rows = [{"text": f"{WORDS['AB'[i % 2]][i % 4]} {WORDS['AB'[i % 2]][(i // 2) % 4]} number {i}", "label": "AB"[i % 2]} for i in range(40)]
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    settings = {"method": "full", "lr": 1e-3, "max_steps": 6, "batch_size": 4, "eval_every": 2, "precision": "fp32",
                "output_dir": str(output_dir), **train}  # fmt: skip
    return parse_config({
        "task": "classify", "model": str(model_dir), "name": "full-disk", "registry": str(registry),
        "data": {"train": str(data_dir / "train.jsonl"), "test_size": 0.25, "validation_size": 0.2, "max_length": 64},
        "train": settings, "eval": {"baselines": ["base"], "bootstrap_samples": 100},
    })  # fmt: skip


def _tunelab(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """The real command line's entry point in this process: (exit code, stdout + stderr)."""
    import sys

    from tunelab.cli import main as cli

    monkeypatch.setattr(sys, "argv", ["tunelab", *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out + captured.err


def _assert_one_line(error: DiskFullError, where: str) -> None:
    text = str(error)
    assert text.startswith("disk full while writing ") and where in error.message, text
    assert "need about" in text and "MB free" in text and "\n" not in text


def test_a_checkpoint_on_a_full_disk_is_one_line_the_row_failed_and_the_run_resumes(small_disk, tmp_path, tiny_model_dir):
    """It was `RuntimeError ... inline_container.cc` with a traceback (full fine-tuning: ~1.3 MB a checkpoint, 2 MB of disk)."""
    from tunelab.tasks.pipeline import run_pipeline

    config = _config(tmp_path / "data", small_disk.path / "runs", small_disk.path / "runs" / "registry.db", tiny_model_dir)
    with pytest.raises(DiskFullError) as raised:
        run_pipeline(config, calibrate=False)
    _assert_one_line(raised.value, "checkpoints")
    run = small_disk.path / "runs" / "full-disk"
    # Nothing half-written: no temporary folder, every checkpoint there is complete.
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert all((p / "state.json").is_file() for p in (run / "checkpoints").iterdir())
    record = Registry(small_disk.path / "runs" / "registry.db").get_run("full-disk")
    assert record.status == "failed" and record.error.startswith("disk full while writing")
    small_disk.resize("64m")  # space freed
    outcome = run_pipeline(resume=run, calibrate=False)
    assert outcome.tuned_metrics is not None
    assert Registry(small_disk.path / "runs" / "registry.db").get_run("full-disk").status == "finished"


def test_a_full_disk_under_the_registry_is_one_line_and_the_run_resumes(small_disk, tmp_path, tiny_model_dir):
    """After training the row update failed with `sqlite3.OperationalError: disk I/O error`, the row stuck at running."""
    from tunelab.tasks.pipeline import run_pipeline

    registry = small_disk.path / "registry.db"
    config = _config(tmp_path / "data", tmp_path / "runs", registry, tiny_model_dir, method="lora")
    filler = small_disk.path / "filler"

    def fill_after_training(step: str, status: str, details: dict) -> None:
        if (step, status) == ("train", "done"):
            with filler.open("wb") as handle:  # everything that is left
                try:
                    while True:
                        handle.write(b"\0" * 65536)
                        handle.flush()
                except OSError:
                    pass

    with pytest.raises(DiskFullError) as raised:
        run_pipeline(config, on_event=fill_after_training, calibrate=False)
    _assert_one_line(raised.value, "registry.db")
    filler.unlink()
    # The row could not be written when it failed; the next reader sees a run whose process is gone.
    record = Registry(registry).get_run("full-disk")
    assert record.status in ("failed", "interrupted") and record.error
    outcome = run_pipeline(resume=tmp_path / "runs" / "full-disk", calibrate=False)
    assert outcome.tuned_metrics is not None and Registry(registry).get_run("full-disk").status == "finished"


def test_exports_to_a_full_disk_are_one_line_and_leave_nothing(small_disk, tmp_path, tiny_model_dir, monkeypatch, capsys):
    """`export --merge` and the GGUF export had tracebacks; a killed GGUF export left its .tmp file forever."""
    from tunelab.tasks.pipeline import run_pipeline

    config = _config(tmp_path / "data", tmp_path / "runs", tmp_path / "registry.db", tiny_model_dir, method="lora", max_steps=2)
    run = run_pipeline(config, calibrate=False).run_dir
    small_disk.resize("100k")
    stale = small_disk.path / ".model.gguf.999999999.x1.tmp"  # as a killed export left it (no such process)
    stale.write_bytes(b"\0" * 20_000)
    for args, target in (
        (["export", str(run), str(small_disk.path / "model.gguf")], "model.gguf"),  # removes the stale one first
        (["export", str(run), str(small_disk.path / "merged"), "--merge"], "merged"),
    ):
        code, output = _tunelab(args, monkeypatch, capsys)
        assert code == 2 and "Traceback" not in output, output
        assert "disk full while writing" in output and target in output, output
        assert not (small_disk.path / target).exists()
        assert not [p.name for p in small_disk.path.iterdir() if p.name.startswith(".")]  # no temporary left
    assert not stale.exists()


def test_a_damaged_adapter_is_not_exported(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """It was copied out with exit code 0."""
    from tunelab.tasks.pipeline import run_pipeline

    config = _config(tmp_path / "data", tmp_path / "runs", tmp_path / "registry.db", tiny_model_dir, method="lora", max_steps=2)
    run = run_pipeline(config, calibrate=False).run_dir
    weights = run / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    for extra in ([], ["--merge"], ["--format", "gguf"]):
        out = tmp_path / f"out-{len(extra)}" if extra != ["--format", "gguf"] else tmp_path / "out.gguf"
        code, output = _tunelab(["export", str(run), str(out), *extra], monkeypatch, capsys)
        assert code == 2 and "adapter_model.safetensors is damaged" in output, (extra, output)
        assert not out.exists()


def test_an_evaluation_or_a_report_written_to_a_full_disk_is_one_line_naming_the_file(small_disk, tmp_path, tiny_model_dir, monkeypatch, capsys):
    """`tunelab eval --out` and `tunelab report` were an `OSError: [Errno 28] No space left on device` traceback that
    named no file, after the evaluation had run."""
    from tunelab.tasks.pipeline import run_pipeline

    config = _config(tmp_path / "data", tmp_path / "runs", tmp_path / "registry.db", tiny_model_dir, method="lora", max_steps=2)
    run = run_pipeline(config, calibrate=False).run_dir
    small_disk.resize("16m")
    on_small_disk = small_disk.path / "run"
    shutil.copytree(run, on_small_disk, ignore=shutil.ignore_patterns("checkpoints", "report.*", "*.png"))
    with (small_disk.path / "filler").open("wb", buffering=0) as handle:  # everything that is left
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    out = small_disk.path / "eval.json"
    comparison = on_small_disk / "eval" / "comparison.json"  # the report's first write
    before = comparison.read_bytes()
    for args, target in (
        (["eval", "--data", str(tmp_path / "data" / "train.jsonl"), "--task", "classify", "--adapter", str(run), "--limit", "8",
          "--out", str(out)], out),
        (["report", str(on_small_disk)], comparison),
    ):  # fmt: skip
        code, output = _tunelab(args, monkeypatch, capsys)
        assert code == 2 and "Traceback" not in output, output
        line = next(line for line in output.splitlines() if line.startswith("error: "))
        assert line.startswith("error: disk full while writing ") and str(target) in line, output
        assert not [p.name for p in target.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    assert not out.exists() and comparison.read_bytes() == before and not (on_small_disk / "report.md").exists()


def test_a_request_log_on_a_full_disk_is_one_line_until_it_writes_again(small_disk, caplog):
    """The server logged a traceback for every batch it could not write, naming no full disk."""
    import logging

    from tunelab.serve.request_log import RequestLog, read_requests

    path = small_disk.path / "requests.db"
    log = RequestLog(path)
    entry = {"time": "t", "endpoint": "/v1/classify", "prompt": "x" * 20_000, "status": 200, "stream": 0}
    log.record({**entry, "prompt": "before"})
    assert log.flush()
    filler = small_disk.path / "filler"
    with filler.open("wb", buffering=0) as handle:  # everything that is left
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    with caplog.at_level(logging.INFO, logger="tunelab.serve"):
        for _ in range(3):
            log.record(entry)
            assert log.flush()
        filler.unlink()
        log.record({**entry, "prompt": "after"})
        log.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None, [r.getMessage() for r in caplog.records]
    line = errors[0].getMessage()
    assert line.startswith("request log: disk full while writing ") and str(path) in line and "\n" not in line, line
    assert log.dropped == 3 and [row["prompt"] for row in read_requests(path)] == ["before", "after"]


@pytest.mark.parametrize("damaged", ["adapter_config.json", "adapter_model.safetensors"])
def test_a_damaged_adapter_loaded_to_answer_is_one_line_naming_it(damaged, tmp_path, tiny_model_dir, monkeypatch, capsys):
    """`tunelab eval --adapter RUN` (and whatever loads a run to answer) was a JSONDecodeError or SafetensorError
    traceback naming no file."""
    from tunelab.tasks.pipeline import run_pipeline

    config = _config(tmp_path / "data", tmp_path / "runs", tmp_path / "registry.db", tiny_model_dir, method="lora", max_steps=2)
    run = run_pipeline(config, calibrate=False).run_dir
    file = run / "adapter" / damaged
    file.write_bytes(file.read_bytes()[:40])
    code, output = _tunelab(["eval", "--data", str(tmp_path / "data" / "train.jsonl"), "--task", "classify", "--adapter", str(run),
                             "--limit", "4"], monkeypatch, capsys)  # fmt: skip
    assert code == 2 and "Traceback" not in output, output
    line = next(line for line in output.splitlines() if line.startswith("error: "))
    assert line.startswith(f"error: {file} is damaged"), output
