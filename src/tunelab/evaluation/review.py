"""Blind human A/B review of two evaluations' outputs.

``export_review`` writes a CSV sheet (id, prompt, output_a, output_b, preference) in a seeded random
order with the base and tuned outputs on random sides, and keeps which side is which in a separate
key file so the reviewer cannot tell. ``score_review`` reads the filled-in sheet back (A / B / tie)
and reports the tuned model's win rate with a Wilson 95% interval; a tie counts as half a win. An example whose two
answers are the same (``same_answer``) is no judgement of either model: the sheet and the browser leave it out, and the
score reports how many were not asked (``not_asked``, the one rule for both).
A text run's sheet is made of its evaluations' continuation samples (``EvalResult.samples``): the prompt is a held-out
document's opening, the outputs the two models' continuations, and a ``reference`` column holds what the author wrote
next. The reference names no side, so the sheet stays blind; the question is which continuation is closer to the
author's voice (``REVIEW_QUESTIONS``), and a reviewer who is not the author has no other sample of that voice than the
opening's two or three sentences.
``review_pairs`` turns the same filled-in sheet into preference pairs (prompt, chosen, rejected) for
``task: preference``: each row judged A or B becomes one pair; ties and blank rows are no preference.

Judgments made in the browser (``tunelab ui``) are rows of the registry's ``reviews`` table, made on
the run's own sheet (``RUN/review.csv``, the ``tunelab review export RUN`` default) with its key.
``score_judgments`` is the one scoring rule for a sheet and for the registry; ``write_judged_sheet``
turns the registry's judgments into a filled-in sheet, so ``review_pairs`` is the one way to pairs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import random
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.errors import DataError
from tunelab.evaluation.metrics import wilson_interval
from tunelab.evaluation.result import EvalResult
from tunelab.paths import atomic_write_text
from tunelab.runs import RunFolder

if TYPE_CHECKING:
    from tunelab.registry.store import Registry

COLUMNS = ["id", "prompt", "output_a", "output_b", "preference"]
TEXT_COLUMNS = ["id", "prompt", "output_a", "output_b", "reference", "preference"]
# What a reviewer (a person on the Review page, the CLI's export line, the judge) is asked, by the sheet's task.
REVIEW_QUESTIONS = {"text": "Which continuation is closer to the author's voice?"}
CHOICES = {"a": "A", "b": "B", "tie": "tie"}


def same_answer(output_a: str | None, output_b: str | None) -> bool:
    """Whether two outputs are the same answer: the same words, whatever the spacing and line breaks (neither the sheet
    nor the Review page asks such a row; a pair of them would teach DPO nothing but spacing)."""
    return output_a is not None and output_b is not None and output_a.split() == output_b.split()


def not_asked(key_data: dict, rows: Iterable[dict]) -> set[str]:
    """The examples of a review whose two answers are the same answer (``same_answer``), which nobody is asked to judge:
    those the key lists (an export leaves them off the sheet) and the sheet's rows of the same answer (a sheet exported
    before they were left off, or a cell edited to match). A judgment of one counts for neither model, nor as a tie."""
    identical = {str(example_id) for example_id in key_data.get("identical") or []}
    return identical | {row["id"] for row in rows if same_answer(row.get("output_a"), row.get("output_b"))}


def decided(choice: str | None, output_a: str | None, output_b: str | None) -> str | None:
    """The tie rule of a judged row for preference pairs: a row judged tie, or whose two outputs are the same answer
    (``same_answer``: the models agreed, there is nothing to prefer), is no pair."""
    if choice in ("A", "B") and same_answer(output_a, output_b):
        return "tie"
    return choice


def _fingerprint(text: str | None) -> str:
    """An answer as the key remembers it, to tell its sheet from another: a spreadsheet program may save a cell's line
    ends as CRLF and keep or drop spaces at line ends, which are no other answer."""
    lines = (text or "").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return hashlib.sha256("\n".join(line.rstrip() for line in lines).strip().encode("utf-8")).hexdigest()[:16]


def key_path_for(sheet: Path) -> Path:
    """Where the key of ``sheet`` lives: ``review.csv`` -> ``review.key.json``."""
    return sheet.with_name(sheet.stem + ".key.json")


def _reviewed_rows(result: EvalResult) -> list[dict]:
    """The rows of ``result`` a sheet compares: a text evaluation's continuation samples, every other task's rows.

    Raises:
        DataError: for a text evaluation without samples (eval.text_samples 0, or evaluated before they were kept).
    """
    if result.task != "text":
        return result.rows
    if result.samples is None:
        raise DataError(f"the text evaluation of {result.model} has no continuation samples (evaluated before tunelab wrote them)",
                        "evaluate the run again (tunelab eval RUN) to write them")
    if not result.samples:
        # Why none were written: eval.text_samples 0, or an evaluation that said why (``evaluate.continuation_samples``).
        why = (result.settings.get("samples") or {}).get("why") or "eval.text_samples was 0"
        raise DataError(f"the text evaluation of {result.model} has no continuation samples to review ({why})",
                        "set eval.text_samples (e.g. 16), within the model's context, and evaluate the run again (tunelab eval RUN)")
    return result.samples


def export_review(base: EvalResult, tuned: EvalResult, sheet: str | Path, *, seed: int = 0, replace: bool = True) -> tuple[Path, Path]:
    """Write a blind A/B sheet of the examples both evaluations answered, and its key file.

    With ``replace`` False an existing sheet or key is written over only by the same text (the same export again).

    Raises:
        DataError: for a preference evaluation or a text evaluation without continuation samples (no outputs to compare),
            evaluations with no shared example, or
            (``replace`` False) an existing sheet or key this export would change.
    """
    if base.task != tuned.task:
        raise DataError(f"cannot review a {base.task} evaluation against a {tuned.task} evaluation")
    if tuned.task == "preference":
        raise DataError("a preference evaluation scores given answer pairs: it has no generated answers to review",
                        "a DPO run whose model is an evaluated SFT run has its own sheet RUN/review.csv (written by `tunelab run`), "
                        "the SFT parent against the DPO model")
    text = tuned.task == "text"
    by_id = {row["id"]: row for row in _reviewed_rows(base)}
    # One row per example: the key (and the registry's judgments) know an example by its id, so a test example
    # given twice must not be two rows with sides of their own.
    pairs, seen = [], set()
    for row in _reviewed_rows(tuned):
        if row["id"] in by_id and row["id"] not in seen:
            seen.add(row["id"])
            pairs.append((by_id[row["id"]], row))
    if not pairs:
        raise DataError("the two evaluations share no example to review")
    # The seed alone gave every sheet of n rows the same sides by position (one key seen told them all); the two
    # evaluations' answers are mixed in, so the same evaluations and seed still give the same sheet.
    answered = "\n".join(f"{after['id']}\t{_fingerprint(before['prediction'])}\t{_fingerprint(after['prediction'])}" for before, after in pairs)
    rng = random.Random(f"{seed}:{hashlib.sha256(answered.encode('utf-8')).hexdigest()}")
    rng.shuffle(pairs)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(TEXT_COLUMNS if text else COLUMNS)
    sides: dict[str, dict[str, str]] = {}
    # The conversations behind prompts of more than one message, which the sheet shows as one string (``review_pairs``).
    prompts: dict[str, list] = {}
    # Which answer is on which side, by text: a key of another export of the same examples (another seed, another run)
    # has the same ids, and scoring with it would silently swap wins and losses.
    answers: dict[str, list[str]] = {}
    # Examples both models answered alike: not asked (``not_asked``), as on the Review page; the key keeps their count.
    identical: list[str] = []
    for before, after in pairs:
        tuned_first = rng.random() < 0.5  # drawn for every row, so leaving one out keeps the others' sides
        if same_answer(before["prediction"], after["prediction"]):
            identical.append(after["id"])
            continue
        a, b = (after, before) if tuned_first else (before, after)
        sides[after["id"]] = {"A": "tuned" if tuned_first else "base", "B": "base" if tuned_first else "tuned"}
        answers[after["id"]] = [_fingerprint(a["prediction"]), _fingerprint(b["prediction"])]
        if "messages" in after:
            prompts[after["id"]] = after["messages"]
        writer.writerow([after["id"], after["prompt"], a["prediction"], b["prediction"], *([after["reference"]] if text else []), ""])
    sheet = Path(sheet)
    key = key_path_for(sheet)
    content = {"seed": seed, "base": base.model, "tuned": tuned.model, "sides": sides, "answers": answers, "identical": identical}
    if prompts:
        content["prompts"] = prompts
    if text:  # the sheet's task, for the question it asks (``REVIEW_QUESTIONS``); an sft key stays as it was
        content["task"] = "text"
    key_text = json.dumps(content, indent=1, ensure_ascii=False)
    if not replace:
        for path, text in ((sheet, buffer.getvalue()), (key, key_text)):
            # A filled sheet would lose its preferences; judgments stored as A or B (the web page's) would be read with
            # another key's sides.
            if path.exists() and path.read_bytes() != text.encode("utf-8"):
                raise DataError(f"{path} already exists and differs from this export (filled in, or another seed or evaluation)",
                                f"write the sheet to another file (--out), or delete {sheet} and {key} first")
    atomic_write_text(sheet, buffer.getvalue())
    atomic_write_text(key, key_text)
    return sheet, key


@dataclass
class ReviewScore:
    """The tuned model's win rate over the judged rows (a tie counts as half a win); rows of the same answer are not asked."""

    judged: int
    tuned_wins: int
    base_wins: int
    ties: int
    unjudged: int
    win_rate: float
    low: float
    high: float
    base: str
    tuned: str
    method: str = "Wilson 95% interval on wins + ties/2 over judged rows"
    # Rows of the key a sheet no longer has (deleted in the spreadsheet): not judged either, but not blank to be seen.
    missing: int = 0
    # Examples both models answered alike (``not_asked``): not judged, not blank, not a tie; "N identical answers not asked".
    identical: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _read_key(sheet: Path, key: str | Path | None) -> tuple[Path, dict]:
    key = Path(key) if key else key_path_for(sheet)
    for path in (sheet, key):
        if not path.is_file():
            raise DataError(f"{path} not found", "pass the sheet written by `tunelab review export` (its key file lies beside it)")
    try:
        key_data = json.loads(key.read_text(encoding="utf-8"))
        if not isinstance(key_data["sides"], dict):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"{key}: not a review key file") from None
    return key, key_data


