"""The in-process sweep: the grid, the variants' run names, the metric, the leaderboard; the same command again after an
interrupted sweep (on the tiny model)."""

from pathlib import Path

import pytest

from tunelab.errors import ConfigError
from tunelab.tasks import sweep
from tunelab.tasks.sweep import parse_grid, run_sweep


@pytest.mark.parametrize(
    "grid",
    [["train.lr=1e-4,3e-4,1e-4"], ["train.lr=1e-4", "train.lr=3e-4"], ["train.lr=1e-4,3e-4", "lora.r=8", "train.lr=1e-3"]],
)
def test_a_grid_that_would_run_the_same_variant_twice_is_refused(grid):
    with pytest.raises(ConfigError, match="train.lr"):
        parse_grid(grid)


def _sweep_config(tmp_path):
    for name in ("en.jsonl", "de.jsonl"):
        (tmp_path / name).write_text('{"text": "apple", "label": "A"}\n{"text": "card", "label": "B"}\n')
    path = tmp_path / "sweep.yaml"
    path.write_text(f"task: classify\nmodel: tiny\nname: sw\ndata: {{train: en.jsonl}}\ntrain: {{output_dir: {tmp_path / 'runs'}}}\n")
    return path


def test_variants_that_differ_only_in_a_path_get_their_own_run_folders(tmp_path, monkeypatch):
    names = []
    monkeypatch.setattr(sweep, "run_pipeline", lambda config, **kwargs: names.append(config.name))
    run_sweep(_sweep_config(tmp_path), [], [f"data.train={tmp_path / 'en.jsonl'},{tmp_path / 'de.jsonl'}", "train.lr=1e-4,2e-4"])
    assert len(names) == 4 and len(set(names)) == 4, names


def test_an_unknown_metric_is_refused_before_any_variant_runs(tmp_path, monkeypatch):
    def never(config, **kwargs):
        raise AssertionError("a variant ran")

    monkeypatch.setattr(sweep, "run_pipeline", never)
    with pytest.raises(ConfigError, match="acuracy"):
        run_sweep(_sweep_config(tmp_path), [], ["train.lr=1e-4,2e-4"], metric="acuracy")
    names = []
    monkeypatch.setattr(sweep, "run_pipeline", lambda config, **kwargs: names.append(config.name))
    run_sweep(_sweep_config(tmp_path), [], ["train.lr=1e-4"], metric="macro_f1")
    assert len(names) == 1


def test_the_ray_engine_refuses_an_unknown_metric_before_starting_ray(tmp_path):
    pytest.importorskip("ray.tune")
    import ray

    from tunelab.tasks.ray_sweep import RaySweepSettings, run_ray_sweep

    with pytest.raises(ConfigError, match="acuracy"):
        run_ray_sweep(_sweep_config(tmp_path), [], ["train.lr=1e-4,2e-4"], RaySweepSettings(metric="acuracy"))
    assert not ray.is_initialized()


@pytest.mark.parametrize("option", [{"asha": True}, {"search": "optuna", "trials": 4}])
def test_the_ray_engine_refuses_asha_or_optuna_over_losses_that_are_not_comparable(tmp_path, option):
    """ASHA stops a trial whose validation loss lags the others', Optuna draws towards the lowest: with --grid model=...
    (a loss per token of one tokenizer against another's) or a preference loss of another beta, they stopped and chose
    trials by numbers the leaderboard itself refuses to rank."""
    pytest.importorskip("ray.tune")
    pytest.importorskip("optuna")
    import ray

    from tunelab.tasks.ray_sweep import RaySweepSettings, run_ray_sweep

    config = _sweep_config(tmp_path)
    with pytest.raises(ConfigError, match="--grid model"):
        run_ray_sweep(config, [], ["model=tiny,other", "train.lr=1e-4,2e-4"], RaySweepSettings(**option))
    config.write_text(config.read_text().replace("task: classify", "task: preference"))
    with pytest.raises(ConfigError, match="--grid preference.beta"):
        run_ray_sweep(config, [], ["preference.beta=0.1,0.5"], RaySweepSettings(**option))
    assert not ray.is_initialized()


