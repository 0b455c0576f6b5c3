"""`tunelab review judge`: a judge model (the loopback fake provider, scripted) reviews a run's blind sheet in both orders."""

from __future__ import annotations

import json
import re

import pytest
from fake_provider import FakeProvider
from typer.testing import CliRunner

from tunelab.config import EndpointConfig
from tunelab.evaluation.judge import JUDGE_PROMPT, judge_run, parse_verdict
from tunelab.evaluation.remote import remote_client
from tunelab.evaluation.result import EvalResult
from tunelab.evaluation.review import agreement, open_run_review, registry_judgments, score_registry_reviews
from tunelab.registry import Registry

JUDGE = "judge-model"
N = 10


class JudgeProvider(FakeProvider):
    """A judge whose verdict is scripted: ``prefer`` "tuned" (the tuned model's answer, wherever it is shown), "first"
    (whatever is shown first: pure position bias), or "garbage" (no verdict at all); ``garbage_ids`` answer garbage on those questions only."""

    def __init__(self, prefer: str = "tuned") -> None:
        super().__init__(base_models=(JUDGE,))
        self.prefer = prefer
        self.garbage_ids: set[str] = set()

    def chat(self, body: dict) -> dict:
        text = body["messages"][-1]["content"]
        question = re.search(r"\[Request\]\n(.*?)\n\n\[Answer A\]", text, re.S).group(1)
        first = re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]", text, re.S).group(1)
        if self.prefer == "garbage" or question in self.garbage_ids:
            verdict = "Both answers have merit; I lean towards the first."
        elif self.prefer == "first":
            verdict = "A"
        else:
            verdict = "A" if first.startswith("tuned") else "B"
        completion = super().chat(body)
        completion["choices"][0]["message"]["content"] = verdict
        return completion


def _result(name: str) -> EvalResult:
    rows = [{"id": f"q{i}", "source": "", "prompt": f"question {i}", "reference": "r", "prediction": f"{name} answer {i}", "scores": {}}
            for i in range(N)]
    return EvalResult("sft", name, len(rows), {}, rows)


@pytest.fixture
def run(tmp_path):
    run_dir = tmp_path / "runs" / "demo"
    _result("base").save(run_dir / "eval" / "base.json")
    _result("tuned").save(run_dir / "eval" / "tuned.json")
    registry = Registry(tmp_path / "runs" / "registry.db")
    record = registry.create_run(name="demo", task="sft", run_dir=str(run_dir))
    return registry, record


def _serve(prefer: str):
    provider = JudgeProvider(prefer)
    return provider, EndpointConfig(base_url=provider.start(), name=JUDGE, concurrency=4, timeout_s=30, max_retries=0)


def _chats(provider) -> int:
    return provider.count("POST", "/v1/chat/completions")


def _judge(registry, prefer: str, run: str = "demo", garbage_ids: frozenset[str] = frozenset()):
    """One `judge_run` of ``run`` against a judge preferring ``prefer``: its outcome and the (stopped) provider."""
    provider, endpoint = _serve(prefer)
    provider.garbage_ids = set(garbage_ids)
    try:
        return judge_run(registry, run, remote_client(endpoint)), provider
    finally:
        provider.stop()


def test_a_judge_preferring_the_tuned_answer_in_both_orders_gives_it_every_row(run):
    registry, record = run
    outcome, provider = _judge(registry, "tuned")
    assert _chats(provider) == 2 * N  # each row asked twice
    assert (outcome.judged, outcome.position_disagreements, outcome.unparseable, outcome.recorded) == (N, 0, 0, N)
    assert outcome.reviewer == f"judge:{JUDGE}"
    assert (outcome.score.tuned_wins, outcome.score.base_wins, outcome.score.ties, outcome.score.win_rate) == (N, 0, 0, 1.0)
    assert outcome.score.low < 1.0  # an interval, not a point
    # The same score `tunelab review score --run` computes from the registry.
    sheet = open_run_review(record.run_dir)
    assert score_registry_reviews(registry, record.id, sheet).win_rate == 1.0


def test_a_judge_that_follows_position_gets_ties_not_wins(run):
    registry, _ = run
    outcome, provider = _judge(registry, "first")
    # On the sheet's order it says A, on the swapped order A again (= B on the sheet): every row disagrees.
    assert (outcome.judged, outcome.position_disagreements) == (N, N)
    assert (outcome.score.ties, outcome.score.tuned_wins, outcome.score.base_wins, outcome.score.win_rate) == (N, 0, 0, 0.5)


def test_garbage_answers_are_counted_never_recorded(run):
    registry, record = run
    outcome, provider = _judge(registry, "tuned", garbage_ids=frozenset({"question 0", "question 1", "question 2"}))
    assert (outcome.unparseable, outcome.judged, outcome.recorded) == (3, N - 3, N - 3)
    assert outcome.first_unparseable.startswith("Both answers")
    recorded = {review.example_id for review in registry.list_reviews(record.id)}
    assert recorded == {f"q{i}" for i in range(3, N)}