@dataclass
class ReviewPairs:
    """What ``review_pairs`` wrote: one pair per decided row, and what it left out."""

    path: Path
    pairs: int
    ties: int
    unjudged: int
    tuned_chosen: int
    base_chosen: int

    def to_dict(self) -> dict:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def _column(name: str | None) -> str:
    """A header cell as the sheet's column name: people retype "Output A" or "Preference" in a spreadsheet."""
    return (name or "").strip().lower().replace(" ", "_")


def _blank(row: dict) -> bool:
    """A row with nothing in it: a spreadsheet program saves rows once touched as ``,,,,``."""
    return not any(value.strip() if isinstance(value, str) else any(v.strip() for v in value)
                   for value in row.values() if value is not None)


def _judged_rows(sheet: Path, key: Path, key_data: dict, columns: Sequence[str], hint: str | None = None) -> Iterator[tuple[int, dict, str | None]]:
    """(line, row, "A" | "B" | "tie" | None for blank) for every row of a filled-in sheet, checked against its key.

    Read as a spreadsheet program saves it: a BOM, CRLF, ``;`` or tab separators, column names in any case, empty rows.

    Raises:
        DataError: for a sheet not in UTF-8, a missing column, a key that is not the sheet's, or naming the line of an unknown id or
            preference or of an example given twice by one reviewer.
    """
    sides = key_data["sides"]
    answers = key_data.get("answers", {})  # keys written before answers were remembered are not checked
    try:
        with sheet.open(newline="", encoding="utf-8-sig") as handle:
            text = handle.read()
    except UnicodeDecodeError as error:
        raise DataError(f"{sheet}: not UTF-8 text (byte {error.start})",
                        "save it from the spreadsheet as \"CSV UTF-8\" (Excel) or with the character set UTF-8 (LibreOffice)") from None
    header = text.split("\n", 1)[0]
    # A spreadsheet in a locale whose decimal mark is a comma saves CSV with ';'; no column name holds a separator.
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=max(",;\t", key=header.count))
    reader.fieldnames = [_column(name) for name in reader.fieldnames or []]
    missing = [c for c in columns if c not in reader.fieldnames]
    if missing:
        raise DataError(f"{sheet}: missing column(s) {', '.join(missing)}", hint)
    seen: dict[tuple[str, str], int] = {}
    checked = matched = 0
    wrong_key = f"{key} is not the key of this sheet"
    key_hint = "pass the key file written with this sheet (--key); each export, seed or run has its own"
    for row in reader:
        line = reader.line_num
        if _blank(row):
            continue
        if row["id"] not in sides:
            raise DataError(f"{sheet}:{line}: id {row['id']!r} is not in the key {key}")
        # One reviewer's row given twice (pasted again, kept after a sort) would count twice; several reviewers of one
        # sheet say who judged each row in a reviewer column (what the web interface's judgments are written as).
        where = (row["id"], (row.get("reviewer") or "").strip())
        if where in seen:
            raise DataError(f"{sheet}:{line}: id {row['id']!r} is also on line {seen[where]}",
                            "delete one of the two rows; when several people filled the sheet, name each in a reviewer column")
        seen[where] = line
        expected = answers.get(row["id"])
        if expected and row.get("output_a") is not None and row.get("output_b") is not None and expected[0] != expected[1]:
            found = [_fingerprint(row["output_a"]), _fingerprint(row["output_b"])]
            checked += 1
            matched += found == expected
            if found == expected[::-1]:
                raise DataError(f"{wrong_key}: line {line}'s answers are on the other sides in the key", key_hint)
        raw = (row["preference"] or "").strip().lower()
        if raw and raw not in CHOICES:
            raise DataError(f"{sheet}:{line}: preference {row['preference']!r} is not A, B or tie")
        yield line, row, CHOICES[raw] if raw else None
    # A cell the spreadsheet changed is no other key; a sheet none of whose answers the key knows is.
    if checked and not matched:
        raise DataError(f"{wrong_key}: none of the sheet's answers is one the key was written for", key_hint)


