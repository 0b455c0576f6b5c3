"""`tunelab run` / `tunelab sweep` end to end on the tiny model: every step, resume, the cached
baseline, bad input that leaves nothing registered, and the CLI."""

import json

import pytest

from tunelab.config import parse_config
from tunelab.errors import ConfigError, DataError
from tunelab.registry.store import Registry
from tunelab.tasks.pipeline import run_pipeline
from tunelab.tasks.sweep import leaderboard, run_sweep, sweep_overrides

WORDS = {"A": ["apple", "pear", "plum", "fruit"], "B": ["billing", "account", "card", "refund"]}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _write_data(folder):
    rows = []
    for i in range(48):
        label = "AB"[i % 2]
        words = WORDS[label]
        rows.append({"text": f"{words[i % 4]} {words[(i // 2) % 4]} number {i}", "label": label})
    path = folder / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _config(tmp_path, tiny_model_dir, **train):
    data = _write_data(tmp_path)
    return parse_config(
        {
            "task": "classify",
            "model": str(tiny_model_dir),
            "name": "quick",
            "data": {"train": str(data), "test_size": 0.25, "validation_size": 0.1, "max_length": 64},
            "train": {"method": "full", "lr": 3e-3, "epochs": 8, "batch_size": 8, "output_dir": str(tmp_path / "runs"), **train},
            # Every baseline scored, so each one's files, cache and columns are checked (skipping is tested below).
            "eval": {"bootstrap_samples": 200, "skip_hopeless": False},
        }
    )


def test_run_walks_every_step_and_registers(tmp_path, tiny_model_dir):
    events = []
    outcome = run_pipeline(_config(tmp_path, tiny_model_dir), on_event=lambda s, st, d: events.append((s, st)))
    done = [step for step, status in events if status == "done"]
    assert done == ["check", "split", "estimate", "baseline", "train", "evaluate", "report", "register"]
    assert outcome.split_sizes["test"] == 12
    # The tiny model learns a two-word pattern: the tuned model must beat chance, and the comparison is real.
    assert outcome.tuned_metrics["accuracy"] >= 0.75
    assert outcome.comparison.metric("accuracy").after == outcome.tuned_metrics["accuracy"]
    assert (outcome.run_dir / "report.html").is_file() and (outcome.run_dir / "eval" / "base.json").is_file()
    # The data check as it was at training time stays in the run folder (the UI shows it).
    data_check = json.loads((outcome.run_dir / "data_check.json").read_text())
    assert data_check["records"] == 48 and data_check["ok"] and data_check["task"] == "classify"
    # Every baseline that applies to classify ran on the same test set, was saved and is in the verdict and report.
    assert list(outcome.comparison.comparisons) == ["base", "classical", "embedding", "few_shot"] == list(outcome.baseline_metrics)
    assert all((outcome.run_dir / "eval" / f"{name}.json").is_file() for name in ("classical", "embedding", "few_shot"))
    assert outcome.comparison.strongest in outcome.baseline_metrics
    assert "| metric | tuned | base | classical | embedding | few_shot |" in (outcome.run_dir / "report.md").read_text()
    # 12 test examples: below the minimum a verdict needs; said at the split step, before any compute, and in the verdict.
    assert outcome.comparison.verdict == "too few test examples to decide" and "n=12" in outcome.comparison.summary
    assert any("the test split has 12 examples" in warning for warning in outcome.warnings)
    assert events.index(("warn", "warn")) < events.index(("estimate", "done"))
    record = Registry(tmp_path / "runs" / "registry.db").get_run("quick")
    assert record.status == "finished"
    assert record.tuned_metrics["accuracy"] == outcome.tuned_metrics["accuracy"]
    assert record.estimate["tokens"]["train_tokens"] > 0
    assert record.timings["train"]["actual_s"] > 0 and record.timings["train"]["estimated_s"] > 0
    # The validation passes' own time, beside their estimate (`tunelab show` showed "-" for it).
    assert record.timings["validation"]["actual_s"] > 0 and record.timings["validation"]["estimated_s"] > 0
    assert record.comparison["verdict"] == outcome.comparison.verdict
    with pytest.raises(ConfigError, match="already exists"):
        run_pipeline(_config(tmp_path, tiny_model_dir))