def test_all_garbage_records_nothing_and_has_no_score(run):
    registry, record = run
    outcome, provider = _judge(registry, "garbage")
    assert (outcome.unparseable, outcome.judged, outcome.recorded, outcome.score) == (N, 0, 0, None)
    assert registry.list_reviews(record.id) == []


def test_a_rerun_asks_nothing_and_records_nothing_twice(run):
    registry, record = run
    provider, endpoint = _serve("tuned")
    try:
        first = judge_run(registry, "demo", remote_client(endpoint))
        asked = _chats(provider)
        again = judge_run(registry, "demo", remote_client(endpoint))
        assert _chats(provider) == asked  # every answer from the request cache
    finally:
        provider.stop()
    assert again.usage.cached == 2 * N and again.recorded == 0
    assert len(registry.list_reviews(record.id)) == N == first.recorded
    assert again.score.win_rate == first.score.win_rate


def test_the_judge_agrees_with_a_person_through_the_one_agreement(run):
    registry, record = run
    sheet = open_run_review(record.run_dir)
    # ann prefers the tuned answer on all rows but the last two, where she prefers the base model's.
    for index, row in enumerate(sheet.rows):
        wanted = "tuned" if index < N - 2 else "base"
        side = next(side for side, model in sheet.sides[row["id"]].items() if model == wanted)
        registry.add_review(record.id, sheet=sheet.path, example_id=row["id"], reviewer="ann", preference=side)
    outcome, provider = _judge(registry, "tuned")
    expected = [a for a in agreement(registry_judgments(registry, record.id, sheet)) if f"judge:{JUDGE}" in (a.reviewer_a, a.reviewer_b)]
    assert [a.to_dict() for a in outcome.agreements] == [a.to_dict() for a in expected]
    assert (outcome.agreements[0].rows, outcome.agreements[0].agreed) == (N, N - 2)
    # ann and the judge both count in the run's score (each judgment once).
    assert score_registry_reviews(registry, record.id, sheet).judged == 2 * N


def test_rows_with_the_same_answer_are_not_asked(tmp_path):
    run_dir = tmp_path / "runs" / "same"
    base = _result("base")
    tuned = _result("tuned")
    tuned.rows[0]["prediction"] = base.rows[0]["prediction"]
    base.save(run_dir / "eval" / "base.json")
    tuned.save(run_dir / "eval" / "tuned.json")
    registry = Registry(tmp_path / "runs" / "registry.db")
    registry.create_run(name="same", task="sft", run_dir=str(run_dir))
    outcome, provider = _judge(registry, "tuned", run="same")
    assert (outcome.identical, outcome.judged, _chats(provider)) == (1, N - 1, 2 * (N - 1))


@pytest.mark.parametrize(("text", "verdict"), [
    ("A", "A"), (" b\n", "B"), ("Tie", "tie"), ("**A**", "A"), ("B.", "B"), ('"tie"', "tie"),
    ("A or B", None), ("Answer: A", None), ("", None), (None, None), ("AB", None),
])
def test_verdicts_are_read_strictly(text, verdict):
    assert parse_verdict(text) == verdict


def test_the_prompt_asks_for_one_of_three_words():
    assert "exactly one of: A, B, tie" in JUDGE_PROMPT


def test_the_cli_judges_a_run_end_to_end(run):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    registry, _ = run
    provider, endpoint = _serve("tuned")
    provider.garbage_ids = {"question 4"}
    runner = CliRunner()
    try:
        command = ["review", "judge", "demo", "--judge", JUDGE, "--endpoint", endpoint.base_url, "--registry", str(registry.path)]
        shown = runner.invoke(app, command)
        assert shown.exit_code == 0, shown.output
        as_json = runner.invoke(app, [*command, "--json"])
        assert as_json.exit_code == 0, as_json.output
    finally:
        provider.stop()
    assert _chats(provider) == 2 * N  # the --json rerun from the cache
    assert "judged 9 of 10 rows" in shown.output and "win rate 100.0%" in shown.output
    assert "disagreed on 0 rows" in shown.output and "unparseable: 1 rows" in shown.output
    assert "cost unknown" in shown.output
    data = json.loads(as_json.stdout)  # stdout: the price line goes to stderr
    assert (data["recorded"], data["unparseable"], data["score"]["tuned_wins"], data["usage"]["cached"]) == (0, 1, 9, 2 * N)
    score = runner.invoke(app, ["review", "score", "--run", "demo", "--registry", str(registry.path), "--json"])
    assert score.exit_code == 0, score.output
    assert json.loads(score.output)["judged"] == 9
    # A judge named without an endpoint: told how to name one.
    wrong = runner.invoke(app, ["review", "judge", "demo", "--judge", JUDGE, "--registry", str(registry.path)])
    assert wrong.exit_code != 0 and "--endpoint" in (getattr(wrong.exception, "hint", "") or "")