def review_pairs(sheet: str | Path, out: str | Path, key: str | Path | None = None) -> ReviewPairs:
    """Write a JSONL file of preference pairs (prompt, chosen, rejected) from a filled-in sheet.

    Every row judged A or B becomes one pair, the preferred output as ``chosen``; ties and blank rows
    carry no preference and are left out (counted). Each pair keeps where it came from (``review``:
    the sheet's full path:line, and which model wrote the chosen answer), so the pairs file can be traced back.

    Raises:
        DataError: naming the line of an unknown preference or id, or when no row is decided.
    """
    sheet = Path(sheet)
    key, key_data = _read_key(sheet, key)
    sides = key_data["sides"]
    lines: list[str] = []
    chosen_by = {"tuned": 0, "base": 0}
    ties = unjudged = 0
    for line, row, choice in _judged_rows(sheet, key, key_data, COLUMNS, "pass a sheet written by `tunelab review export`"):
        if choice is None:
            unjudged += 1
            continue
        if decided(choice, row["output_a"], row["output_b"]) == "tie":
            ties += 1
            continue
        other = "B" if choice == "A" else "A"
        chosen, rejected = row[f"output_{choice.lower()}"], row[f"output_{other.lower()}"]
        model = sides[row["id"]][choice]
        chosen_by[model] += 1
        # The answers were generated for the conversation, not for the sheet's one-string view of it.
        prompt = key_data.get("prompts", {}).get(row["id"], row["prompt"])
        pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "review": f"{sheet.resolve()}:{line}", "chosen_model": model}
        lines.append(json.dumps(pair, ensure_ascii=False))
    if not lines:
        raise DataError(f"{sheet}: no row prefers A or B ({ties} ties, {unjudged} blank)", "fill the preference column with A or B")
    out = Path(out)
    atomic_write_text(out, "\n".join(lines) + "\n")
    return ReviewPairs(out, len(lines), ties, unjudged, chosen_by["tuned"], chosen_by["base"])


