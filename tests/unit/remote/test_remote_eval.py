"""A remote model is a model: `tunelab serve` on the loopback, asked through tunelab.remote, scored like a local one."""

from __future__ import annotations

import json

import pytest

from tunelab.config import DataConfig, EndpointConfig, EvalConfig, parse_config
from tunelab.data.records import ClassifyRecord, SFTRecord
from tunelab.errors import ConfigError
from tunelab.estimate.prices import InferencePrice, PriceTable
from tunelab.evaluation.remote import UNPARSED, classify_rows, evaluate_remote, parse_label, remote_client
from tunelab.remote import RemoteClient, RequestCache

QUESTIONS = ["What is the capital of France?", "What is two plus two?", "Name a colour.", "Say hello.", "Count to three."]


def sft_records():
    return [SFTRecord(({"role": "user", "content": q}, {"role": "assistant", "content": "Paris is the capital."}), source=f"t:{i}")
            for i, q in enumerate(QUESTIONS)]


def chat_requests(counter) -> int:
    """Chat requests that reached the server so far."""
    return counter.chat


def test_remote_sft_answers_equal_the_local_evaluation_of_the_same_model(endpoint, talkative_model_dir):
    from tunelab.evaluation.evaluate import evaluate
    from tunelab.runs import load_model

    config, data = EvalConfig(max_new_tokens=8), DataConfig()
    remote = evaluate_remote(remote_client(endpoint), sft_records(), "sft", config=config, data_config=data)
    local = evaluate(load_model(str(talkative_model_dir)), sft_records(), "sft", config=config, data_config=data)
    assert [r["prediction"] for r in remote.rows] == [r["prediction"] for r in local.rows]
    assert all(r["prediction"] for r in remote.rows)  # real text, not only whitespace
    assert remote.metrics["rougeL"] == pytest.approx(local.metrics["rougeL"])
    assert remote.test_fingerprint == local.test_fingerprint  # so the two pair in the bootstrap
    # Answers cut at eval.max_new_tokens are counted alike (the endpoint's finish_reason "length", the local stop ids).
    cut = [w for w in local.warnings if "reached eval.max_new_tokens=8" in w]
    assert cut and cut == [w for w in remote.warnings if "reached eval.max_new_tokens=8" in w], (local.warnings, remote.warnings)
    usage = remote.settings["usage"]
    assert usage["requests"] == 5 and usage["cached"] == 0 and usage["input_tokens"] > 0
    assert usage["cost_usd"] is None and any("cost is unknown" in w for w in remote.warnings)  # unknown price, never 0


def test_a_rerun_is_served_from_the_cache_and_the_server_sees_no_request(endpoint, served):
    counter = served[2]
    config, data = EvalConfig(max_new_tokens=6), DataConfig()
    first = evaluate_remote(remote_client(endpoint), sft_records(), "sft", config=config, data_config=data)
    before = chat_requests(counter)
    again = evaluate_remote(remote_client(endpoint), sft_records(), "sft", config=config, data_config=data)
    assert chat_requests(counter) == before
    assert again.settings["usage"]["cache_hit_rate"] == 1.0
    assert [r["prediction"] for r in again.rows] == [r["prediction"] for r in first.rows]
    # A different decoding setting is a different request: not a cache hit.
    third = evaluate_remote(remote_client(endpoint), sft_records()[:1], "sft", config=EvalConfig(max_new_tokens=7), data_config=data)
    assert third.settings["usage"]["cached"] == 0 and chat_requests(counter) == before + 1


def test_cost_comes_from_the_price_table_per_token(endpoint, tmp_path):
    price = InferencePrice("Test", endpoint.name, usd_per_million_input_tokens=2.0, usd_per_million_output_tokens=10.0, published="test")
    client = RemoteClient(endpoint, cache=RequestCache(tmp_path / "c.db"), prices=PriceTable("t", [], [], [price]))
    answers = client.chat_many([[{"role": "user", "content": q}] for q in QUESTIONS[:3]], max_tokens=5)
    usage = client.usage(answers)
    tokens_in, tokens_out = sum(a.input_tokens for a in answers), sum(a.output_tokens for a in answers)
    assert usage.cost_usd == pytest.approx((2.0 * tokens_in + 10.0 * tokens_out) / 1e6)
    assert usage.paid_usd == pytest.approx(usage.cost_usd)
    rerun = client.usage(client.chat_many([[{"role": "user", "content": q}] for q in QUESTIONS[:3]], max_tokens=5))
    assert rerun.paid_usd == 0 and rerun.cost_usd == pytest.approx(usage.cost_usd)  # production cost stays, the rerun pays 0
    assert rerun.cost_per_1000_requests == pytest.approx(1000 * usage.cost_usd / 3)