@pytest.mark.parametrize(("stop", "status"), [(KeyboardInterrupt, "cancelled"), (SystemExit, "interrupted")], ids=["ctrl-c", "stopped"])
def test_interrupted_run_resumes_at_the_step_it_stopped_in(tmp_path, tiny_model_dir, stop, status):
    # SystemExit: how a sweep's scheduler stops a trial mid-run (Ray Tune), or a signal handler's exit. The
    # process was asked to stop, not broken: the row says interrupted, not failed; stopped by the user (Ctrl-C,
    # SIGTERM, the UI's Cancel), it says cancelled.
    def interrupt(step, status, details):
        if (step, status) == ("train", "start"):
            raise stop

    with pytest.raises(stop):
        run_pipeline(_config(tmp_path, tiny_model_dir), on_event=interrupt, calibrate=False)
    registry = Registry(tmp_path / "runs" / "registry.db")
    assert registry.get_run("quick").status == status
    events = []
    outcome = run_pipeline(resume=tmp_path / "runs" / "quick", on_event=lambda s, st, d: events.append((s, st)))
    started = [step for step, status in events if status == "start"]
    assert "baseline" not in started and "estimate" not in started and "train" in started
    assert registry.get_run("quick").status == "finished"
    assert outcome.base_metrics is not None


def test_bad_input_leaves_nothing_registered(tmp_path, tiny_model_dir):
    config = _config(tmp_path, tiny_model_dir)
    config.data.train = str(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="missing.jsonl"):
        run_pipeline(config)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no label"}\n{"text": "fine", "label": "A"}\n')
    config.data.train = str(bad)
    with pytest.raises(DataError, match="bad.jsonl:1"):
        run_pipeline(config)
    assert not (tmp_path / "runs" / "registry.db").exists()
    assert not (tmp_path / "runs" / "quick").exists()


def test_a_validation_label_training_lacks_stops_at_the_split_with_its_record(tmp_path, tiny_model_dir):
    """Before the estimate tokenizes validation over the training labels (a KeyError once, in distillation)."""
    from tunelab.tasks import pipeline

    config = _config(tmp_path, tiny_model_dir)
    validation = tmp_path / "validation.jsonl"
    validation.write_text('{"text": "apple pear", "label": "A"}\n{"text": "where is my parcel", "label": "shipping"}\n')
    config.data.validation = str(validation)
    context = pipeline.open_pipeline(config, calibrate=False)
    pipeline.check_step(context)
    with pytest.raises(DataError, match="validation.jsonl:2: label 'shipping' does not occur in the training split"):
        pipeline.split_step(context)


def test_sweep_shares_the_baseline_and_ranks(tmp_path, tiny_model_dir):
    assert sweep_overrides(["train.lr=1e-3,3e-3", "lora.r=4"]) == [["train.lr=1e-3", "lora.r=4"], ["train.lr=3e-3", "lora.r=4"]]
    config_path = tmp_path / "sweep.yaml"
    _write_data(tmp_path)
    config_path.write_text(
        f"task: classify\nmodel: {tiny_model_dir}\nname: sw\n"
        "data: {train: train.jsonl, test_size: 0.25, max_length: 64}\n"
        f"train: {{method: full, epochs: 4, batch_size: 8, output_dir: {tmp_path / 'runs'}}}\n"
        "eval: {bootstrap_samples: 200}\n"
    )
    events = []
    entries = run_sweep(config_path, [], ["train.lr=1e-4,3e-3"], on_event=lambda s, st, d: events.append((s, st)))
    assert [e.error for e in entries] == [None, None]
    assert ("baseline", "skip") in events  # the second variant reused the first one's baselines
    # classical and embedding come from the cache; base and few_shot, skipped (cannot win on validation), are decided again.
    assert sum(1 for step, status in events if (step, status) == ("baseline", "skip")) == 2
    assert sum(1 for step, status in events if (step, status) == ("baseline", "baseline skipped")) == 4
    rows = leaderboard(entries)
    # Selected on validation (the kept checkpoint's validation accuracy), the test metric reported beside it.
    assert rows[0]["ranked_by"] == "validation accuracy" and rows[0]["rank_value"] >= rows[1]["rank_value"]
    strongest = {entry.outcome.name: entry.outcome.comparison.strongest for entry in entries}
    assert [row["opponent"] for row in rows] == [strongest[row["name"]] for row in rows]  # ranked against the strongest baseline