def score_judgments(choices: Iterable[tuple[str, str | None]], sides: dict[str, dict[str, str]], *, base: str = "base", tuned: str = "tuned",
                    identical: Collection[str] = ()) -> ReviewScore:
    """Score (example id, "A" | "B" | "tie" | None) judgments with a key's ``sides``: the one scoring rule.

    None is a row not judged (blank in a sheet, skipped in the browser). Each judgment counts once, so two reviewers of
    the same row count twice. A judgment of an example in ``identical`` (``not_asked``: both answers the same) counts
    for nothing, whatever was filled in; the score reports how many such examples there are.

    Raises:
        DataError: when nothing was judged.
    """
    wins = {"tuned": 0, "base": 0}
    ties = unjudged = 0
    for example_id, choice in choices:
        if example_id in identical:
            continue
        if choice is None:
            unjudged += 1
        elif choice == "tie":
            ties += 1
        else:
            wins[sides[example_id][choice]] += 1
    judged = wins["tuned"] + wins["base"] + ties
    if judged == 0:
        raise DataError("no row has a preference yet", "judge some rows with A, B or tie")
    successes = wins["tuned"] + ties / 2
    low, high = wilson_interval(successes, judged)
    return ReviewScore(judged, wins["tuned"], wins["base"], ties, unjudged, successes / judged, low, high, base, tuned, identical=len(identical))