@pytest.mark.parametrize("resources", [{"cpus_per_trial": 4096}, {"gpus_per_trial": 4096}])
def test_a_ray_sweep_started_here_refuses_trials_this_machine_cannot_place(tmp_path, resources):
    """`--gpus-per-trial 1` on a CPU machine (or more CPUs a trial than it has), with the Ray started for the sweep: no
    trial could ever start, and the sweep waited for ever, Ray Tune warning once a minute on stderr."""
    pytest.importorskip("ray.tune")
    import ray

    from tunelab.tasks.ray_sweep import RaySweepSettings, run_ray_sweep

    with pytest.raises(ConfigError, match="no trial could start") as refused:
        run_ray_sweep(_sweep_config(tmp_path), [], ["train.lr=1e-4,2e-4"], RaySweepSettings(**resources))
    assert "4096" in str(refused.value) and "--address" in refused.value.hint, refused.value
    assert not ray.is_initialized()  # the Ray it started is shut down again


def test_continuing_a_ray_sweep_with_another_grid_config_or_overrides_is_refused(tmp_path):
    from tunelab.tasks.ray_sweep import RaySweepSettings, same_sweep

    config = _sweep_config(tmp_path)
    experiment = tmp_path / "runs" / "sweeps" / "night"
    settings = RaySweepSettings(name="night")
    same_sweep(experiment, config, ["train.epochs=2"], ["train.lr=1e-4,2e-4"], settings, restored=False)  # a new sweep: kept
    same_sweep(experiment, config, ["train.epochs=2"], ["train.lr=1e-4,2e-4"], settings, restored=True)  # the same sweep again
    for overrides, grid, change in [
        (["train.epochs=3"], ["train.lr=1e-4,2e-4"], None),
        (["train.epochs=2"], ["train.lr=1e-4,3e-4"], None),
        (["train.epochs=2"], ["train.lr=1e-4,2e-4"], "metric"),
    ]:
        changed = RaySweepSettings(name="night", metric="macro_f1" if change == "metric" else None)
        with pytest.raises(ConfigError, match="night"):
            same_sweep(experiment, config, overrides, grid, changed, restored=True)
    config.write_text(config.read_text().replace("name: sw", "name: other"))
    with pytest.raises(ConfigError, match="night"):
        same_sweep(experiment, config, ["train.epochs=2"], ["train.lr=1e-4,2e-4"], settings, restored=True)


def test_a_ray_trial_whose_worker_failed_is_not_reported_as_stopped_by_the_scheduler():
    from tunelab.tasks.ray_sweep import METRIC, trial_row

    last = {METRIC: 0.71, "step": 20, "run": "night-abc-lr1e4", "overrides": "train.lr=1e-4"}
    row, stopped = trial_row(last, RuntimeError("The actor died unexpectedly before finishing this task.\nmore"), "night")
    assert not stopped and row["name"] == "night-abc-lr1e4" and row["overrides"] == "train.lr=1e-4"
    assert "scheduler" not in row["error"] and "actor died" in row["error"] and "--name night" in row["error"]
    assert "\n" not in row["error"]
    row, stopped = trial_row(last, None, "night")
    assert stopped and row["error"] == f"stopped early by the sweep's scheduler ({METRIC} 0.7100 at step 20)"
    finished = {**last, "row": '{"overrides": "train.lr=1e-4", "after": 0.9}'}
    assert trial_row(finished, None, "night") == ({"overrides": "train.lr=1e-4", "after": 0.9}, False)


def test_a_ray_task_error_is_told_by_its_cause():
    pytest.importorskip("ray")
    from ray.exceptions import RayTaskError

    from tunelab.tasks.ray_sweep import trial_row

    try:
        raise ValueError("loss is nan at step 7")
    except ValueError as cause:
        wrapped = RayTaskError("train", "Traceback (most recent call last):\n  ...", cause)
    row, stopped = trial_row({"run": "r", "overrides": "train.lr=1"}, wrapped, "night")
    assert not stopped and "loss is nan at step 7" in row["error"], row


def _split_config(tmp_path):
    rows = [f'{{"text": "item {i} {word}", "label": "{label}"}}' for i in range(20) for word, label in (("apple", "A"), ("card", "B"))]
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    path = tmp_path / "split.yaml"
    path.write_text(f"task: classify\nmodel: tiny\nname: sw\ndata: {{train: {tmp_path / 'train.jsonl'}, test_size: 0.25}}\n"
                    f"train: {{output_dir: {tmp_path / 'runs'}}}\n")
    return path


@pytest.mark.parametrize("grid", [["train.lr=1e-4,2e-4", "data.seed=0,1"], ["data.test_size=0.2,0.3"], ["data.limit=30,40"],
                                  ["train.lr=1e-4", "data.max_test_examples=4,6"]])
