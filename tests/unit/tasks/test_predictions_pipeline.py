"""`tunelab run` with the current system's answers as a baseline ({predictions: PATH} in eval.baselines), on the tiny
model: a hole or a conflict in the file is refused before any compute; a whole file joins the verdict and the report."""

import json

import pytest

from tunelab.config import parse_config
from tunelab.errors import DataError
from tunelab.tasks.pipeline import run_pipeline

WORDS = {"A": ["apple", "pear", "plum", "fruit"], "B": ["billing", "account", "card", "refund"]}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _rows(n, offset=0):
    return [{"text": f"{WORDS['AB'[i % 2]][i % 4]} {WORDS['AB'[i % 2]][(i // 2) % 4]} number {i + offset}", "label": "AB"[i % 2]} for i in range(n)]


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _config(tmp_path, tiny_model_dir, predictions):
    train = _write(tmp_path / "train.jsonl", _rows(32))
    test = _write(tmp_path / "test.jsonl", _rows(12, offset=100))
    return parse_config({
        "task": "classify", "model": str(tiny_model_dir), "name": "current-run",
        "data": {"train": str(train), "test": str(test), "validation_size": 0.2, "max_length": 64},
        "train": {"method": "full", "lr": 3e-3, "epochs": 2, "batch_size": 8, "output_dir": str(tmp_path / "runs")},
        "eval": {"bootstrap_samples": 200, "baselines": ["classical", {"predictions": str(predictions), "name": "current"}]},
    })


@pytest.fixture
def no_compute(monkeypatch):
    """Fails the test when the estimate, a baseline or training starts."""
    from tunelab import tasks
    from tunelab.tasks import pipeline

    def started(*args, **kwargs):
        raise AssertionError("compute started before the predictions file was refused")

    monkeypatch.setattr(tasks, "run_training", started)
    monkeypatch.setattr(pipeline, "estimate_step", started)
    monkeypatch.setattr(pipeline, "baseline_step", started)


def test_a_test_request_without_a_prediction_is_refused_before_any_compute(tmp_path, tiny_model_dir, no_compute):
    answers = _rows(12, offset=100)[2:]  # the first two test requests unanswered
    config = _config(tmp_path, tiny_model_dir, _write(tmp_path / "current.jsonl", answers))
    with pytest.raises(DataError, match=r"2 of 12 test requests have no prediction in .*current.jsonl \(first: .*test.jsonl:1, .*test.jsonl:2\)"):
        run_pipeline(config)
    assert not (tmp_path / "runs" / "current-run" / "adapter").exists()


def test_two_answers_to_one_request_are_refused_before_the_base_model_loads(tmp_path, tiny_model_dir, no_compute, monkeypatch):
    import tunelab.runs

    monkeypatch.setattr(tunelab.runs, "load_model", lambda *args, **kwargs: pytest.fail("the base model loaded"))
    answers = [*_rows(12, offset=100), {"text": _rows(12, offset=100)[3]["text"].upper(), "label": "A"}]
    config = _config(tmp_path, tiny_model_dir, _write(tmp_path / "current.jsonl", answers))
    with pytest.raises(DataError, match=r"current.jsonl:4 answers 'B', .*current.jsonl:13 answers 'A'"):
        run_pipeline(config)
    assert not (tmp_path / "runs" / "current-run").exists()


def test_the_current_system_joins_the_verdict_and_the_report(tmp_path, tiny_model_dir):
    answers = [{**row, "label": "A"} for row in _rows(12, offset=100)]  # a system that always says A: half right
    answers.append({"text": "a request of another month", "label": "B"})
    outcome = run_pipeline(_config(tmp_path, tiny_model_dir, _write(tmp_path / "current.jsonl", answers)))
    assert list(outcome.comparison.comparisons) == ["classical", "current"]
    assert outcome.baseline_metrics["current"]["accuracy"] == pytest.approx(0.5) and outcome.baseline_metrics["current"]["ece"] is None
    assert (outcome.run_dir / "eval" / "current.json").is_file()
    assert "| metric | tuned | classical | current |" in (outcome.run_dir / "report.md").read_text()
    assert any("1 predictions in" in warning and "ignored" in warning for warning in outcome.warnings)




def test_answers_that_are_none_of_the_runs_labels_are_said_by_tunelab_run(tmp_path, tiny_model_dir):
    # They were said only in report.md: the run's own lines and --json's warnings showed a low accuracy without why.
    answers = [{**row, "label": "escalate" if i < 3 else row["label"]} for i, row in enumerate(_rows(12, offset=100))]
    outcome = run_pipeline(_config(tmp_path, tiny_model_dir, _write(tmp_path / "current.jsonl", answers)))
    assert "baseline current: 3 answers are none of the run's labels (escalate): they count as wrong" in outcome.warnings
    assert outcome.baseline_metrics["current"]["unknown_answers"] == 3

def test_the_report_written_again_keeps_the_current_system(tmp_path, tiny_model_dir):
    from tunelab.evaluation.report import report_run

    answers = [{**row, "label": "A"} for row in _rows(12, offset=100)]
    outcome = run_pipeline(_config(tmp_path, tiny_model_dir, _write(tmp_path / "current.jsonl", answers)))
    verdict, _ = report_run(outcome.run_dir)  # `tunelab report RUN`: the verdict and report again from the run's files
    assert list(verdict.comparisons) == ["classical", "current"] and not verdict.skipped
    assert "| metric | tuned | classical | current |" in (outcome.run_dir / "report.md").read_text()
    saved = json.loads((outcome.run_dir / "eval" / "comparison.json").read_text())
    assert list(saved["comparisons"]) == ["classical", "current"]

def test_the_current_system_alone_is_shown_by_show_json_and_the_ui(tmp_path, tiny_model_dir):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app
    from tunelab.registry.store import Registry
    from tunelab.ui.app import UISettings, create_app

    answers = [{**row, "label": "A"} for row in _rows(12, offset=100)]
    config = _config(tmp_path, tiny_model_dir, _write(tmp_path / "current.jsonl", answers))
    config.eval.baselines = ["current"]
    outcome = run_pipeline(config)
    assert list(outcome.comparison.comparisons) == ["current"] and outcome.comparison.strongest == "current"
    report = (outcome.run_dir / "report.md").read_text()
    assert "tuned against current" in report  # its answers (no probabilities) are the examples' "before"
    registry = tmp_path / "runs" / "registry.db"
    _register_commands()
    shown = CliRunner().invoke(app, ["show", "current-run", "--registry", str(registry)])
    assert shown.exit_code == 0 and "current" in shown.output, (shown.output, repr(shown.exception))
    as_json = CliRunner().invoke(app, ["show", "current-run", "--registry", str(registry), "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.output)["artifacts"]["baselines"]["current"]["ece"] is None
    record = Registry(registry).get_run("current-run")
    with TestClient(create_app(UISettings(registry=registry)), base_url="http://127.0.0.1:7860") as client:
        page = client.get(f"/runs/{record.id}")
    assert page.status_code == 200 and "current" in page.text