def score_review(sheet: str | Path, key: str | Path | None = None) -> ReviewScore:
    """Read a filled-in sheet (preference A, B or tie; empty: not judged) and score it with its key.

    Raises:
        DataError: naming the line of an unknown preference or id, or when nothing was judged.
    """
    sheet = Path(sheet)
    key, key_data = _read_key(sheet, key)
    sides = key_data["sides"]
    judged = [(row, choice) for _, row, choice in _judged_rows(sheet, key, key_data, ("id", "preference"))]
    identical = not_asked(key_data, (row for row, _ in judged))
    choices = [(row["id"], choice) for row, choice in judged]
    try:
        score = score_judgments(choices, sides, base=key_data.get("base", "base"), tuned=key_data.get("tuned", "tuned"), identical=identical)
    except DataError:
        hint = "fill the preference column with A, B or tie"
        if identical:
            hint += f" ({len(identical)} identical answers not asked)"
        raise DataError(f"{sheet}: no row has a preference yet", hint) from None
    score.missing = len(set(sides) - identical - {example_id for example_id, _ in choices})
    return score


# -- reviews in the registry (tunelab ui) -----------------------------------------------------------

def review_sheet_path(run_dir: str | Path) -> Path:
    """The run's own review sheet, ``RUN/review.csv`` (what ``tunelab review export RUN`` writes), absolute."""
    return RunFolder(Path(run_dir)).review_sheet.resolve()


