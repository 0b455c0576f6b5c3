"""The Compare page's paired differences between two runs used seed 0 and 1000 resamples whatever the runs' ``eval.seed``
and ``eval.bootstrap_samples``, so its interval was not the one `tunelab promote` states for the same two runs."""

from tests.unit.evaluation.test_report import _classify

from tunelab.evaluation.compare import compare_evaluations
from tunelab.registry import Registry
from tunelab.runs import RunFolder, bootstrap_settings
from tunelab.ui import views


def _run(registry, root, name, accuracy, seed):
    folder = RunFolder(root / name)
    folder.root.mkdir(parents=True)
    (folder.root / "config.yaml").write_text("task: classify\neval:\n  seed: 7\n  bootstrap_samples: 150\n")
    folder.tuned_eval.parent.mkdir(parents=True, exist_ok=True)
    result = _classify(name, accuracy, seed)
    result.save(folder.tuned_eval)
    record = registry.create_run(name=name, task="classify", model="/models/tiny", status="finished", run_dir=str(folder.root),
                                 tuned_metrics=result.metrics)
    return record, result


def test_the_compare_page_uses_the_runs_bootstrap_settings_as_promote_does(tmp_path):
    registry = Registry(tmp_path / "runs" / "registry.db")
    first, first_eval = _run(registry, tmp_path / "runs", "a", 0.6, 1)
    other, other_eval = _run(registry, tmp_path / "runs", "b", 0.75, 2)
    assert bootstrap_settings(other.run_dir) == (7, 150)

    shown = views.compare_page(registry, [first.id, other.id])["differences"][0]["metrics"]
    # promote judges a run with its own settings (tasks.retrain.judge_promotion reads them through bootstrap_settings)
    expected = compare_evaluations(first_eval, other_eval, seed=7, samples=150).metrics
    default = compare_evaluations(first_eval, other_eval, seed=0, samples=1000).metrics
    interval = {m.name: (m.low, m.high) for m in shown if m.low == m.low}  # NaN: a metric not compared
    assert interval and interval == {m.name: (m.low, m.high) for m in expected if m.low == m.low}
    assert interval["accuracy"] != next((m.low, m.high) for m in default if m.name == "accuracy")


def test_a_folder_without_a_config_is_bootstrapped_with_the_eval_defaults(tmp_path):
    assert bootstrap_settings(tmp_path) == (0, 1000)
    assert bootstrap_settings(None) == (0, 1000)