@pytest.mark.parametrize("task", ["sft", "text"])
def test_run_sft_and_text_end_to_end(tmp_path, tiny_model_dir, task):
    rows = []
    for i in range(30):
        if task == "sft":
            rows.append({"prompt": f"What is {i} plus two?", "completion": f"It is {i + 2}."})
        else:
            rows.append({"text": f"Four score and seven years ago, entry {i}, our fathers brought forth a new nation."})
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = parse_config(
        {
            "task": task,
            "model": str(tiny_model_dir),
            "name": f"e2e-{task}",
            "data": {"train": str(data), "test_size": 0.2, "max_length": 64},
            "train": {"method": "full", "lr": 3e-3, "epochs": 2, "batch_size": 8, "output_dir": str(tmp_path / "runs")},
            "eval": {"bootstrap_samples": 200, "max_new_tokens": 8},
        }
    )
    outcome = run_pipeline(config, calibrate=False)
    assert list(outcome.comparison.comparisons) == {"sft": ["base", "embedding", "few_shot", "retrieval"], "text": ["base"]}[task]
    primary = outcome.comparison.primary
    assert primary == {"sft": "rougeL", "text": "perplexity"}[task]
    assert outcome.base_metrics[primary] != outcome.tuned_metrics[primary]
    if task == "text":
        # Training on the documents must lower held-out perplexity of the same kind of text.
        assert outcome.tuned_metrics["perplexity"] < outcome.base_metrics["perplexity"]
    assert (outcome.run_dir / "report.md").is_file()


def test_over_budget_stops_before_training(tmp_path, tiny_model_dir):
    from tunelab.tasks.pipeline import BudgetExceeded

    config = _config(tmp_path, tiny_model_dir)
    config.budget.max_hours = 1e-9
    with pytest.raises(BudgetExceeded, match="over budget"):
        run_pipeline(config)
    record = Registry(tmp_path / "runs" / "registry.db").get_run("quick")
    assert record.status == "failed" and "budget" in record.error
    assert not (tmp_path / "runs" / "quick" / "adapter").exists() and not (tmp_path / "runs" / "quick" / "model").exists()


def test_a_resumed_over_budget_run_is_still_over_budget(tmp_path, tiny_model_dir):
    """The estimate step is recorded as done before its budget check: a resume skipped the check and trained
    past budget.max_hours (which a resume cannot change: its config is the one in pipeline.json)."""
    from tunelab.tasks.pipeline import BudgetExceeded

    config = _config(tmp_path, tiny_model_dir)
    config.budget.max_hours = 1e-9
    with pytest.raises(BudgetExceeded, match="over budget"):
        run_pipeline(config)  # calibrated: hours on this machine are only checked with a measured step
    run = tmp_path / "runs" / "quick"
    with pytest.raises(BudgetExceeded, match="over budget") as stopped:
        run_pipeline(resume=run)
    # The hint is one a user can follow: a resume cannot raise the limit, and the name is taken.
    assert "new run (another name=...)" in stopped.value.hint
    record = Registry(tmp_path / "runs" / "registry.db").get_run("quick")
    assert record.status == "failed" and "budget" in record.error
    assert not (run / "adapter").exists() and not (run / "model").exists() and not (run / "checkpoints").exists()


def test_steps_are_public_functions_a_notebook_can_call(tmp_path, tiny_model_dir):
    from tunelab.tasks import pipeline

    context = pipeline.open_pipeline(_config(tmp_path, tiny_model_dir), calibrate=False)
    pipeline.check_step(context)
    split = pipeline.split_step(context)
    assert split.sizes()["test"] == 12
    assert context.registry_id is None  # nothing is registered before a step after the split needs it
    estimate = pipeline.estimate_step(context)
    assert estimate["tokens"]["train_tokens"] > 0
    registry = Registry(tmp_path / "runs" / "registry.db")
    assert registry.get_run("quick").status == "running"
    base = pipeline.baseline_step(context)["base"]
    assert base.metrics["primary"] == "accuracy" and context.base_eval is base
    assert registry.get_run("quick").baseline_metrics["accuracy"] == base.metrics["accuracy"]
    # A step that raises marks the registry record and is not recorded as done (a resume runs it again).
    with pytest.raises(RuntimeError, match="boom"), pipeline.step(context, "train"):
        raise RuntimeError("boom")
    assert registry.get_run("quick").status == "failed"
    assert not context.state.done("train") and context.state.done("baseline")