def test_a_failed_request_records_nothing_and_a_rerun_asks_only_it(run):
    registry, record = run
    provider, endpoint = _serve("tuned")
    provider.refuse_next["POST /v1/chat/completions"] = [500]  # max_retries=0: that request fails for good
    try:
        first = judge_run(registry, "demo", remote_client(endpoint))
        again = judge_run(registry, "demo", remote_client(endpoint))
    finally:
        provider.stop()
    assert (first.failed, first.judged, first.recorded) == (1, N - 1, N - 1)
    assert (again.failed, again.judged, again.recorded) == (0, N, 1)
    assert _chats(provider) == 2 * N + 1  # the failed one asked again, nothing else
    assert len(registry.list_reviews(record.id)) == N


def test_an_openai_judge_without_its_key_is_refused_before_asking(run, monkeypatch):
    from tunelab.cli.main import _register_commands, app
    from tunelab.errors import ConfigError

    _register_commands()
    registry, record = run
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["review", "judge", "demo", "--judge", "openai:gpt-4o-mini", "--registry", str(registry.path)])
    assert isinstance(result.exception, ConfigError) and "OPENAI_API_KEY" in str(result.exception), repr(result.exception)
    assert registry.list_reviews(record.id) == []


def test_a_single_turn_request_is_what_it_was():
    """The judge's request for a one-message prompt keeps its text to the character: the request cache's key is made of
    it, so a change would ask (and pay for) every judgment already made again."""
    import hashlib

    from tunelab.evaluation.judge import judge_conversation

    messages = judge_conversation("What is the capital of France?\nuser: a line that reads like a turn", "Paris.", "Lyon.")
    text = json.dumps(messages, ensure_ascii=False)
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == "d2576a456ff28dc54dc50497c1f4c3ba403a811d433faf8644575541afbb0188"


class RecordingJudge(FakeProvider):
    """A judge that says A and keeps each request's messages."""

    def __init__(self) -> None:
        super().__init__(base_models=(JUDGE,))
        self.asked: list[str] = []

    def chat(self, body: dict) -> dict:
        self.asked.append(body["messages"][-1]["content"])
        completion = super().chat(body)
        completion["choices"][0]["message"]["content"] = "A"
        return completion


def test_a_multi_turn_prompt_is_shown_whole_and_delimited(tmp_path):
    """The answers were written for the whole conversation (the key keeps it): the judge reads every turn, each one's
    role and text unmistakably apart, where the sheet's one-string view made a quoted transcript in one message read
    exactly like turns of its own."""
    from tunelab.evaluation.evaluate import prompt_text

    conversation = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    quoted = [{"role": "user", "content": prompt_text(conversation)}]  # one message quoting the same transcript
    run_dir = tmp_path / "runs" / "chat"
    for name in ("base", "tuned"):
        rows = [{"id": f"q{i}", "source": "", "prompt": prompt_text(messages), "reference": "r", "prediction": f"{name} says Ada {i}",
                 "scores": {}, **({"messages": messages} if len(messages) > 1 else {})}
                for i, messages in enumerate([conversation, quoted])]
        EvalResult("sft", name, len(rows), {}, rows).save(run_dir / "eval" / f"{name}.json")
    registry = Registry(tmp_path / "runs" / "registry.db")
    registry.create_run(name="chat", task="sft", run_dir=str(run_dir))
    provider = RecordingJudge()
    endpoint = EndpointConfig(base_url=provider.start(), name=JUDGE, concurrency=1, timeout_s=30, max_retries=0)
    try:
        judge_run(registry, "chat", remote_client(endpoint))
    finally:
        provider.stop()
    assert len(provider.asked) == 4
    # Each row's two requests (both orders), its answers' number taken out: what is left is how its prompt was shown.
    by_row = [{text.replace(f"says Ada {i}", "says Ada") for text in provider.asked if f"says Ada {i}" in text} for i in range(2)]
    assert len(by_row[0]) == len(by_row[1]) == 2
    assert by_row[0] != by_row[1], "the judge cannot tell a conversation from one message quoting it"
    for text in by_row[0]:
        shown = text.split("[Conversation]\n", 1)[1].split("\n\n[Answer A]", 1)[0]
        assert [json.loads(line) for line in shown.splitlines()] == conversation
    for text in by_row[1]:  # the one-message prompt: the single-turn text
        assert text.startswith(JUDGE_PROMPT.split("{question}")[0] + quoted[0]["content"] + "\n\n[Answer A]")
