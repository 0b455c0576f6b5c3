"""Money before spending: a batch of chat requests is priced before the first is sent (``RemoteClient.estimate``), said
in one line by `tunelab eval`, `tunelab review judge` and `tunelab distill`, and refused over a cap.

The provider is the loopback fake; its model is priced by a test price table (patched where the client reads it), so
every number here is computed by hand from that table.
"""

from __future__ import annotations

import json
import math

import pytest
from fake_provider import FakeProvider

from tunelab.cli.main import app
from tunelab.config import EndpointConfig, parse_config
from tunelab.errors import BudgetExceeded
from tunelab.estimate.prices import InferencePrice, PriceTable
from tunelab.evaluation.result import EvalResult
from tunelab.registry import Registry
from tunelab.remote.cache import RequestCache
from tunelab.remote.client import RemoteClient

PRICED = "priced-model"
UNPRICED = "unpriced-model"
TABLE = PriceTable("2026-01-01", [], [], [InferencePrice("Test", PRICED, 2.0, 10.0, "test")])
TINY_CAP = "0.0000001"  # below any priced batch here


@pytest.fixture(autouse=True)
def test_prices(monkeypatch):
    """The client's default price table is the test one (RemoteClient reads it when given none)."""
    monkeypatch.setattr("tunelab.remote.client.load_price_table", lambda path=None: TABLE)


@pytest.fixture
def provider():
    provider = FakeProvider(base_models=(PRICED, UNPRICED))
    provider.url = provider.start()
    yield provider
    provider.stop()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def by_hand(text: str) -> int:
    """The counting rule as documented: characters / 4, rounded up."""
    return math.ceil(len(text) / 4)


def test_the_estimate_is_the_hand_computation_and_cached_requests_cost_nothing(provider, tmp_path):
    client = RemoteClient(EndpointConfig(base_url=provider.url, name=PRICED, max_retries=0), cache=RequestCache(tmp_path / "c.db"))
    chats = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is two plus two?"}],
             [{"role": "user", "content": "Name a colour."}]]
    estimate = client.estimate(chats, max_tokens=20, expected_output_tokens=[3, None])
    inputs = (by_hand("Be brief.") + 4) + (by_hand("What is two plus two?") + 4) + (by_hand("Name a colour.") + 4)
    assert (estimate.requests, estimate.cached, estimate.input_tokens, estimate.max_output_tokens) == (2, 0, inputs, 40)
    assert estimate.expected_output_tokens == 3 + 3  # the unknown answer counts at the mean of the known ones
    assert estimate.usd_expected == pytest.approx((inputs * 2.0 + 6 * 10.0) / 1e6)
    assert estimate.usd_max == pytest.approx((inputs * 2.0 + 40 * 10.0) / 1e6)
    line = estimate.describe()
    assert line.startswith(f"asking {PRICED}: 2 requests (0 cached), about {inputs} input tokens, at most 40 output tokens: about $")
    assert line.endswith("by the price table of 2026-01-01")
    assert provider.chats_arrived == 0  # pricing asks nothing

    client.chat_many(chats, max_tokens=20)
    assert provider.chats_arrived == 2
    again = client.estimate(chats, max_tokens=20, expected_output_tokens=[3, None])
    assert (again.requests, again.cached, again.input_tokens, again.usd_expected, again.usd_max) == (2, 2, 0, 0.0, 0.0)
    # Another max_tokens is another request (the cache key is the body as sent): not cached.
    assert client.estimate(chats, max_tokens=21).cached == 0


def test_a_model_without_price_has_no_number_and_its_cap_cannot_be_checked(tmp_path):
    remote = RemoteClient(EndpointConfig(base_url="https://api.example.invalid/v1", name=UNPRICED))
    estimate = remote.estimate([[{"role": "user", "content": "hi"}]], max_tokens=8)
    assert estimate.usd_expected is None and estimate.usd_max is None and not estimate.local
    line = estimate.describe("--max-usd", 0.5)
    assert f"price unknown (no price for {UNPRICED} in the price table); --max-usd 0.5 cannot be checked" in line
    assert "$" not in line
    estimate.refuse_over("--max-usd", 0.5, "hint")  # no number: no refusal


def test_an_unpriced_model_on_this_machine_is_local_and_a_priced_one_there_is_still_priced(provider):
    local = RemoteClient(EndpointConfig(base_url=provider.url, name=UNPRICED)).estimate([[{"role": "user", "content": "hi"}]], max_tokens=8)
    assert local.local and local.usd_expected == 0.0 and "local" in local.describe()
    local.refuse_over("--max-usd", 1e-12, "hint")  # nothing billed: never over a cap
    # A proxy on localhost that forwards to a paid provider bills: a model the table prices is priced wherever it is.
    priced = RemoteClient(EndpointConfig(base_url=provider.url, name=PRICED)).estimate([[{"role": "user", "content": "hi"}]], max_tokens=8)
    assert not priced.local and priced.usd_max > 0


def _sft_test_file(tmp_path, n=4):
    return write_jsonl(tmp_path / "test.jsonl", [{"prompt": f"What is {i} plus {i}?", "completion": f"It is {2 * i}."} for i in range(n)])


