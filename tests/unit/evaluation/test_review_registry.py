"""Reviews made in the browser live in the registry: scored by the same rule as a sheet, agreement, pairs through review_pairs."""

import json

import pytest
from sklearn.metrics import cohen_kappa_score

from tunelab.errors import DataError
from tunelab.evaluation.result import EvalResult
from tunelab.evaluation.review import (
    Judgment,
    agreement,
    load_sheet,
    open_run_review,
    registry_judgments,
    registry_review_pairs,
    review_pairs,
    review_sheet_path,
    score_judgments,
    score_registry_reviews,
    score_review,
    write_judged_sheet,
)
from tunelab.registry import Registry


def _result(name, answers):
    rows = [{"id": f"q{i}", "source": "", "prompt": f"question {i}", "reference": "r", "prediction": a, "scores": {}} for i, a in enumerate(answers)]
    return EvalResult("sft", name, len(rows), {}, rows)


@pytest.fixture
def reviewed_run(tmp_path):
    run_dir = tmp_path / "runs" / "demo"
    _result("base", [f"base answer {i}" for i in range(10)]).save(run_dir / "eval" / "base.json")
    _result("tuned", [f"tuned answer {i}" for i in range(10)]).save(run_dir / "eval" / "tuned.json")
    registry = Registry(tmp_path / "runs" / "registry.db")
    record = registry.create_run(name="demo", task="sft", run_dir=str(run_dir))
    return registry, record, open_run_review(run_dir)


def _side_of(sheet, example_id, model):
    return next(side for side, name in sheet.sides[example_id].items() if name == model)


def test_the_run_sheet_is_the_export_default_and_stays_blind(reviewed_run):
    registry, record, sheet = reviewed_run
    assert sheet.path == review_sheet_path(record.run_dir) and sheet.path.name == "review.csv"
    assert sheet.key_path.name == "review.key.json"
    assert len(sheet.rows) == 10 and set(sheet.rows[0]) == {"id", "prompt", "output_a", "output_b"}
    # Opening it again reuses the same sheet and key (the blinding does not change under the reviewers).
    assert open_run_review(record.run_dir).sides == sheet.sides


def test_registry_scores_like_the_sheet_latest_judgment_counts(reviewed_run, tmp_path):
    registry, record, sheet = reviewed_run
    ids = [row["id"] for row in sheet.rows]
    # ann prefers tuned on 6 rows, base on 2, ties 1; she first chose the base on row 0, then changed her mind.
    registry.add_review(record.id, sheet=sheet.path, example_id=ids[0], reviewer="ann", preference=_side_of(sheet, ids[0], "base"))
    plan = ["tuned"] * 6 + ["base"] * 2 + ["tie"]
    for example_id, choice in zip(ids, plan, strict=False):
        preference = "tie" if choice == "tie" else _side_of(sheet, example_id, choice)
        registry.add_review(record.id, sheet=sheet.path, example_id=example_id, reviewer="ann", preference=preference)
    registry.add_review(record.id, sheet=sheet.path, example_id=ids[9], reviewer="ann", preference="skip")
    assert len(registry.list_reviews(record.id)) == 11  # append-only: nothing is overwritten
    score = score_registry_reviews(registry, record.id, sheet)
    assert (score.tuned_wins, score.base_wins, score.ties, score.unjudged, score.judged) == (6, 2, 1, 1, 9)
    assert score.win_rate == pytest.approx(6.5 / 9)
    # The same judgments written as a filled-in sheet score identically through `tunelab review score`'s function.
    judged = write_judged_sheet(sheet, registry_judgments(registry, record.id, sheet), tmp_path / "judged.csv")
    from_sheet = score_review(judged, sheet.key_path)
    assert (from_sheet.win_rate, from_sheet.low, from_sheet.high, from_sheet.judged) == (score.win_rate, score.low, score.high, score.judged)


def test_agreement_is_cohens_kappa_over_shared_rows():
    ann = ["A", "B", "A", "tie", "B", "A"]
    bob = ["A", "B", "B", "tie", "B", "B"]
    judgments = [Judgment(f"q{i}", "ann", c) for i, c in enumerate(ann)] + [Judgment(f"q{i}", "bob", c) for i, c in enumerate(bob)]
    judgments.append(Judgment("q9", "bob", "A"))  # only bob judged q9: not shared
    judgments.append(Judgment("q8", "cy", None))  # a skip is no judgment
    (result,) = agreement(judgments)
    assert (result.reviewer_a, result.reviewer_b, result.rows, result.agreed) == ("ann", "bob", 6, 4)
    assert result.kappa == pytest.approx(cohen_kappa_score(ann, bob))
    # By hand: observed 4/6; chance (3*1 + 2*4 + 1*1)/36 = 1/3; kappa = (2/3 - 1/3) / (2/3) = 0.5.
    assert result.kappa == pytest.approx(0.5)
    # Both always answering A: kappa is undefined, reported as None rather than a misleading number.
    (same,) = agreement([Judgment("q0", "ann", "A"), Judgment("q0", "bob", "A")])
    assert same.kappa is None and same.agreed == 1


def test_pairs_from_the_registry_go_through_review_pairs(reviewed_run, tmp_path):
    registry, record, sheet = reviewed_run
    ids = [row["id"] for row in sheet.rows]
    for example_id in ids[:3]:
        registry.add_review(record.id, sheet=sheet.path, example_id=example_id, reviewer="ann", preference=_side_of(sheet, example_id, "tuned"))
    registry.add_review(record.id, sheet=sheet.path, example_id=ids[3], reviewer="ann", preference="tie")
    result = registry_review_pairs(registry, record.id, sheet, tmp_path / "pairs.jsonl")
    assert (result.pairs, result.tuned_chosen, result.base_chosen, result.ties) == (3, 3, 0, 1)
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert all(pair["chosen"].startswith("tuned answer") and pair["rejected"].startswith("base answer") for pair in pairs)
    # The same file as `tunelab review pairs` writes from the judged sheet beside it.
    again = review_pairs(tmp_path / "pairs.judged.csv", tmp_path / "again.jsonl", sheet.key_path)
    assert again.pairs == 3 and (tmp_path / "again.jsonl").read_text() == (tmp_path / "pairs.jsonl").read_text()


def test_nothing_judged_is_an_error_and_bad_input_is_refused(reviewed_run):
    registry, record, sheet = reviewed_run
    with pytest.raises(DataError, match="no row has a preference"):
        score_registry_reviews(registry, record.id, sheet)
    with pytest.raises(DataError, match="no row has a preference"):
        score_judgments([("q0", None)], sheet.sides)
    with pytest.raises(ValueError, match="unknown preference"):
        registry.add_review(record.id, sheet=sheet.path, example_id="q0", reviewer="ann", preference="C")
    from tunelab.registry import RegistryError

    with pytest.raises(RegistryError, match="reviewer"):
        registry.add_review(record.id, sheet=sheet.path, example_id="q0", reviewer="  ", preference="A")
    assert load_sheet(sheet.path).rows == sheet.rows
