"""A strong model as one more reviewer of a run's blind A/B sheet (MT-Bench / AlpacaEval style pairwise judging).

The judge reads the rows a person reads on the Review page: the run's own sheet (``open_run_review``), with its
sides; the examples whose two answers are the same answer (``ReviewSheet.identical``, the one rule ``not_asked``) are
not asked, as nobody is asked them. A row whose prompt is a conversation (the key keeps it) is shown whole, turn by
turn (``judge_conversation``): its answers were written for all of it. A text run's row (a document's opening, two
continuations and the author's own, ``review.REVIEW_QUESTIONS``) is asked which continuation is closer to the author's
voice, with the author's continuation shown as the measure of that voice, as the reviewer's sheet shows it.
Its judgments go into the registry's reviews table as the reviewer ``judge:<model name>``, so ``tunelab review
score --run``, the web page and ``agreement`` (the judge against each person) read them through the one scoring rule.

Position bias: a language model judging two answers tends to prefer the one shown first (or second), whatever they
say (Zheng et al. 2023, "Judging LLM-as-a-judge"). The sheet put each pair's sides at random, so such a bias would
only add noise to the win rate, but noise that looks like a verdict row by row. Each row is therefore asked twice,
once as on the sheet and once with the two answers swapped: the row is A or B only when both orders prefer the same
answer, and a tie when they disagree (the judge's preference there was the position, not the answer). The
disagreements are counted, so a judge that mostly follows position is seen as one.

An answer that is not exactly "A", "B" or "tie" (``parse_verdict``) records nothing for its row and is counted: a
guess at what the judge meant would be a judgment nobody made. Every request goes through ``RemoteClient.chat_many``
(concurrency, the request cache, retries, Retry-After, cost): a rerun asks nothing again, and it records a judgment
only where the judge's latest one of that row differs, so the append-only reviews table gets no duplicates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.data.pii import check_texts_sent, message_fields
from tunelab.data.records import Message, message_text
from tunelab.errors import DataError
from tunelab.evaluation.review import (
    Agreement,
    ReviewScore,
    ReviewSheet,
    agreement,
    open_run_review,
    registry_judgments,
    score_judgments,
)

if TYPE_CHECKING:
    from tunelab.registry.store import Registry
    from tunelab.remote.client import RemoteClient, RequestEstimate, Usage

JUDGE_PREFIX = "judge:"
# A verdict is one word: a few tokens leave room for a trailing period or a newline, not for an essay.
JUDGE_MAX_TOKENS = 8
VERDICT_TOKENS = 1  # what a judge that follows the prompt answers ("A", "B", "tie"): the expected cost's answer length
JUDGE_PROMPT = """You are judging two answers to the same request. Decide which answer is better: more correct, more \
helpful and more to the point for the request. Ignore which answer comes first and how long each is.

[Request]
{question}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Reply with exactly one of: A, B, tie. Write nothing else."""
# A prompt of more than one message (earlier turns, the user's own system message): the answers were written for the
# whole conversation, so the judge reads all of it, one JSON object a turn. JSON keeps the turns apart: a message
# quoting a transcript cannot read as turns of its own, as it could in the sheet's "role: text" lines. A one-message
# prompt keeps JUDGE_PROMPT's text to the character: the request cache's keys are made of it.
JUDGE_CONVERSATION_PROMPT = """You are judging two answers to the same conversation: each answer is the assistant's next turn after the conversation's last message. Decide which answer is better: more correct, more helpful and more to the point for the conversation. Ignore which answer comes first and how long each is.

[Conversation]
{conversation}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Reply with exactly one of: A, B, tie. Write nothing else."""

# A text run's row: two continuations of a document's opening. What is judged is the voice (style, word choice, rhythm)
# the run was tuned on, not helpfulness; the author's own continuation is the sample of it, and its content is not
# what either continuation should match.
JUDGE_CONTINUATION_PROMPT = """You are judging two continuations of the same opening of a text by one author. Decide \
which continuation is closer to the author's voice: style, word choice, rhythm and register, and how naturally it \
follows on from the opening. The author's own continuation is shown as a sample of the voice; a continuation need not \
say the same things. Ignore which continuation comes first and how long each is.

[Opening]
{opening}

