"""A remote classify baseline under an out-of-scope label is asked as a user would ask it: the prompt offers the label
("if none fits, answer exactly: other"), and an answer naming it is its out-of-scope answer (a chat API has no
probability a threshold could reject on, so without the option its out-of-scope recall would be 0 by construction)."""

from __future__ import annotations

import json
import re

from tunelab.config import DataConfig, EndpointConfig, EvalConfig, parse_config
from tunelab.data.records import ClassifyRecord
from tunelab.evaluation.evaluate import apply_out_of_scope, calibrate_out_of_scope
from tunelab.evaluation.remote import (
    classify_conversation,
    classify_rows,
    estimate_remote,
    evaluate_remote,
    remote_client,
)
from tunelab.evaluation.result import EvalResult
from tunelab.runs import RunFolder

BASE_MODEL = "gpt-4o-mini-2024-07-18"
OPTION = "If the text fits none of the categories, answer exactly: other"


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _follows_the_prompt(question: str) -> str:
    """A base model that reads the prompt: a request about the weather fits no category (it says so only when offered
    the option), the others name their category in their text."""
    text = question.rsplit("Text: ", 1)[-1]
    if "weather" in text or "football" in text:
        offered = re.search(r"answer exactly: (\S+)", question)
        return offered.group(1) if offered else "I do not know."
    return "A" if "alpha" in text else "B"


def test_the_prompt_offers_the_out_of_scope_label_only_with_one():
    plain = classify_conversation("my card is lost", ["card_lost", "refund"], "Be brief.")
    # Byte for byte today's prompt: the request cache is keyed by it, so the answers cached before are still found.
    assert plain == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Classify the following text.\n\nCategories:\ncard_lost\nrefund\n\nAnswer with the category only.\n\n"
                                    "Text: my card is lost"},
    ]
    offered = classify_conversation("my card is lost", ["card_lost", "other", "refund"], "Be brief.", out_of_scope_label="other")
    question = offered[-1]["content"]
    assert OPTION in question and question.endswith("\n\nText: my card is lost")
    assert "\nother\n" not in question  # the option, never one more category
    assert question.index("Categories:") < question.index(OPTION) < question.index("Text: ")


def test_an_answer_naming_the_out_of_scope_label_is_its_out_of_scope_answer():
    records = [ClassifyRecord(id=str(i), text=f"request {i}", label=label) for i, label in enumerate(["A", "B", "other", "other", "A"])]
    answers = ["A", "Other.", "other", "B", "other"]

    def remote():
        rows, metrics, warnings = classify_rows(records, answers, ["A", "B"], out_of_scope_label="other")
        return EvalResult(task="classify", model="openai:x", n=len(rows), metrics={"primary": "accuracy", **metrics}, rows=rows,
                          settings={}, test_fingerprint="f", baseline=True, labels=["A", "B"], baseline_name="openai:x", warnings=warnings)

    calibrated = calibrate_out_of_scope(remote(), "other")
    assert calibrated.threshold == 0.0
    # Its validation accuracy counts its own out-of-scope answers as the tuned model's rejections are counted.
    assert calibrated.validation["accuracy"] == 0.4
    result = apply_out_of_scope(remote(), calibrated)
    assert [row["prediction"] for row in result.rows] == ["A", "other", "other", "B", "other"]
    assert [row["scores"]["rejected"] for row in result.rows] == [0.0, 1.0, 1.0, 0.0, 1.0]
    assert [row["scores"]["correct"] for row in result.rows] == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert [row["scores"]["label_correct"] for row in result.rows] == [1.0, 0.0, 0.0, 0.0, 0.0]
    metrics = result.metrics
    assert metrics["accuracy"] == 0.4
    assert metrics["out_of_scope_recall"] == 0.5 and metrics["out_of_scope_precision"] == 1 / 3
    assert metrics["in_scope_accuracy"] == 1 / 3
    assert "unparsed_answers" not in metrics  # "other" names the out-of-scope answer, not no category