def test_a_grid_key_that_changes_the_test_or_validation_rows_is_refused_before_any_variant_runs(tmp_path, monkeypatch, grid):
    # Variants judged on different test rows (and chosen on different validation rows) rank numbers that do not compare.
    def never(config, **kwargs):
        raise AssertionError("a variant ran")

    monkeypatch.setattr(sweep, "run_pipeline", never)
    key = grid[-1].split("=")[0]
    with pytest.raises(ConfigError, match=rf"--grid {key} changes the validation and test rows"):
        run_sweep(_split_config(tmp_path), [], grid)
    names = []
    monkeypatch.setattr(sweep, "run_pipeline", lambda config, **kwargs: names.append(config.name))
    run_sweep(_split_config(tmp_path), [], ["train.lr=1e-4,2e-4", "data.max_length=64,128"])  # same rows: it runs
    assert len(names) == 4


def _entry(name, test_accuracy, validation_accuracy, validation_loss, model="default", task="classify", preference=None):
    from types import SimpleNamespace

    metric = SimpleNamespace(name="accuracy", before=0.5, after=test_accuracy, difference=test_accuracy - 0.5, low=0.0, high=0.1,
                             higher_is_better=True)
    comparison = SimpleNamespace(primary="accuracy", metrics=[metric], metric=lambda name: metric, verdict="better", strongest="classical")
    train = {"best_validation_loss": validation_loss, "best_validation_score": validation_accuracy}
    preference = preference or SimpleNamespace(beta=0.1, loss="sigmoid")
    config = SimpleNamespace(model=SimpleNamespace(name=model), task=task, preference=preference)
    return sweep.SweepEntry([f"train.lr={name}"], SimpleNamespace(name=name, comparison=comparison, train=train, config=config))


def test_the_leaderboard_selects_on_validation_and_reports_test():
    # The variant with the best test accuracy is not the best on validation: the sweep picks by validation.
    entries = [_entry("a", 0.9, 0.6, 0.7), _entry("b", 0.8, 0.7, 0.9), sweep.SweepEntry(["train.lr=c"], None, "failed")]
    rows = sweep.leaderboard(entries)
    assert [row["overrides"] for row in rows] == ["train.lr=b", "train.lr=a", "train.lr=c"]
    assert rows[0]["ranked_by"] == "validation accuracy" and rows[0]["rank_value"] == 0.7 and rows[0]["after"] == 0.8
    # Without a validation accuracy (classify.select_by: loss, sft, text): the lower validation loss first.
    for entry in entries[:2]:
        entry.outcome.train["best_validation_score"] = None
    rows = sweep.leaderboard(entries)
    assert [row["overrides"] for row in rows][:2] == ["train.lr=a", "train.lr=b"] and rows[0]["ranked_by"] == "validation loss"
    # No validation rows at all: ranked on test, and the row says that this is selection on test.
    for entry in entries[:2]:
        entry.outcome.train["best_validation_loss"] = None
    rows = sweep.leaderboard(entries)
    assert [row["overrides"] for row in rows][:2] == ["train.lr=a", "train.lr=b"] and "selects on test" in rows[0]["ranked_by"]


def test_a_grid_over_models_is_not_ranked_by_losses_of_different_tokenizers():
    # sft/text variants of two models: a loss per token of one tokenizer says nothing against another's.
    entries = [_entry("a", 0.9, None, 0.7, model="org/small"), _entry("b", 0.8, None, 0.5, model="org/other")]
    rows = sweep.leaderboard(entries)
    assert [row["overrides"] for row in rows] == ["train.lr=a", "train.lr=b"]
    assert "different tokenizers" in rows[0]["ranked_by"] and "selects on test" in rows[0]["ranked_by"]


