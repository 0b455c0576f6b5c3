"""A remote classify baseline whose answers name no category, under an out-of-scope label: each such answer is one
more wrong answer (``remote.parse_label``'s contract) in its metrics, confusion matrix, threshold and report, through
`tunelab eval` and `tunelab run` alike."""

from __future__ import annotations

import json

from tunelab.config import parse_config
from tunelab.data.labels import OutOfScope
from tunelab.data.records import ClassifyRecord
from tunelab.evaluation.evaluate import apply_out_of_scope, calibrate_out_of_scope
from tunelab.evaluation.remote import UNPARSED, classify_rows
from tunelab.evaluation.result import EvalResult
from tunelab.runs import RunFolder

BASE_MODEL = "gpt-4o-mini-2024-07-18"


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _remote_result(records, answers):
    rows, metrics, warnings = classify_rows(records, answers, ["A", "B"])
    return EvalResult(task="classify", model="openai:x", n=len(rows), metrics={"primary": "accuracy", **metrics}, rows=rows,
                      settings={}, test_fingerprint="f", baseline=True, labels=["A", "B"], baseline_name="openai:x", warnings=warnings)


def test_an_answer_naming_no_category_is_wrong_under_an_out_of_scope_rule():
    records = [ClassifyRecord(id=str(i), text=f"request {i}", label=label) for i, label in enumerate(["A", "B", "other", "A"])]
    answers = ["A", "I do not know.", "I do not know.", "B"]
    calibrated = calibrate_out_of_scope(_remote_result(records, answers), "other")
    result = apply_out_of_scope(_remote_result(records, answers), calibrated)
    assert [row["prediction"] for row in result.rows] == ["A", UNPARSED, UNPARSED, "B"]
    assert [row["scores"]["correct"] for row in result.rows] == [1.0, 0.0, 0.0, 0.0]
    assert [row["scores"]["rejected"] for row in result.rows] == [0.0, 0.0, 0.0, 0.0]  # naming no category is no rejection
    assert result.metrics["accuracy"] == 0.25 and result.metrics["out_of_scope_recall"] == 0.0
    # Its own column of the confusion matrix: each unparsed answer is counted, under its reference's row.
    matrix = result.metrics["confusion_matrix"]
    assert matrix["labels"] == ["A", "B", "other", UNPARSED]
    column = matrix["labels"].index(UNPARSED)
    assert [row[column] for row in matrix["matrix"]] == [0, 1, 1, 0]
    assert sum(map(sum, matrix["matrix"])) == 4
    assert result.metrics["unparsed_answers"] == 2 and sum("2 answers named no category" in w for w in result.warnings) == 1


def test_tunelab_eval_scores_a_remote_baseline_that_names_no_category(cli, cloud_provider, tmp_path, tiny_model_dir, monkeypatch):
    # The fake provider's base model answers "I do not know.": no category, for every request.
    from tunelab.cli.main import app

    monkeypatch.setattr("tunelab.config.OPENAI_BASE_URL", cloud_provider.url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    test = _write(tmp_path / "test.jsonl", [{"text": f"plain request {i}", "label": "AB"[i % 2]} for i in range(6)]
                  + [{"text": "the weather", "label": "other"}])
    validation = _write(tmp_path / "validation.jsonl", [{"text": f"refund {i}", "label": "AB"[i % 2]} for i in range(4)]
                        + [{"text": "a football score", "label": "other"}])
    train = _write(tmp_path / "train.jsonl", [{"text": f"training request {i}", "label": "AB"[i % 2]} for i in range(8)])
    out = tmp_path / "eval.json"
    result = cli.invoke(app, ["eval", "--data", test, "--task", "classify", "--model", str(tiny_model_dir), "--train", train,
                              "--validation", validation, "--out-of-scope-label", "other", "--baselines", f"openai:{BASE_MODEL}",
                              "--samples", "100", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["baselines"][f"openai:{BASE_MODEL}"]
    assert metrics["accuracy"] == 0.0 and metrics["unparsed_answers"] == 7  # the test rows, not the validation rows asked too
    assert metrics["confusion_matrix"]["labels"][-1] == UNPARSED
    saved = EvalResult.load(out.with_name(f"eval.openai%3A{BASE_MODEL}.json"))
    assert {row["prediction"] for row in saved.rows} == {UNPARSED}
    assert [w for w in saved.warnings if "named no category" in w][0].startswith("7 answers named no category")


def test_tunelab_run_scores_a_remote_baseline_that_names_no_category(cloud_provider, tmp_path, tiny_model_dir, monkeypatch):
    from tunelab.tasks.pipeline import run_pipeline

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    train = _write(tmp_path / "train.jsonl", [{"text": f"plain request {i}", "label": "AB"[i % 2]} for i in range(16)])
    outside = _write(tmp_path / "outside.jsonl", [{"text": f"weather today {i}", "label": "other"} for i in range(8)])
    config = parse_config({
        "task": "classify", "name": "remote-unparsed", "model": str(tiny_model_dir),
        "data": {"train": train, "out_of_scope": outside, "out_of_scope_label": "other", "test_size": 0.25, "validation_size": 0.25,
                 "max_length": 32},
        "train": {"epochs": 1, "batch_size": 8, "output_dir": str(tmp_path / "runs")},
        "eval": {"baselines": [{"endpoint": {"base_url": cloud_provider.url, "name": BASE_MODEL}, "as": "gpt"}], "bootstrap_samples": 100},
    })
    outcome = run_pipeline(config)
    assert outcome.baseline_metrics["remote:gpt"]["accuracy"] == 0.0
    gpt = EvalResult.load(RunFolder(outcome.run_dir).baseline_eval("remote:gpt"))
    assert {row["prediction"] for row in gpt.rows} == {UNPARSED}
    assert gpt.metrics["confusion_matrix"]["labels"][-1] == UNPARSED
    assert OutOfScope.from_dict(gpt.settings["out_of_scope"]).label == "other"
    assert "gpt" in (outcome.run_dir / "report.md").read_text()