@dataclass
class ReviewSheet:
    """A blind sheet and its key: the rows a reviewer sees (no side is named) and, apart, the sides."""

    path: Path
    key_path: Path
    rows: list[dict[str, str]]
    sides: dict[str, dict[str, str]]
    base: str
    tuned: str
    # The examples not asked (``not_asked``): off the sheet (the key lists them) or, on an older sheet, rows of the same answer.
    identical: set[str] = field(default_factory=set)
    # The conversations behind prompts of more than one message (the key's ``prompts``), which the sheet's ``prompt``
    # shows as one string; the user's own system message is among them when the example had one.
    conversations: dict[str, list[dict]] = field(default_factory=dict)
    # The evaluations' task when the key names it (a text run's sheet: continuations of openings), else None.
    task: str | None = None
    # Each row's line in the sheet (by id): where a finding in it is named (the judge's personal-data line).
    lines: dict[str, int] = field(default_factory=dict)

    @property
    def question(self) -> str | None:
        """What a reviewer of this sheet is asked, when not "which answer is better" (``REVIEW_QUESTIONS``)."""
        return REVIEW_QUESTIONS.get(self.task or "")

    def row(self, example_id: str) -> dict[str, str]:
        return next(row for row in self.rows if row["id"] == example_id)


def load_sheet(sheet: str | Path, key: str | Path | None = None) -> ReviewSheet:
    """Read a review sheet and its key (the filled-in preferences are ignored).

    Raises:
        DataError: when the sheet or key is missing or not a review sheet.
    """
    sheet = Path(sheet)
    key, key_data = _read_key(sheet, key)
    # A text sheet's reference (the author's continuation) is read too: shown beside the two, it names no side.
    read = list(_judged_rows(sheet, key, key_data, COLUMNS, "pass a sheet written by `tunelab review export`"))
    rows = [
        {name: row[name] for name in ("id", "prompt", "output_a", "output_b", "reference") if row.get(name) is not None}
        for _, row, _ in read
    ]
    return ReviewSheet(
        sheet, key, rows, key_data["sides"], key_data.get("base", "base"), key_data.get("tuned", "tuned"), not_asked(key_data, rows),
        key_data.get("prompts", {}), key_data.get("task"), {row["id"]: line for line, row, _ in read},
    )


def review_opponent(run_dir: str | Path) -> Path:
    """The evaluation the tuned model is reviewed against: the base model's, else (the base model skipped because it
    could not win) the strongest baseline's named by the run's verdict; the base's path when neither exists."""
    folder = RunFolder(Path(run_dir))
    base = folder.baseline_eval("base")
    if base.is_file():
        return base
    try:
        strongest = json.loads(folder.comparison.read_text(encoding="utf-8")).get("strongest")
    except (OSError, ValueError, AttributeError):
        return base
    other = folder.baseline_eval(strongest) if isinstance(strongest, str) else base
    return other if other.is_file() else base


def open_run_review(run_dir: str | Path, *, seed: int = 0) -> ReviewSheet:
    """The run's review sheet, exported from the opponent's evaluation (``review_opponent``) and eval/tuned.json (as
    ``tunelab review export RUN``) on first use.

    Raises:
        DataError: when the run has no opponent or tuned evaluation, or nothing to review (a text run without continuation samples).
    """
    run_dir = Path(run_dir)
    sheet = review_sheet_path(run_dir)
    if not sheet.is_file() or not key_path_for(sheet).is_file():
        export_review(EvalResult.load(review_opponent(run_dir)), EvalResult.load(RunFolder(run_dir).tuned_eval), sheet, seed=seed)
    return load_sheet(sheet)


@dataclass(frozen=True)
class Judgment:
    """A reviewer's current choice on one example: "A", "B", "tie", or None (skipped)."""

    example_id: str
    reviewer: str
    choice: str | None