def test_eval_says_the_cost_before_asking_and_refuses_over_max_usd(cli, provider, tmp_path):
    test = _sft_test_file(tmp_path)
    base = ["eval", "--data", str(test), "--task", "sft", "--endpoint", provider.url, "--endpoint-model", PRICED, "--max-new-tokens", "6"]
    refused = cli.invoke(app, [*base, "--max-usd", TINY_CAP])
    assert isinstance(refused.exception, BudgetExceeded), refused.output
    # The error `tunelab run` refuses over budget.max_usd with: the CLI's handler exits with its code, 2.
    assert refused.exit_code != 0 and BudgetExceeded.exit_code == 2
    assert provider.chats_arrived == 0
    assert f"asking {PRICED}: 4 requests (0 cached)" in refused.stderr and "at most 24 output tokens" in refused.stderr
    assert f"> --max-usd {float(TINY_CAP):g}: nothing was asked" in str(refused.exception)

    allowed = cli.invoke(app, [*base, "--max-usd", "100", "--json"])
    assert allowed.exit_code == 0, allowed.output
    assert provider.chats_arrived == 4 and json.loads(allowed.stdout)["n"] == 4  # the line is on stderr: --json stays JSON
    rerun = cli.invoke(app, [*base, "--max-usd", TINY_CAP])  # every request cached: it costs $0, under any cap
    assert rerun.exit_code == 0, rerun.output
    assert f"asking {PRICED}: 4 requests (4 cached), about 0 input tokens" in rerun.stderr and provider.chats_arrived == 4


def test_eval_of_an_unpriced_remote_model_asks_and_says_the_cap_cannot_be_checked(cli, provider, tmp_path, monkeypatch):
    monkeypatch.setattr("tunelab.remote.client.is_loopback", lambda url: False)  # as if the provider were elsewhere
    test = _sft_test_file(tmp_path, 3)
    result = cli.invoke(app, ["eval", "--data", str(test), "--task", "sft", "--endpoint", provider.url, "--endpoint-model", UNPRICED,
                              "--max-new-tokens", "6", "--max-usd", TINY_CAP])
    assert result.exit_code == 0, result.output
    assert f"price unknown (no price for {UNPRICED} in the price table); --max-usd {float(TINY_CAP):g} cannot be checked" in result.stderr
    assert provider.chats_arrived == 3


def test_review_judge_refuses_over_max_usd_before_asking(cli, provider, tmp_path):
    run_dir = tmp_path / "runs" / "demo"
    for name in ("base", "tuned"):
        rows = [{"id": f"q{i}", "source": "", "prompt": f"question {i}", "reference": "r", "prediction": f"{name} answer {i}", "scores": {}}
                for i in range(5)]
        EvalResult("sft", name, len(rows), {}, rows).save(run_dir / "eval" / f"{name}.json")
    registry = tmp_path / "runs" / "registry.db"
    Registry(registry).create_run(name="demo", task="sft", run_dir=str(run_dir))
    refused = cli.invoke(app, ["review", "judge", "demo", "--judge", PRICED, "--endpoint", provider.url, "--registry", str(registry),
                               "--max-usd", TINY_CAP])
    assert isinstance(refused.exception, BudgetExceeded), refused.output
    assert provider.chats_arrived == 0
    # Each row asked in both orders; a verdict is expected to be one token, at most JUDGE_MAX_TOKENS (8).
    assert f"asking {PRICED}: 10 requests (0 cached)" in refused.stderr and "at most 80 output tokens" in refused.stderr


def _distill_config(provider, tiny_model_dir, tmp_path) -> dict:
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"What is {i} plus one?", "completion": f"It is {i + 1}."} for i in range(10)])
    return {
        "task": "sft", "name": "distilled", "model": str(tiny_model_dir),
        "data": {"train": str(train), "test_size": 0.3, "validation_size": 0.15, "max_length": 64},
        "train": {"max_steps": 2, "output_dir": str(tmp_path / "runs")},
        "eval": {"max_new_tokens": 6, "baselines": []},
        "budget": {"max_usd": float(TINY_CAP)},
        "distill": {"teacher": {"base_url": provider.url, "name": PRICED}},
    }


def test_distill_refuses_over_budget_max_usd_before_the_teacher_is_asked(provider, tiny_model_dir, tmp_path):
    from tunelab.tasks.distill import distill_run_dir, run_distill

    config = parse_config(_distill_config(provider, tiny_model_dir, tmp_path))
    events = []
    with pytest.raises(BudgetExceeded, match="budget.max_usd"):
        run_distill(config, calibrate=False, on_event=lambda step, status, details: events.append((step, status, details)))
    assert provider.chats_arrived == 0
    assert not distill_run_dir(config).exists()  # refused before the run folder: the same config can run again
    said = [details["line"] for step, status, details in events if (step, status) == ("teacher", "estimate")]
    # The 7 training and validation prompts and the 3 test prompts the teacher is evaluated on.
    assert len(said) == 1 and said[0].startswith(f"asking {PRICED}: 10 requests (0 cached)")


def test_estimate_of_a_distill_config_prices_the_teacher_beside_the_training(cli, provider, tiny_model_dir, tmp_path):
    import yaml

    config = tmp_path / "distill.yaml"
    config.write_text(yaml.safe_dump(_distill_config(provider, tiny_model_dir, tmp_path)))
    result = cli.invoke(app, ["estimate", str(config), "--no-calibrate", "--json"])
    assert result.exit_code == 0, result.output
    teacher = json.loads(result.stdout)["teacher"]
    assert (teacher["model"], teacher["requests"], teacher["cached"], teacher["over"]) == (PRICED, 10, 0, True)
    assert teacher["max_output_tokens"] == 10 * 6 and teacher["usd_max"] > teacher["usd_expected"] > 0
    assert provider.chats_arrived == 0 and not (tmp_path / "runs").exists()  # priced, nothing asked, nothing written
    shown = cli.invoke(app, ["estimate", str(config), "--no-calibrate"])
    assert f"distillation teacher: asking {PRICED}: 10 requests (0 cached)" in shown.stdout
    assert "over budget: the teacher's requests" in shown.stdout