def test_a_baseline_that_cannot_win_on_validation_rows_is_skipped_and_shown_everywhere(tmp_path, tiny_model_dir):
    config = _config(tmp_path, tiny_model_dir, epochs=1)
    config = config.model_copy(update={"eval": config.eval.model_copy(update={"skip_hopeless": True})})
    events = []
    outcome = run_pipeline(config, on_event=lambda s, st, d: events.append((s, st, d)))
    # The random tiny base model is at chance on the 5 validation rows; the classical model cross-validates far higher.
    assert set(outcome.baseline_skipped) == {"base", "few_shot"}
    for name, reason in outcome.baseline_skipped.items():
        assert "validation requests right" in reason and "cannot win" in reason
        assert ("baseline", "baseline skipped", {"baseline": name, "reason": reason}) in events
        assert not (outcome.run_dir / "eval" / f"{name}.json").exists()
    assert list(outcome.baseline_metrics) == ["classical", "embedding"] == list(outcome.comparison.comparisons)
    assert outcome.comparison.skipped == outcome.baseline_skipped and "base, few_shot" in outcome.comparison.summary
    assert "baseline base: **skipped**" in (outcome.run_dir / "report.md").read_text()
    saved = json.loads((outcome.run_dir / "eval" / "comparison.json").read_text())
    assert saved["skipped"] == outcome.baseline_skipped
    registry = Registry(tmp_path / "runs" / "registry.db").get_run("quick")
    assert registry.artifacts["baselines_skipped"] == outcome.baseline_skipped
    # The classical baseline's metrics were stored as "before" and `tunelab runs` showed them as the base model's.
    assert registry.baseline_metrics is None and registry.key_metric()[1] is None and registry.base_skipped == outcome.baseline_skipped["base"]
    # Every baseline reported progress with an ETA while it ran.
    progress = [d for s, st, d in events if st == "baseline progress"]
    assert {d["baseline"] for d in progress} >= {"classical", "embedding", "base", "few_shot"}
    assert all(0 <= d["done"] <= d["total"] for d in progress) and any(d["eta_s"] is not None for d in progress)


def test_the_base_model_key_of_the_baseline_cache_follows_the_weights(tmp_path):
    """Base and few-shot baselines are cached by this key: weights rewritten in place (same file names, so the folder's
    own size and time stay) or another hub commit must give another key, or the answers of old weights are reused."""
    import os
    import types

    from tunelab.models.loader import LoadedModel
    from tunelab.models.resolve import ModelSource
    from tunelab.tasks.pipeline import _model_key

    folder = tmp_path / "my-model"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(b"old weights")
    (folder / "config.json").write_text("{}")
    loaded = LoadedModel(model=None, tokenizer=None, source=ModelSource("folder", str(folder), "my-model"))
    before = _model_key(loaded)
    folder_time = folder.stat().st_mtime_ns
    weights.write_bytes(b"new weights")  # the same name and size, rewritten in place
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    os.utime(folder, ns=(folder.stat().st_atime_ns, folder_time))
    assert _model_key(loaded) != before
    assert _model_key(loaded) == _model_key(loaded)  # and stable while nothing changes

    def hub(commit):
        model = types.SimpleNamespace(config=types.SimpleNamespace(_commit_hash=commit))
        return LoadedModel(model=model, tokenizer=None, source=ModelSource("hub", "org/model", "org/model"))

    assert _model_key(hub("a" * 40)) != _model_key(hub("b" * 40))


def test_bad_data_is_refused_before_the_base_model_loads(tmp_path, monkeypatch):
    # The base model (a hub download, the default model's first conversion) loaded before the data's errors were said.
    import tunelab.runs

    def loaded(*args, **kwargs):
        raise AssertionError("the base model was loaded before the data was read")

    monkeypatch.setattr(tunelab.runs, "load_model", loaded)
    data = tmp_path / "train.csv"
    data.write_bytes("text,label\r\nLe café est froid,complaint\r\nMon résumé,info\r\n".encode("cp1252"))
    config = parse_config(
        {"task": "classify", "model": "default", "name": "quick", "data": {"train": str(data)}, "train": {"output_dir": str(tmp_path / "runs")}}
    )
    with pytest.raises(DataError, match=r"1 invalid record\(s\) in .*train.csv:2: undecodable bytes: .*Windows-1252"):
        run_pipeline(config)
    assert not (tmp_path / "runs").exists()
