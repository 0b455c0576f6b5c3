"""`tunelab review judge` sends the run's rows (test requests, both models' answers) to the judge's host: personal data
in them is said with that host before the first request, or refused with nothing asked (``--pii``, else the run's own
``data.pii``), as `tunelab run` and `tunelab eval` do for their own requests."""

from __future__ import annotations

import pytest
from fake_provider import FakeProvider
from typer.testing import CliRunner

from tunelab.config import EndpointConfig
from tunelab.errors import DataError
from tunelab.evaluation.judge import judge_run
from tunelab.evaluation.remote import remote_client
from tunelab.evaluation.result import EvalResult
from tunelab.evaluation.review import open_run_review
from tunelab.registry import Registry

JUDGE = "judge-model"
EMAIL = "jane.roe@acme-mail.com"
CARD = "4242 4242 4242 4242"


def _result(name: str) -> EvalResult:
    rows = []
    for i in range(6):
        prompt = f"refund order {i} to {EMAIL}" if i == 2 else f"question {i}"
        # The tuned model repeats a card number it was trained on: an answer, not the request, holds it.
        prediction = f"charged to {CARD}" if name == "tuned" and i == 4 else f"{name} answer {i}"
        rows.append({"id": f"q{i}", "source": "", "prompt": prompt, "reference": "r", "prediction": prediction, "scores": {}})
    return EvalResult("sft", name, len(rows), {}, rows)


@pytest.fixture
def run(tmp_path):
    run_dir = tmp_path / "runs" / "demo"
    _result("base").save(run_dir / "eval" / "base.json")
    _result("tuned").save(run_dir / "eval" / "tuned.json")
    registry = Registry(tmp_path / "runs" / "registry.db")
    registry.create_run(name="demo", task="sft", run_dir=str(run_dir))
    return registry, run_dir


@pytest.fixture
def judge():
    provider = FakeProvider(base_models=(JUDGE,))
    endpoint = EndpointConfig(base_url=provider.start(), name=JUDGE, concurrency=2, timeout_s=30, max_retries=0)
    yield provider, endpoint
    provider.stop()


def _chats(provider) -> int:
    return provider.count("POST", "/v1/chat/completions")


def _where(run_dir) -> str:
    """The masked example the line names: the first e-mail address, at its row's line of the sheet."""
    sheet = open_run_review(run_dir)
    return f"{sheet.path}:{sheet.lines['q2']} prompt: j***@acme-mail.com"


def test_refuse_asks_the_judge_nothing_and_names_where_one_is(run, judge):
    registry, run_dir = run
    provider, endpoint = judge
    with pytest.raises(DataError) as refused:
        judge_run(registry, "demo", remote_client(endpoint), pii="refuse")
    assert _chats(provider) == 0 and registry.list_reviews("demo") == []
    assert str(refused.value).startswith("the review sheet (12 requests to judge 6 rows) holds 1 e-mail address and 1 card number "
                                          f"(e.g. {_where(run_dir)}) and data.pii is refuse")
    assert EMAIL not in str(refused.value) and CARD not in str(refused.value)


def test_warn_names_the_host_once_before_the_first_request(run, judge):
    registry, run_dir = run
    provider, endpoint = judge
    said = []
    outcome = judge_run(registry, "demo", remote_client(endpoint), pii="warn",
                        on_warning=lambda line: said.append((line, _chats(provider))))
    host = endpoint.base_url.split("//", 1)[1].split("/", 1)[0]
    assert said == [(f"the review sheet (12 requests to judge 6 rows) holds 1 e-mail address and 1 card number (e.g. {_where(run_dir)}; "
                     f"data check --json lists them, masked); they will be sent to {host}", 0)]
    assert _chats(provider) == 12 and outcome.rows == 6  # warned, not blocked


def test_off_says_nothing_and_asks(run, judge):
    registry, _ = run
    provider, endpoint = judge
    said = []
    judge_run(registry, "demo", remote_client(endpoint), pii="off", on_warning=said.append)
    assert said == [] and _chats(provider) == 12


def test_the_runs_own_data_pii_is_the_default_and_the_cli_refuses_in_one_line(run, judge):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    registry, run_dir = run
    provider, endpoint = judge
    (run_dir / "config.yaml").write_text("task: sft\ndata:\n  pii: refuse\n")  # the run was made under data.pii: refuse
    runner = CliRunner()
    command = ["review", "judge", "demo", "--judge", JUDGE, "--endpoint", endpoint.base_url, "--registry", str(registry.path)]
    refused = runner.invoke(app, command)
    assert isinstance(refused.exception, DataError) and f"(e.g. {_where(run_dir)})" in str(refused.exception), refused.output
    assert _chats(provider) == 0
    # --pii warn overrides it: the host line on stderr (--json stays JSON), then the requests.
    warned = runner.invoke(app, [*command, "--pii", "warn", "--json"])
    assert warned.exit_code == 0, warned.output
    assert "they will be sent to" in " ".join(warned.stderr.split()) and EMAIL not in warned.stderr
    assert _chats(provider) == 12
    wrong = runner.invoke(app, [*command, "--pii", "maybe"])
    assert wrong.exit_code != 0 and "--pii" in str(wrong.exception)
