"""The in-process sweep's pure parts: the grid, the variants' run names, the metric, the leaderboard."""

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