def test_a_grid_over_the_preference_loss_is_not_ranked_by_losses_of_different_losses():
    """A preference run's validation loss is its DPO loss, with its own beta and loss type: `--grid preference.beta=0.1,1`
    ranked the variants by numbers of different functions (at beta 1 the same margins give a lower sigmoid loss; ipo's
    squared loss has another scale), and the sweep named the winner by them."""
    from types import SimpleNamespace

    def variant(name, test, loss, beta, kind="sigmoid"):
        return _entry(name, test, None, loss, task="preference", preference=SimpleNamespace(beta=beta, loss=kind))

    rows = sweep.leaderboard([variant("a", 0.6, 0.2, 1.0), variant("b", 0.8, 0.6, 0.1)])
    assert [row["overrides"] for row in rows] == ["train.lr=b", "train.lr=a"]
    assert "preference" in rows[0]["ranked_by"] and "selects on test" in rows[0]["ranked_by"], rows[0]["ranked_by"]
    rows = sweep.leaderboard([variant("a", 0.6, 0.2, 0.1, "ipo"), variant("b", 0.8, 0.6, 0.1)])
    assert [row["overrides"] for row in rows] == ["train.lr=b", "train.lr=a"] and "selects on test" in rows[0]["ranked_by"]
    # One loss, variants of another key: the validation loss ranks them, as for sft.
    rows = sweep.leaderboard([variant("a", 0.6, 0.2, 0.1), variant("b", 0.8, 0.6, 0.1)])
    assert [row["overrides"] for row in rows] == ["train.lr=a", "train.lr=b"] and rows[0]["ranked_by"] == "validation loss"


