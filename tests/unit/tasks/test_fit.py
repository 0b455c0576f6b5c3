"""Fit before you start: a run whose memory plan exceeds the device stops before any compute, naming what
fits, or (``train.fit: auto``) applies the first of those and says so. The device limit is forced small
with ``budget.max_memory_gib``."""

import json

import pytest
import yaml

from tunelab.config import parse_config
from tunelab.estimate import estimate_from_config
from tunelab.estimate.plan import GIB
from tunelab.registry.store import Registry
from tunelab.tasks.pipeline import BudgetExceeded, run_pipeline


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _config(tmp_path, tiny_model_dir, **settings):
    rows = [{"prompt": f"What is {i} plus {i}?", "completion": f"It is {2 * i}, as {i} and {i} make {2 * i}."} for i in range(40)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = {"lr": 5e-3, "max_steps": 3, "batch_size": 8, "max_pass_tokens": None, "precision": "fp32",
             "output_dir": str(tmp_path / "runs"), **settings.pop("train", {})}
    return parse_config({
        "task": "sft", "model": str(tiny_model_dir), "name": "fit", "data": {"train": str(path), "max_length": 64},
        "train": train, "eval": {"bootstrap_samples": 200, "max_new_tokens": 4, "baselines": ["base"]}, **settings,
    })


def _first_option(tmp_path, tiny_model_dir):
    """What the plan needs as configured, and the first change that fits in one byte less."""
    probe = estimate_from_config(_config(tmp_path, tiny_model_dir), calibrate_here=False)
    needed = probe.fit.needed
    tight = estimate_from_config(_config(tmp_path, tiny_model_dir, budget={"max_memory_gib": (needed - 1) / GIB}), calibrate_here=False)
    assert not tight.fit.fits and tight.fit.options, tight.fit.describe()
    return needed, tight.fit.options[0]


def test_a_run_that_will_not_fit_stops_before_any_compute_and_names_what_fits(tmp_path, tiny_model_dir):
    needed, option = _first_option(tmp_path, tiny_model_dir)
    limit = option.total / GIB
    events = []
    with pytest.raises(BudgetExceeded, match="will not fit") as caught:
        run_pipeline(_config(tmp_path, tiny_model_dir, budget={"max_memory_gib": limit}), on_event=lambda s, st, d: events.append((s, st)))
    message = str(caught.value)
    assert option.overrides[0] in message and "train.fit=auto" in caught.value.hint
    assert ("train", "start") not in events and ("baseline", "start") not in events
    run = tmp_path / "runs" / "fit"
    assert not (run / "checkpoints").exists() and not (run / "adapter").exists()
    estimate = json.loads((run / "pipeline.json").read_text())["steps"]["estimate"]
    assert estimate["calibration"] is None and estimate["fit"]["fits"] is False  # not even the timed steps ran
    record = Registry(tmp_path / "runs" / "registry.db").get_run("fit")
    assert record.status == "failed" and "will not fit" in record.error
    # A resume (same config, same limit) stops the same way instead of training what did not fit.
    with pytest.raises(BudgetExceeded, match="will not fit"):
        run_pipeline(resume=run)
    assert not (run / "checkpoints").exists() and not (run / "adapter").exists()
    assert Registry(tmp_path / "runs" / "registry.db").get_run("fit").status == "failed"


def test_fit_auto_applies_the_first_change_that_fits_and_trains_with_it(tmp_path, tiny_model_dir):
    needed, option = _first_option(tmp_path, tiny_model_dir)
    warnings = []
    config = _config(tmp_path, tiny_model_dir, budget={"max_memory_gib": option.total / GIB}, train={"fit": "auto"})

    def on_event(step, status, details):
        if status == "warn":
            warnings.append(details["message"])

    outcome = run_pipeline(config, on_event=on_event, calibrate=False)
    assert outcome.train["steps"] == 3
    assert any("train.fit: auto" in w and " ".join(option.overrides) in w for w in warnings), warnings
    saved = yaml.safe_load((outcome.run_dir / "config.yaml").read_text())
    key, value = option.overrides[0].split("=")
    section, name = key.split(".")
    assert str(saved[section][name]).lower() == value.lower()
    assert outcome.estimate["fit"]["applied"] == option.overrides and outcome.estimate["fit"]["fits"]
    assert outcome.estimate["fit"]["needed_before"] == needed


def test_fit_off_trains_anyway(tmp_path, tiny_model_dir):
    config = _config(tmp_path, tiny_model_dir, budget={"max_memory_gib": 1e-6}, train={"fit": "off"})
    outcome = run_pipeline(config, calibrate=False)
    assert outcome.train["steps"] == 3 and outcome.estimate["fit"]["fits"] is False


def test_run_launch_trains_its_step_on_two_processes_and_the_other_steps_here(tmp_path, tiny_model_dir):
    """`tunelab run --launch "--num_processes 2"`: the train step runs under accelerate launch (DDP, gloo between
    2 CPU processes), the pipeline reads its result back and evaluates, reports and registers as always."""
    import torch

    if not torch.distributed.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    config = _config(tmp_path, tiny_model_dir, train={"max_steps": 2, "batch_size": 2})
    outcome = run_pipeline(config, calibrate=False, launch="--num_processes 2 --mixed_precision no --main_process_port 29561")
    assert outcome.train["steps"] == 2 and outcome.tuned_metrics is not None
    assert (outcome.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert yaml.safe_load((outcome.run_dir / "launch-config.yaml").read_text())["data"]["train"].startswith("/")
    assert Registry(tmp_path / "runs" / "registry.db").get_run("fit").status == "finished"
