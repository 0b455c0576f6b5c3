"""A remote baseline is priced before the run (``tunelab run``'s estimate step, ``tunelab estimate``, ``tunelab show``),
held to ``budget.max_usd`` before anything is asked; under an out-of-scope label it is asked the test rows only (it answers
the label itself: no threshold to choose on the validation rows); ``tunelab eval`` of a remote model offers it the label."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from tunelab.config import DataConfig, EvalConfig, parse_config
from tunelab.data.records import ClassifyRecord
from tunelab.errors import BudgetExceeded

PRICED = "gpt-4o-mini"  # in the bundled price table: priced wherever it is served
UNPRICED = "mystery-model-1"


class _Stop(Exception):
    pass


@pytest.fixture
def provider(cloud_provider):
    """The loopback fake provider serving the priced model too."""
    cloud_provider.base_models.append(PRICED)
    return cloud_provider


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _follows_the_prompt(question: str) -> str:
    """Names the category its text names; the weather fits none (said only when offered the option)."""
    text = question.rsplit("Text: ", 1)[-1]
    if "weather" in text:
        offered = re.search(r"answer exactly: (\S+)", question)
        return offered.group(1) if offered else "I do not know."
    return "A" if "alpha" in text else "B"


def _config(tmp_path, url, name=PRICED, *, out_of_scope=False, **sections):
    train = _write(tmp_path / "train.jsonl", [{"text": f"{'alpha' if i % 2 else 'beta'} request {i}", "label": "BA"[i % 2]} for i in range(24)])
    data = {"train": train, "test_size": 0.25, "validation_size": 0.25, "max_length": 32, "max_test_examples": 5}
    if out_of_scope:
        data.update(out_of_scope=_write(tmp_path / "outside.jsonl", [{"text": f"weather today {i}", "label": "other"} for i in range(8)]),
                    out_of_scope_label="other")
    return parse_config({
        "task": "classify", "name": "priced", "model": sections.pop("model"),
        "data": data, "train": {"epochs": 1, "batch_size": 8, "output_dir": str(tmp_path / "runs")},
        "eval": {"baselines": ["classical", {"endpoint": {"base_url": url, "name": name, "api_key_env": None}, "as": "gpt"}],
                 "bootstrap_samples": 100},
        **sections,
    })


def _expected(config):
    """What the evaluation will send, priced through the one prompt builder (``remote.estimate_remote``)."""
    from tunelab.data.split import make_split
    from tunelab.evaluation.remote import estimate_remote, remote_client

    split = make_split(config)
    labels = sorted({r.label for r in split.train} - {config.data.out_of_scope_label})
    return estimate_remote(remote_client(config.eval.endpoint_of("remote:gpt")), split.test, "classify", config=config.eval,
                           data_config=config.data, labels=labels, out_of_scope_label=config.data.out_of_scope_label)


def test_tunelab_estimate_prices_a_remote_baseline(cli, provider, tmp_path, tiny_model_dir):
    from tunelab.cli.main import app

    config = _config(tmp_path, provider.url, model=str(tiny_model_dir))
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    result = cli.invoke(app, ["estimate", str(path), "--no-calibrate", "--json"])
    assert result.exit_code == 0, result.output
    priced = json.loads(result.stdout)["remote_baselines"]["remote:gpt"]
    expected = _expected(config)
    assert (priced["requests"], priced["cached"], priced["input_tokens"]) == (5, 0, expected.input_tokens)  # after max_test_examples
    assert priced["usd_expected"] == pytest.approx(expected.usd_expected) and priced["usd_expected"] > 0
    text = cli.invoke(app, ["estimate", str(path), "--no-calibrate"])
    assert text.exit_code == 0, text.output
    said = " ".join(text.stdout.split())
    assert f"baseline remote:gpt: asking {PRICED}: 5 requests (0 cached)" in said, said
    assert provider.chats_arrived == 0  # pricing asks nothing


def test_an_unpriced_remote_baseline_is_unknown_never_free(cli, tmp_path, tiny_model_dir):
    from tunelab.cli.main import app

    config = _config(tmp_path, "https://llm.example.invalid/v1", UNPRICED, model=str(tiny_model_dir), budget={"max_usd": 0.5})
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    result = cli.invoke(app, ["estimate", str(path), "--no-calibrate", "--json"])
    assert result.exit_code == 0, result.output
    estimate = json.loads(result.stdout)
    priced = estimate["remote_baselines"]["remote:gpt"]
    assert priced["usd_expected"] is None and priced["usd_max"] is None and not priced["local"]
    assert not estimate["budget"]["over"]
    assert any(f"remote:gpt: price unknown (no price for {UNPRICED}" in note for note in estimate["budget"]["notes"]), estimate["budget"]
    from tunelab.estimate.summary import estimate_summary

    lines = dict(estimate_summary(estimate))
    assert "unknown" in lines["remote baselines"] and "$0" not in lines["remote baselines"]


def test_a_run_over_budget_with_its_remote_baseline_stops_before_asking(provider, tmp_path, tiny_model_dir, monkeypatch):
    from tunelab.estimate.summary import estimate_summary
    from tunelab.registry.store import Registry, default_registry_path
    from tunelab.tasks import pipeline

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(pipeline, "train_step", stop)
    provider.base_answer = _follows_the_prompt
    config = _config(tmp_path, provider.url, model=str(tiny_model_dir), budget={"max_usd": 1e-9})
    with pytest.raises(BudgetExceeded, match=r"remote:gpt.* exceeds? budget\.max_usd 1e-09"):
        pipeline.run_pipeline(config, calibrate=False)
    assert provider.chats_arrived == 0
    # `tunelab show` reads the estimate the registry keeps: the baseline's price is in it.
    run = Registry(default_registry_path(config)).get_run("priced")
    lines = dict(estimate_summary(run.estimate))
    assert lines["remote baselines"].startswith("remote:gpt about $"), lines


def test_the_estimate_counts_only_the_requests_not_cached(provider, tmp_path, tiny_model_dir, monkeypatch):
    from tunelab.data.split import learning_records, make_split
    from tunelab.evaluation.baselines import estimate_remote_baselines, evaluate_baselines

    provider.base_answer = _follows_the_prompt
    config = _config(tmp_path, provider.url, model=str(tiny_model_dir))
    split = make_split(config)
    labels = sorted({r.label for r in split.train})
    before = estimate_remote_baselines(["classical", "remote:gpt"], split.test, "classify", config=config.eval, data_config=config.data,
                                       labels=labels)
    assert list(before) == ["remote:gpt"] and before["remote:gpt"].cached == 0 and before["remote:gpt"].requests == 5
    evaluate_baselines(["remote:gpt"], None, split.test, "classify", train=learning_records(split), config=config.eval,
                       data_config=config.data, validation=split.validation)
    after = estimate_remote_baselines(["remote:gpt"], split.test, "classify", config=config.eval, data_config=config.data, labels=labels)
    assert after["remote:gpt"].cached == 5 and after["remote:gpt"].usd_expected == 0.0


def test_a_remote_baseline_under_an_out_of_scope_label_is_asked_the_test_rows_only(provider, tmp_path, tiny_model_dir):
    from tunelab.data.split import learning_records, make_split
    from tunelab.evaluation.baselines import evaluate_baselines
    from tunelab.evaluation.report import out_of_scope_lines

    provider.base_answer = _follows_the_prompt
    config = _config(tmp_path, provider.url, model=str(tiny_model_dir), out_of_scope=True)
    split = make_split(config)
    assert split.validation  # there are validation rows it could have been sent
    results = evaluate_baselines(["remote:gpt"], None, split.test, "classify", train=learning_records(split), config=config.eval,
                                 data_config=config.data, validation=split.validation)
    gpt = results["remote:gpt"]
    assert provider.chats_arrived == gpt.n == 5
    assert gpt.settings["out_of_scope"]["threshold"] == 0.0
    assert gpt.metrics["out_of_scope_threshold"] == 0.0
    tuned = dataclasses.replace(gpt, settings={"out_of_scope": {"label": "other", "threshold": 0.4}})
    line = out_of_scope_lines({"remote:gpt": gpt}, tuned)[0]
    assert "remote:gpt answers 'other' itself (no threshold)" in line, line


def test_tunelab_eval_offers_a_remote_model_the_out_of_scope_label(cli, provider, tmp_path, monkeypatch):
    from tunelab.cli.main import app
    from tunelab.evaluation.remote import estimate_remote, remote_client

    monkeypatch.setattr("tunelab.config.OPENAI_BASE_URL", provider.url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    provider.base_answer = _follows_the_prompt
    rows = [{"text": f"alpha request {i}", "label": "A"} for i in range(3)] + [{"text": f"beta request {i}", "label": "B"} for i in range(3)]
    rows += [{"text": "the weather", "label": "other"}]
    test = _write(tmp_path / "test.jsonl", rows)
    train = _write(tmp_path / "train.jsonl", [{"text": f"training {i}", "label": "AB"[i % 2]} for i in range(8)])
    result = cli.invoke(app, ["eval", "--data", test, "--task", "classify", "--model", f"openai:{PRICED}", "--train", train,
                              "--out-of-scope-label", "other", "--baselines", "none", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["out_of_scope_recall"] == 1.0 and metrics["accuracy"] == 1.0
    # The line said before the first request priced the prompt that was sent (with the option): all cached now.
    from tunelab.config import EndpointConfig

    records = [ClassifyRecord(id=str(i), text=row["text"], label=row["label"]) for i, row in enumerate(rows)]
    again = estimate_remote(remote_client(EndpointConfig.parse_name(f"openai:{PRICED}")), records, "classify", config=EvalConfig(),
                            data_config=DataConfig(out_of_scope_label="other"), labels=["A", "B"], out_of_scope_label="other")
    assert again.cached == again.requests == 7
    said = " ".join(result.stderr.split())
    assert f"asking {PRICED}: 7 requests (0 cached), about {again.requests and _input_tokens(records)} input tokens" in said, said


def _input_tokens(records):
    from tunelab.evaluation.remote import classify_conversation
    from tunelab.remote.client import chat_tokens

    return f"{sum(chat_tokens(classify_conversation(r.text, ['A', 'B'], None, 'other')) for r in records):,}"


def test_a_provider_run_prices_its_remote_base_baseline(provider, tmp_path, tiny_model_dir):
    # A provider-trained run's "base" baseline asks the provider's base model: priced with the job, held to budget.max_usd.
    from tunelab.estimate.summary import estimate_summary
    from tunelab.tasks.pipeline import REMOTE_BASE, cloud_budget_reason, estimate_cloud_run

    train = _write(tmp_path / "train.jsonl", [{"text": f"{'alpha' if i % 2 else 'beta'} request {i}", "label": "BA"[i % 2]} for i in range(16)])

    def config(**budget):
        return parse_config({
            "task": "classify", "name": "cloud", "model": {"name": str(tiny_model_dir), "endpoint": {"base_url": provider.url, "name": PRICED}},
            "data": {"train": train, "test_size": 0.25, "validation_size": 0.0},
            "train": {"backend": "openai", "epochs": 1, "output_dir": str(tmp_path / "runs")},
            "eval": {"baselines": ["base"], "bootstrap_samples": 100}, "budget": budget,
        })

    estimate = estimate_cloud_run(config())
    base = estimate["remote_baselines"][REMOTE_BASE]
    assert base["requests"] == 4 and base["usd_expected"] > 0
    # The job alone fits a budget of its own price; with the baseline's requests it does not.
    reason = cloud_budget_reason(config(max_usd=estimate["usd"]), estimate)
    assert reason is not None and REMOTE_BASE in reason, reason
    assert dict(estimate_summary(estimate))["remote baselines"].startswith(f"{REMOTE_BASE} about $")
    assert provider.chats_arrived == 0


def test_tunelab_eval_prices_its_remote_baselines_and_holds_them_to_max_usd(cli, provider, tmp_path, tiny_model_dir, monkeypatch):
    from tunelab.cli.main import app

    monkeypatch.setattr("tunelab.config.OPENAI_BASE_URL", provider.url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    provider.base_answer = _follows_the_prompt
    test = _write(tmp_path / "test.jsonl", [{"text": f"{'alpha' if i % 2 else 'beta'} request {i}", "label": "BA"[i % 2]} for i in range(6)])
    train = _write(tmp_path / "train.jsonl", [{"text": f"training {i}", "label": "AB"[i % 2]} for i in range(8)])
    command = ["eval", "--data", test, "--task", "classify", "--model", str(tiny_model_dir), "--train", train,
               "--baselines", f"openai:{PRICED}", "--samples", "100", "--json"]
    refused = cli.invoke(app, [*command, "--max-usd", "1e-9"])
    assert refused.exit_code != 0 and provider.chats_arrived == 0
    said = " ".join(refused.stderr.split())
    assert f"baseline openai:{PRICED}: asking {PRICED}: 6 requests (0 cached)" in said, said
    assert isinstance(refused.exception, BudgetExceeded) and re.search(
        rf"about \$[\d.]+ \(openai:{PRICED}\) > --max-usd 1e-09: nothing was asked", str(refused.exception)), refused.exception
    result = cli.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert provider.chats_arrived == 6


def test_tunelab_runs_estimate_line_says_each_remote_baselines_price():
    from tunelab.cli.run import _step_summary

    priced = {"remote:gpt": {"model": PRICED, "requests": 5, "cached": 2, "usd_expected": 0.00002, "usd_max": 0.0001, "local": False},
              "openai:x": {"model": "x", "requests": 5, "cached": 0, "usd_expected": None, "usd_max": None, "local": False}}
    line = _step_summary("estimate", {"estimate": {"total_seconds": None, "remote_baselines": priced}})
    assert "; baseline remote:gpt about $0.000020, at most $0.00010 (5 requests, 2 cached)" in line, line
    assert "; baseline openai:x price unknown: x is not in the price table (5 requests, 0 cached)" in line, line
    cloud = _step_summary("estimate", {"estimate": {"backend": "openai", "usd": 1.0, "training_tokens": 10, "remote_baselines": priced}})
    assert cloud.startswith("the provider's fine-tuning: $1.00, 10 training tokens; baseline remote:gpt about $"), cloud