def test_the_estimate_prices_the_prompt_that_is_sent(cloud_provider, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    cloud_provider.base_answer = _follows_the_prompt
    client = remote_client(EndpointConfig(base_url=cloud_provider.url, name=BASE_MODEL, max_retries=0))
    records = [ClassifyRecord(id=str(i), text=text, label=label)
               for i, (text, label) in enumerate([("alpha one", "A"), ("beta two", "B"), ("the weather", "other")])]
    ask = {"config": EvalConfig(), "data_config": DataConfig(out_of_scope_label="other"), "labels": ["A", "B"]}
    plain = estimate_remote(client, records, "classify", **ask)
    before = estimate_remote(client, records, "classify", **ask, out_of_scope_label="other")
    assert before.input_tokens > plain.input_tokens  # the option is priced
    result = evaluate_remote(client, records, "classify", **ask, out_of_scope_label="other")
    assert [row["prediction"] for row in result.rows] == ["A", "B", "other"]
    assert result.metrics["out_of_scope_recall"] == 1.0 and result.metrics["accuracy"] == 1.0
    # The same request bodies: every one is in the request cache now, so the estimate has nothing left to pay.
    after = estimate_remote(client, records, "classify", **ask, out_of_scope_label="other")
    assert after.cached == after.requests == 3


def test_tunelab_eval_scores_a_remote_baseline_answering_out_of_scope(cli, cloud_provider, tmp_path, tiny_model_dir, monkeypatch):
    from tunelab.cli.main import app

    monkeypatch.setattr("tunelab.config.OPENAI_BASE_URL", cloud_provider.url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    cloud_provider.base_answer = _follows_the_prompt
    test = _write(tmp_path / "test.jsonl", [{"text": f"alpha request {i}", "label": "A"} for i in range(3)]
                  + [{"text": f"beta request {i}", "label": "B"} for i in range(3)] + [{"text": "the weather", "label": "other"}])
    validation = _write(tmp_path / "validation.jsonl", [{"text": "alpha refund", "label": "A"}, {"text": "beta refund", "label": "B"},
                                                        {"text": "a football score", "label": "other"}])
    train = _write(tmp_path / "train.jsonl", [{"text": f"{'alpha' if i % 2 else 'beta'} training {i}", "label": "BA"[i % 2]} for i in range(8)])
    result = cli.invoke(app, ["eval", "--data", test, "--task", "classify", "--model", str(tiny_model_dir), "--train", train,
                              "--validation", validation, "--out-of-scope-label", "other", "--baselines", f"openai:{BASE_MODEL}",
                              "--samples", "100", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["baselines"][f"openai:{BASE_MODEL}"]
    assert metrics["out_of_scope_recall"] == 1.0 and metrics["out_of_scope_precision"] == 1.0
    assert metrics["accuracy"] == 1.0 and metrics["in_scope_accuracy"] == 1.0


def test_tunelab_run_scores_a_remote_baseline_answering_out_of_scope(cloud_provider, tmp_path, tiny_model_dir, monkeypatch):
    from tunelab.tasks.pipeline import run_pipeline

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    cloud_provider.base_answer = _follows_the_prompt
    train = _write(tmp_path / "train.jsonl", [{"text": f"{'alpha' if i % 2 else 'beta'} request {i}", "label": "BA"[i % 2]} for i in range(16)])
    outside = _write(tmp_path / "outside.jsonl", [{"text": f"weather today {i}", "label": "other"} for i in range(8)])
    config = parse_config({
        "task": "classify", "name": "remote-out-of-scope", "model": str(tiny_model_dir),
        "data": {"train": train, "out_of_scope": outside, "out_of_scope_label": "other", "test_size": 0.25, "validation_size": 0.25,
                 "max_length": 32},
        "train": {"epochs": 1, "batch_size": 8, "output_dir": str(tmp_path / "runs")},
        "eval": {"baselines": [{"endpoint": {"base_url": cloud_provider.url, "name": BASE_MODEL}, "as": "gpt"}], "bootstrap_samples": 100},
    })
    outcome = run_pipeline(config)
    metrics = outcome.baseline_metrics["remote:gpt"]
    assert metrics["out_of_scope_recall"] == 1.0 and metrics["accuracy"] == 1.0
    gpt = EvalResult.load(RunFolder(outcome.run_dir).baseline_eval("remote:gpt"))
    assert {row["reference"] for row in gpt.rows if row["scores"]["rejected"]} == {"other"}