def test_parse_label_reads_names_and_refuses_ambiguity():
    labels = ["card_arrival", "card", "refund"]
    assert parse_label("card_arrival", labels) == "card_arrival"
    assert parse_label(" Card arrival. ", labels) == "card_arrival"
    assert parse_label("Category: refund", labels) == "refund"
    assert parse_label("I think this is about card arrival.", labels) == "card_arrival"  # the longer name is meant
    assert parse_label("refund or card?", labels) is None  # two unrelated names: ambiguous
    assert parse_label("", labels) is None and parse_label("weather", labels) is None


def test_unparsed_classify_answers_count_wrong_and_are_listed():
    records = [ClassifyRecord("a", "refund", source="t:1"), ClassifyRecord("b", "card", source="t:2")]
    rows, metrics, warnings = classify_rows(records, ["refund", "no idea"], ["card", "refund"])
    assert [r["prediction"] for r in rows] == ["refund", UNPARSED]
    assert metrics["accuracy"] == 0.5 and metrics["unparsed_answers"] == 1
    assert any("t:2" in w for w in warnings)


def test_remote_classify_asks_the_names_prompt(endpoint):
    records = [ClassifyRecord(f"my card problem {i}", label) for i, label in enumerate(["billing", "account", "billing", "technical"])]
    result = evaluate_remote(remote_client(endpoint), records, "classify", config=EvalConfig(max_new_tokens=4), data_config=DataConfig())
    assert result.n == 4 and result.labels == ["account", "billing", "technical"]
    assert all(r["prediction"] in [*result.labels, UNPARSED] for r in result.rows)
    assert "Categories:\naccount\nbilling\ntechnical" in json.dumps(result.settings) or result.settings["prompt"] == "zero_shot_names"


def test_text_task_and_missing_key_are_clear_errors(endpoint, monkeypatch):
    with pytest.raises(ConfigError, match="classify and sft"):
        evaluate_remote(remote_client(endpoint), [], "text", config=EvalConfig(), data_config=DataConfig())
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        remote_client(EndpointConfig.parse_name("openai:gpt-4o-mini"))


def test_remote_model_as_a_baseline_in_the_pipeline_evaluation(endpoint, talkative_model_dir):
    from tunelab.evaluation.baselines import evaluate_with_baselines
    from tunelab.runs import load_model

    config = parse_config({"task": "sft", "eval": {"max_new_tokens": 6, "bootstrap_samples": 200,
                                                    "baselines": ["retrieval", {"endpoint": endpoint.model_dump(), "as": "served"}]}})
    assert config.eval.baselines == ["retrieval", "remote:served"]
    train = [SFTRecord(({"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."})) for i in range(4)]
    from tunelab.evaluation.answering import LocalModel

    result, opponents, verdict = evaluate_with_baselines(
        LocalModel(load_model(str(talkative_model_dir))), sft_records(), "sft", baselines=config.eval.baselines, train=train,
        config=config.eval, data_config=config.data,
    )
    assert set(opponents) == {"retrieval", "remote:served"}
    assert opponents["remote:served"].baseline_name == "remote:served"
    # The tiny model locally and the same model served remotely answer alike: no difference on any metric.
    assert [r["prediction"] for r in opponents["remote:served"].rows] == [r["prediction"] for r in result.rows]
    assert verdict.comparisons["remote:served"].metric("rougeL").difference == pytest.approx(0.0)


@pytest.mark.parametrize("name", ["distill.yaml", "cloud.yaml"])
def test_the_remote_example_configs_parse(name):
    from pathlib import Path

    from tunelab.config import load_config

    config = load_config(Path(__file__).resolve().parents[3] / "examples" / "qa-assistant" / name)
    assert config.distill.teacher is not None or config.train.backend == "openai"
    assert Path(config.data.train).is_file() and Path(config.data.test).is_file()


def test_a_sampled_remote_evaluation_of_tunelab_serve_gets_answers(endpoint):
    """tunelab's own client sends a seed with a sampled request (``eval.temperature`` > 0); its own server refused every one."""
    config = EvalConfig(max_new_tokens=6, temperature=0.8, seed=3)
    result = evaluate_remote(remote_client(endpoint), sft_records(), "sft", config=config, data_config=DataConfig())
    assert not [w for w in result.warnings if "HTTP 400" in w or "seed" in w], result.warnings
    assert all(r["prediction"] for r in result.rows)