[The author's own continuation]
{reference}

[Continuation A]
{answer_a}

[Continuation B]
{answer_b}

Reply with exactly one of: A, B, tie. Write nothing else."""


def judge_reviewer(model: str) -> str:
    """The reviewer name a judge model's judgments are stored under: ``judge:<model name>``."""
    return f"{JUDGE_PREFIX}{model}"


def judge_conversation(
    question: str, answer_a: str, answer_b: str, messages: Sequence[Message] | None = None, *, task: str | None = None,
    reference: str | None = None,
) -> list[dict[str, str]]:
    """The one chat a judge is asked for one order of one row: ``question`` is the sheet's prompt; ``messages`` the
    conversation behind it (``ReviewSheet.conversations``), shown instead when it has more than one message. ``task``
    "text" (``ReviewSheet.task``): the prompt is an opening and the answers are continuations, judged against the
    author's ``reference``."""
    if task == "text":
        content = JUDGE_CONTINUATION_PROMPT.format(opening=question, reference=reference or "-", answer_a=answer_a, answer_b=answer_b)
        return [{"role": "user", "content": content}]
    if messages is not None and len(messages) > 1:
        turns = "\n".join(json.dumps({"role": m["role"], "content": message_text(m)}, ensure_ascii=False) for m in messages)
        return [{"role": "user", "content": JUDGE_CONVERSATION_PROMPT.format(conversation=turns, answer_a=answer_a, answer_b=answer_b)}]
    return [{"role": "user", "content": JUDGE_PROMPT.format(question=question, answer_a=answer_a, answer_b=answer_b)}]


def parse_verdict(text: str | None) -> str | None:
    """"A", "B" or "tie" when the whole answer is one of them (any case; surrounding spaces, quotes, ``**`` and a final
    period aside), else None: an answer that says more is not read for a letter in it."""
    if text is None:
        return None
    word = text.strip().strip("\"'`*").strip().removesuffix(".").strip("\"'`*").strip().lower()
    return {"a": "A", "b": "B", "tie": "tie"}.get(word)


def run_pii_setting(run_dir: str | Path) -> str:
    """The run's own ``data.pii`` (its config.yaml); "warn", the default, when the folder has none or it cannot be read."""
    import yaml

    from tunelab.runs import RunFolder

    try:
        raw = yaml.safe_load(RunFolder(Path(run_dir)).config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "warn"
    data = raw.get("data") if isinstance(raw, dict) else None
    setting = data.get("pii") if isinstance(data, dict) else None
    return setting if setting in ("warn", "refuse", "off") else "warn"


def _sheet_texts(sheet: ReviewSheet, rows: Sequence[dict[str, str]]) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """(``sheet:line``, its texts) of each row the judge is sent: the request (the whole conversation where the key
    keeps one), both answers, and a text run's author continuation."""
    for row in rows:
        messages = sheet.conversations.get(row["id"])
        fields = list(message_fields(messages)) if messages else [("prompt", row["prompt"])]
        fields += [("output_a", row["output_a"]), ("output_b", row["output_b"])]
        if row.get("reference"):
            fields.append(("reference", row["reference"]))
        yield f"{sheet.path}:{sheet.lines.get(row['id'], '?')}", fields


def _swap_back(choice: str | None) -> str | None:
    """A verdict given on the swapped order, said in the sheet's sides."""
    return {"A": "B", "B": "A"}.get(choice or "", choice)


@dataclass
class JudgeOutcome:
    """What one ``judge_run`` did: rows asked, how they came out, what was recorded, and the judge's own score."""

    reviewer: str
    rows: int  # rows on the sheet
    identical: int  # examples whose two answers are the same answer (``ReviewSheet.identical``): not asked, by anyone
    judged: int  # rows with a judgment (A, B or tie) this time
    position_disagreements: int  # rows whose two orders disagreed: recorded as tie
    unparseable: int  # rows with an answer that is not A, B or tie in either order: nothing recorded
    failed: int  # rows with a request that still failed after the retries: nothing recorded, asked again on a rerun
    recorded: int  # judgments written to the registry now (0 on a rerun that changed nothing)
    score: ReviewScore | None  # the judge's judgments of this sheet, through score_judgments; None when none
    agreements: list[Agreement] = field(default_factory=list)  # the judge against each other reviewer of the sheet
    usage: Usage | None = None
    first_unparseable: str | None = None  # one unparseable answer, to show what the judge said

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["score"] = self.score.to_dict() if self.score else None
        data["agreements"] = [a.to_dict() for a in self.agreements]
        data["usage"] = self.usage.to_dict() if self.usage else None
        return data


def judge_run(
    registry: Registry, run: str, client: RemoteClient, *, progress: Callable[[int], None] | None = None,
    max_usd: float | None = None, on_estimate: Callable[[RequestEstimate], None] | None = None,
    pii: str | None = None, on_warning: Callable[[str], None] | None = None,
) -> JudgeOutcome:
    """Ask ``client``'s model to judge every row of ``run``'s blind sheet in both orders, and record its judgments.

    Before the first request the rows are scanned for personal data (``pii``: warn, refuse or off; None: the run's own
    ``data.pii``): under warn the line naming the judge's host goes to ``on_warning``. Then the batch is priced
    (``RemoteClient.estimate``; a verdict is expected to be one token) and handed to ``on_estimate``; over ``max_usd``
    nothing is asked.

    Raises:
        RegistryError: when the run does not exist.
        DataError: when the run has no folder or nothing to review (no base and tuned evaluation, a text run without
            continuation samples), or under ``pii`` refuse when the rows hold personal data (nothing is asked).
        BudgetExceeded: when the expected cost is over ``max_usd``.
    """

    record = registry.get_run(run)
    if not record.run_dir:
        raise DataError(f"run {record.name} has no run folder recorded")
    sheet = open_run_review(record.run_dir)
    reviewer = judge_reviewer(client.endpoint.name)
    asked = [row for row in sheet.rows if row["id"] not in sheet.identical]
    conversations = []
    for row in asked:
        messages = sheet.conversations.get(row["id"])
        text = {"task": sheet.task, "reference": row.get("reference")} if sheet.task == "text" else {}
        conversations.append(judge_conversation(row["prompt"], row["output_a"], row["output_b"], messages, **text))
        conversations.append(judge_conversation(row["prompt"], row["output_b"], row["output_a"], messages, **text))
    # The rows quote the test requests and both models' answers (which can repeat what they were trained on): what
    # leaves the machine here, said with the judge's host or refused as `tunelab run` does for its own requests.
    setting = pii if pii is not None else run_pii_setting(record.run_dir)
    what = f"the review sheet ({len(conversations)} requests to judge {len(asked)} rows)"
    for line in check_texts_sent(_sheet_texts(sheet, asked), [client.endpoint.base_url], setting, what):
        if on_warning is not None:
            on_warning(line)
    estimate = client.estimate(conversations, max_tokens=JUDGE_MAX_TOKENS, temperature=0.0,
                               expected_output_tokens=[VERDICT_TOKENS] * len(conversations))
    if on_estimate is not None:
        on_estimate(estimate)
    estimate.refuse_over("--max-usd", max_usd, "raise --max-usd, or judge a smaller sheet")
    answers = client.chat_many(conversations, max_tokens=JUDGE_MAX_TOKENS, temperature=0.0, progress=progress)
    before = {j.example_id: j.choice for j in registry_judgments(registry, record.id, sheet) if j.reviewer == reviewer}
    judged = disagreements = unparseable = failed = recorded = 0
    first_unparseable = None
    for index, row in enumerate(asked):
        in_order, swapped = answers[2 * index], answers[2 * index + 1]
        if in_order.error is not None or swapped.error is not None:
            failed += 1
            continue
        first, second = parse_verdict(in_order.text), _swap_back(parse_verdict(swapped.text))
        if first is None or second is None:
            unparseable += 1
            first_unparseable = first_unparseable or (in_order.text if first is None else swapped.text)
            continue
        judged += 1
        choice = first if first == second else "tie"
        disagreements += first != second
        if before.get(row["id"]) != choice:  # the latest judgment counts: a changed one replaces, the same is not repeated
            registry.add_review(record.id, sheet=sheet.path, example_id=row["id"], reviewer=reviewer, preference=choice)
            recorded += 1
    judgments = registry_judgments(registry, record.id, sheet)
    mine = [(j.example_id, j.choice) for j in judgments if j.reviewer == reviewer]
    try:  # the one scoring rule, as score_registry_reviews applies it to everyone's judgments
        score = score_judgments(mine, sheet.sides, base=sheet.base, tuned=sheet.tuned, identical=sheet.identical)
    except DataError:  # nothing judged (every answer unparseable or failed): said by the counts, not an error
        score = None
    return JudgeOutcome(
        reviewer, len(sheet.rows), len(sheet.identical), judged, disagreements, unparseable, failed, recorded, score,
        [a for a in agreement(judgments) if reviewer in (a.reviewer_a, a.reviewer_b)], client.usage(answers), first_unparseable,
    )
