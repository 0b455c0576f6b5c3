"""The experiment tracker gets the evaluation and the verdict; a missing tracker stops the run; the CLI's one progress display."""

from __future__ import annotations

import importlib.util
import io
import json

import pytest

from tunelab.config import parse_config
from tunelab.errors import ConfigError
from tunelab.tasks.pipeline import run_pipeline


def _config(tmp_path, tiny_model_dir, **train):
    rows = [{"text": f"{('apple pear plum fruit' if i % 2 else 'billing account card refund').split()[i % 4]} number {i}",
             "label": "AB"[i % 2]} for i in range(48)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return parse_config({
        "task": "classify", "model": str(tiny_model_dir), "name": "tracked",
        "data": {"train": str(tmp_path / "train.jsonl"), "test_size": 0.25, "validation_size": 0.1, "max_length": 64},
        "train": {"method": "full", "lr": 3e-3, "epochs": 2, "batch_size": 8, "output_dir": str(tmp_path / "runs"), **train},
        "eval": {"bootstrap_samples": 200, "baselines": ["base", "classical"]},
    })


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_tensorboard_gets_the_training_curve_the_evaluation_and_the_verdict(tmp_path, tiny_model_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    outcome = run_pipeline(_config(tmp_path, tiny_model_dir, tracker="tensorboard"))
    events = EventAccumulator(str(outcome.run_dir / "logs" / outcome.run_dir.name), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert "loss" in scalars  # the training curve, as before
    steps = outcome.train["steps"]
    accuracy = events.Scalars("eval/tuned/accuracy")
    assert accuracy[-1].value == pytest.approx(outcome.tuned_metrics["accuracy"]) and accuracy[-1].step == steps
    assert events.Scalars("eval/classical/accuracy")[-1].value == pytest.approx(outcome.baseline_metrics["classical"]["accuracy"])
    assert events.Scalars("eval/paid_off")[-1].value == (1.0 if outcome.comparison.paid_off else 0.0)
    verdict = events.Tensors("eval/verdict/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert verdict.startswith(outcome.comparison.verdict)


def test_a_tracker_that_is_not_installed_stops_the_run_naming_the_extra(tmp_path, tiny_model_dir, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a))
    with pytest.raises(ConfigError, match="tensorboard package, which is not installed") as raised:
        run_pipeline(_config(tmp_path, tiny_model_dir, tracker="tensorboard"))
    assert "pip install 'tunelab[tensorboard]'" in raised.value.hint
    assert not (tmp_path / "runs").exists()  # before anything is written or registered



def test_tunelab_train_with_a_tracker_not_installed_writes_and_registers_nothing(tmp_path, tiny_model_dir, monkeypatch):
    # `tunelab train` (train_registered) named the extra too, but only after registering a failed run and leaving its
    # folder (pipeline.json, .lock): every attempt added a failed row to `tunelab runs`.
    from tunelab.data.split import make_split
    from tunelab.tasks.pipeline import train_registered

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a))
    config = _config(tmp_path, tiny_model_dir, tracker="tensorboard")
    with pytest.raises(ConfigError, match="tensorboard package, which is not installed"):
        train_registered(config, make_split(config), run_dir=tmp_path / "runs" / "tracked")
    assert not (tmp_path / "runs").exists()

def test_the_progress_display_shows_each_running_step_with_counts_and_eta(monkeypatch):
    from rich.console import Console

    from tunelab.cli import common
    from tunelab.train.loop import Progress

    out = io.StringIO()
    monkeypatch.setattr(common, "error_console", Console(file=out, force_terminal=True, width=160))
    seen = []
    with common.progress_display() as display:
        display.on_event("estimate", "start", {})
        seen.append([task.description for task in display.progress.tasks])
        display.on_event("estimate", "done", {})
        display.on_event("baseline", "baseline start", {"baseline": "base", "n": 80})
        display.advance(40)
        task = display.progress.tasks[-1]
        seen.append((task.description, task.completed, task.total, task.fields["detail"]))
        display.on_event("baseline", "baseline done", {})
        display.training(Progress(step=3, total_steps=10, loss=0.5, lr=1e-3, tokens=10, tokens_per_second=120.0, elapsed=1.0, eta_seconds=65.0))
        task = display.progress.tasks[-1]
        seen.append((task.description, task.fields["detail"]))
        display.training(Progress(step=10, total_steps=10, loss=0.4, lr=1e-3, tokens=20, tokens_per_second=120.0, elapsed=2.0, eta_seconds=0.0))
        seen.append(len(display.progress.tasks))
    assert seen[0] == ["estimate: counting tokens, timing training steps here"]
    assert seen[1][:3] == ("baseline base", 40, 80) and seen[1][3].startswith("40/80 examples, ") and "ETA 00:00:" in seen[1][3]
    assert seen[2] == ("train", "3/10 steps, loss 0.5000, 120 tok/s, ETA 00:01:05")
    assert seen[3] == 0  # a finished step leaves no line behind
    assert "baseline base" in out.getvalue()