def registry_judgments(registry: Registry, run: str, sheet: ReviewSheet) -> list[Judgment]:
    """The judgments of ``run``'s sheet stored in the registry: the latest per reviewer and example counts.

    Raises:
        RegistryError: when the run does not exist.
    """
    latest: dict[tuple[str, str], str] = {}
    for review in registry.list_reviews(run, sheet=sheet.path):
        if review.example_id in sheet.sides:  # rows of an older export of the sheet are not this sheet's
            latest[(review.reviewer, review.example_id)] = review.preference
    return [Judgment(example, reviewer, None if choice == "skip" else choice) for (reviewer, example), choice in latest.items()]


def score_registry_reviews(registry: Registry, run: str, sheet: ReviewSheet) -> ReviewScore:
    """``score_judgments`` over the registry's judgments of ``run`` (what the UI and ``tunelab review score --run`` show).

    Raises:
        DataError: when nothing was judged yet.
    """
    choices = [(j.example_id, j.choice) for j in registry_judgments(registry, run, sheet)]
    return score_judgments(choices, sheet.sides, base=sheet.base, tuned=sheet.tuned, identical=sheet.identical)


@dataclass
class Agreement:
    """Cohen's kappa of two reviewers over the rows both judged (A, B or tie); None when undefined."""

    reviewer_a: str
    reviewer_b: str
    rows: int
    kappa: float | None
    agreed: int = 0
    method: str = field(default="Cohen's kappa (scikit-learn) over the rows both judged A, B or tie")

    def to_dict(self) -> dict:
        return asdict(self)


def agreement(judgments: Iterable[Judgment]) -> list[Agreement]:
    """Cohen's kappa for every pair of reviewers who judged at least one same row."""
    by_reviewer: dict[str, dict[str, str]] = {}
    for judgment in judgments:
        if judgment.choice is not None:
            by_reviewer.setdefault(judgment.reviewer, {})[judgment.example_id] = judgment.choice
    names = sorted(by_reviewer)
    results = []
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            shared = sorted(set(by_reviewer[first]) & set(by_reviewer[second]))
            if not shared:
                continue
            a = [by_reviewer[first][row] for row in shared]
            b = [by_reviewer[second][row] for row in shared]
            agreed = sum(x == y for x, y in zip(a, b, strict=True))
            # Kappa is undefined when both used one and the same category throughout (no chance model).
            # scikit-learn is imported only here: a review page with one reviewer should not wait for it.
            if len(set(a) | set(b)) < 2:
                kappa = None
            else:
                from sklearn.metrics import cohen_kappa_score

                kappa = float(cohen_kappa_score(a, b, labels=["A", "B", "tie"]))
            results.append(Agreement(first, second, len(shared), kappa if kappa is None or math.isfinite(kappa) else None, agreed))
    return results


def write_judged_sheet(sheet: ReviewSheet, judgments: Iterable[Judgment], out: str | Path) -> Path:
    """A filled-in copy of ``sheet``: one row per judgment (with a ``reviewer`` column), read by ``score_review`` and
    ``review_pairs`` with the sheet's key."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*COLUMNS, "reviewer"])
    for judgment in judgments:
        if judgment.choice is None:
            continue
        row = sheet.row(judgment.example_id)
        writer.writerow([row["id"], row["prompt"], row["output_a"], row["output_b"], judgment.choice, judgment.reviewer])
    out = Path(out)
    atomic_write_text(out, buffer.getvalue())
    return out


def registry_review_pairs(registry: Registry, run: str, sheet: ReviewSheet, out: str | Path) -> ReviewPairs:
    """Preference pairs from the registry's judgments of ``run``, through ``review_pairs`` (the same as ``tunelab review pairs``).

    The judged sheet is written beside ``out`` (``<out stem>.judged.csv``) so every pair traces back to a line.

    Raises:
        DataError: when no judgment prefers A or B.
    """
    out = Path(out)
    judged = write_judged_sheet(sheet, registry_judgments(registry, run, sheet), out.with_name(out.stem + ".judged.csv"))
    return review_pairs(judged, out, sheet.key_path)