def test_the_cli_leaderboard_says_what_it_ranked_by(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app

    monkeypatch.setattr(sweep, "run_sweep", lambda *args, **kwargs: [_entry("a", 0.9, 0.6, 0.7), _entry("b", 0.8, 0.7, 0.9)])
    _register_commands()
    result = CliRunner().invoke(app, ["sweep", str(_sweep_config(tmp_path)), "--grid", "train.lr=a,b"])
    assert result.exit_code == 0, result.output
    assert "best first by validation accuracy; the metric on test" in result.output
    assert result.output.index("0.7000") < result.output.index("0.6000")  # b (validation 0.7, test 0.8) first
    # The winner's run name, which `promote` takes: the table shows variants only (a Ray trial's name is not guessable).
    assert "best: b (train.lr=b)" in result.output and "tunelab promote ALIAS b" in result.output, result.output


def test_the_metric_options_help_says_it_is_reported_not_ranked_by():
    # The leaderboard is ranked on validation (rank_rows); --help said "Rank by this metric", which is selection on test.
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app

    _register_commands()
    result = CliRunner().invoke(app, ["sweep", "--help"], env={"COLUMNS": "400", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    assert "Rank by this metric" not in result.output and "ranked on validation" in result.output, result.output


def test_a_variant_failing_outside_tunelab_errors_does_not_end_the_sweep(tmp_path, monkeypatch):
    # E.g. a larger model of a --grid model=... running out of GPU memory while it is evaluated: the other
    # variants still run and the leaderboard still lists the ones that finished.
    ran = []

    def pipeline(config, **kwargs):
        ran.append(config.name)
        if len(ran) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore lines")

    monkeypatch.setattr(sweep, "run_pipeline", pipeline)
    entries = run_sweep(_sweep_config(tmp_path), [], ["train.lr=1e-4,2e-4"])
    assert len(ran) == 2 and entries[1].error is None
    assert entries[0].outcome is None and entries[0].error == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"


def _tiny_sweep(tmp_path, tiny_model_dir, monkeypatch):
    """A sweep project on the tiny model in ``tmp_path`` (the working folder now); returns ``sweep_once(grid, stop_in)``,
    which runs the sweep, and the names of the variants that trained in its last call (Ctrl-C in the variant whose name
    ends in ``stop_in`` at its step 2)."""
    import json

    import yaml

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rows = [{"text": f"{('apple', 'card')[i % 2]} {('pear', 'refund')[i % 2]} number {i}", "label": "AB"[i % 2]} for i in range(40)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "task": "classify", "model": str(tiny_model_dir), "name": "sw",
        "data": {"train": "train.jsonl", "test_size": 0.25, "validation_size": 0.2, "max_length": 32},
        "train": {"method": "lora", "max_steps": 4, "batch_size": 4, "eval_every": 2, "precision": "fp32", "output_dir": "runs"},
        "lora": {"r": 4}, "eval": {"baselines": ["base"], "bootstrap_samples": 100},
    }))
    trained: list[str] = []
    variant: dict[str, str] = {}

    def on_event(step, status, details):
        if step == "variant" and status == "start":
            variant["name"] = details["name"]

    def sweep_once(grid, stop_in=None):
        def progress(event):
            if variant["name"] not in trained:
                trained.append(variant["name"])
            if stop_in and variant["name"].endswith(stop_in) and event.step == 2:
                raise KeyboardInterrupt

        trained.clear()
        return run_sweep("sweep.yaml", [], grid, on_event=on_event, train_progress=progress)

    return sweep_once, trained


def test_the_same_sweep_again_after_ctrl_c_reuses_finished_variants_and_continues_the_stopped_one(tmp_path, monkeypatch, tiny_model_dir):
    """Ctrl-C in a sweep's second variant lost its leaderboard, and the same command again retrained every variant
    under new names: it reuses a finished variant of the same config and data, continues the stopped one from its
    checkpoint, and ranks them all; a variant of another config still trains."""
    from tunelab.registry.store import Registry

    sweep_once, trained = _tiny_sweep(tmp_path, tiny_model_dir, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        sweep_once(["train.lr=1e-2,2e-2"], stop_in="lr2e2")
    first, stopped = trained
    entries = sweep_once(["train.lr=1e-2,2e-2"])
    assert trained == [stopped], trained  # only the stopped variant trains again, in its own run folder
    assert [entry.outcome.name for entry in entries] == [first, stopped] and all(entry.error is None for entry in entries)
    assert all(row["after"] is not None for row in sweep.leaderboard(entries))
    registry = Registry(tmp_path / "runs" / "registry.db")
    assert sorted(run.name for run in registry.list_runs()) == sorted([first, stopped])
    assert {run.status for run in registry.list_runs()} == {"finished"}
    entries = sweep_once(["train.lr=1e-2,3e-2"])
    assert len(trained) == 1 and trained[0].endswith("lr3e2"), trained  # another config: a new run
    assert entries[0].outcome.name == first and len(registry.list_runs()) == 3


def test_the_same_sweep_again_after_a_kill_continues_the_killed_variant(tmp_path, monkeypatch, tiny_model_dir):
    # Killed (SIGKILL: no handler runs) just after the second variant's registry row was created: the row says running,
    # its process is gone; the same command again reads the first variant back and continues the second in its folder.
    import os
    import subprocess
    import sys

    import tunelab
    from tunelab.faults import KILL_ENV
    from tunelab.registry.store import Registry

    sweep_once, trained = _tiny_sweep(tmp_path, tiny_model_dir, monkeypatch)
    env = {**os.environ, "PYTHONPATH": str(Path(tunelab.__file__).parents[1]), KILL_ENV: "pipeline.registered@2"}
    script = "from tunelab.tasks.sweep import run_sweep; run_sweep('sweep.yaml', [], ['train.lr=1e-2,2e-2'])"
    killed = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    registry = Registry(tmp_path / "runs" / "registry.db")
    before = {run.name: run.status for run in registry.list_runs()}
    assert sorted(before.values()) == ["finished", "interrupted"], before
    entries = sweep_once(["train.lr=1e-2,2e-2"])
    assert [entry.outcome.name for entry in entries] == sorted(before) and trained == [entries[1].outcome.name], trained
    assert {run.name: run.status for run in registry.list_runs()} == dict.fromkeys(before, "finished")


def test_an_earlier_variant_that_train_fit_auto_changed_is_still_found(tmp_path, monkeypatch):
    # train.fit: auto registers the config the run trained (smaller passes, say), not the one the sweep made: matched on
    # that alone, such a finished variant was trained again by every sweep that went on after an interruption.
    from tunelab.config import apply_overrides, dump_config, load_config, parse_config
    from tunelab.registry.store import Registry
    from tunelab.runs import anchor_paths

    monkeypatch.chdir(tmp_path)
    config = load_config(_sweep_config(tmp_path), ["train.lr=1e-4", "train.fit=auto"])
    applied = ["train.max_pass_tokens=256"]
    trained = parse_config(apply_overrides(anchor_paths(config.model_dump(mode="json"), tmp_path), applied))  # as registered
    run_dir = tmp_path / "runs" / "sw-earlier"
    run_dir.mkdir(parents=True)
    (run_dir / "pipeline.json").write_text("{}")
    registry = Registry(tmp_path / "runs" / "registry.db")
    registry.create_run(name="sw-earlier", task="classify", model="tiny", config=dump_config(trained), status="finished",
                        data_fingerprint="f1", run_dir=str(run_dir), estimate={"fit": {"applied": applied}})
    assert sweep.earlier_variant(config, "f1").name == "sw-earlier"
    assert sweep.earlier_variant(config, "f2") is None  # other data behind the same path
    other = load_config(_sweep_config(tmp_path), ["train.lr=2e-4", "train.fit=auto"])
    assert sweep.earlier_variant(other, "f1") is None
