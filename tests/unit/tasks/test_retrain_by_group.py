"""A retrain promotes only a challenger that is not worse than the champion on any group of the test set
(data.group_field) by more than the margin, by the same non-inferiority rule and bootstrap as overall: a challenger
better on average but worse for one country stays unpromoted, that country named; a group under MIN_TEST_EXAMPLES
cannot block (it is said not judged). Without groups the decision and its text are as before."""

from __future__ import annotations

import json

import pytest

from tunelab.evaluation.compare import MIN_TEST_EXAMPLES, compare_evaluations
from tunelab.evaluation.result import EvalResult
from tunelab.tasks.retrain import KEPT, PROMOTED, decide, group_comparisons


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _evaluation(name: str, correct: list[bool], groups: list[str | None], prefix: str = "x") -> EvalResult:
    rows = [
        {"id": f"{prefix}{i}", "source": f"t:{i}", "prompt": "p", "reference": "a", "prediction": "a" if ok else "b",
         "scores": {"correct": float(ok), "confidence": 0.9}, **({"group": group} if group is not None else {})}
        for i, (ok, group) in enumerate(zip(correct, groups, strict=True))
    ]
    return EvalResult("classify", name, len(rows), {}, rows, labels=["a", "b"], test_fingerprint="same")


# FR: 200 rows, the champion right on 140, the challenger on all 200; DE: 60 rows where the challenger loses ``de_lost``
# of the champion's 60 right answers; recent slice: 40 FR rows the challenger wins.
def _pair(de_lost: int, *, groups: bool = True, de_rows: int = 60):
    fr = 200
    champion = [i % 10 < 7 for i in range(fr)] + [True] * de_rows
    challenger = [True] * fr + [i >= de_lost for i in range(de_rows)]
    labels: list[str | None] = (["FR"] * fr + ["DE"] * de_rows) if groups else [None] * (fr + de_rows)
    old, new = _evaluation("champion", champion, labels), _evaluation("challenger", challenger, labels)
    recent_old = _evaluation("champion", [False] * 40, ["FR"] * 40 if groups else [None] * 40, "r")
    recent_new = _evaluation("challenger", [True] * 40, ["FR"] * 40 if groups else [None] * 40, "r")
    overall = compare_evaluations(old, new, seed=0, samples=300)
    recent = compare_evaluations(recent_old, recent_new, seed=0, samples=300)
    return overall, recent, group_comparisons(old, new, seed=0, samples=300)


def test_better_overall_but_worse_on_one_group_beyond_the_margin_is_not_promoted_and_the_group_named():
    overall, recent, groups = _pair(de_lost=15)  # DE: 1.00 -> 0.75
    assert overall.metric("accuracy").non_inferior(0.02), overall.summary  # on average it wins
    assert decide(overall, recent, 0.02)[0] == PROMOTED  # what a retrain decided before it looked at groups
    decision, reasons = decide(overall, recent, 0.02, groups)
    assert decision == KEPT, reasons
    line = next(reason for reason in reasons if "'DE'" in reason)
    assert "\n" not in line and "significantly worse" in line and "-0.25" in line and "95% CI" in line and "n=60" in line, line
    assert not any("'FR'" in reason for reason in reasons), reasons


def test_a_group_within_the_margin_does_not_block():
    overall, recent, groups = _pair(de_lost=0)  # DE: the same 60 answers
    decision, reasons = decide(overall, recent, 0.02, groups)
    assert decision == PROMOTED, reasons
    assert "not significantly worse on any group" in reasons[0] and "FR" in reasons[0] and "DE" in reasons[0], reasons


def test_a_loss_on_a_group_not_shown_significant_does_not_block():
    # Two of DE's 60 answers lost: "shown within 0.02" cannot be proved on 60 rows (the interval reaches about -0.08),
    # but no loss is shown either; a group refuses a challenger on a shown loss, as the verdict's lost-group lines say.
    overall, recent, groups = _pair(de_lost=2)
    de = next(group for group in groups if group.group == "DE")
    assert de.low < -0.02 and de.high >= 0, de
    decision, reasons = decide(overall, recent, 0.02, groups)
    assert decision == PROMOTED, reasons


def test_a_group_too_small_for_a_verdict_cannot_block_and_is_said_not_judged():
    overall, recent, groups = _pair(de_lost=10, de_rows=MIN_TEST_EXAMPLES - 10)  # DE: 20 rows, half of them lost
    decision, reasons = decide(overall, recent, 0.02, groups)
    assert decision == PROMOTED, reasons
    assert f"not judged (under {MIN_TEST_EXAMPLES} test examples): 'DE' (n=20)" in reasons[0], reasons


def test_without_groups_the_decision_and_its_text_are_unchanged():
    overall, recent, groups = _pair(de_lost=15, groups=False)
    assert groups == []
    assert decide(overall, recent, 0.02, groups) == decide(overall, recent, 0.02)
    main, fresh = overall.metric("accuracy"), recent.metric("accuracy")
    assert decide(overall, recent, 0.02, groups) == (PROMOTED, [
        f"non-inferior on accuracy (difference {main.difference:+.4f}, 95% CI {main.low:+.4f} to {main.high:+.4f}, margin 0.02) "
        f"and better on the recent slice ({fresh.before:.4f} -> {fresh.after:.4f}, 95% CI {fresh.low:+.4f} to {fresh.high:+.4f})"
    ])


def test_groups_of_one_evaluation_only_are_not_compared():
    overall, recent, _ = _pair(de_lost=15)
    champion = _evaluation("champion", [True] * 260, [None] * 260)
    challenger = _evaluation("challenger", [True] * 260, ["FR"] * 200 + ["DE"] * 60)
    assert group_comparisons(champion, challenger, seed=0, samples=100) == []


def test_a_retrain_of_a_grouped_champion_judges_its_challenger_by_group(tmp_path, tiny_model_dir):
    """The challenger's data files kept only text and label: with data.group_field set every row was an invalid record
    (missing group), so a grouped run could not be retrained at all, let alone judged by group."""
    from tests.unit.tasks.test_retrain import _router_v1, _rows, _write

    from tunelab.tasks.retrain import retrain

    def grouped(rows, country):
        return [row | {"country": country} for row in rows]

    train = grouped(_rows("A", 0, 24) + _rows("B", 0, 24), "FR")
    runs, registry_path, champion = _router_v1(tmp_path, tiny_model_dir, group_field="country", train=str(_write(tmp_path / "grouped.jsonl", train)))
    new = _write(tmp_path / "new.jsonl", grouped(_rows("A", 100, 16), "DE") + grouped(_rows("B", 100, 16), "FR"))
    outcome = retrain(champion.registry_id, [new], registry_path=registry_path, promote=False)
    written = [json.loads(line) for line in (runs / "retrain-data" / outcome.challenger["name"] / "test.jsonl").read_text().splitlines()]
    assert {row["country"] for row in written} == {"FR", "DE"}
    assert {group["group"] for group in outcome.groups} == {"FR", "DE"}, outcome.groups


def test_records_without_a_group_leave_the_challenger_judged_overall_only_and_say_so(tmp_path, tiny_model_dir):
    """The champion's out-of-scope requests carry no group (read without data.group_field): written into the
    challenger's files beside grouped rows they would be invalid records; the retrain goes on without groups, said."""
    from tests.unit.tasks.test_retrain import _router_v1, _rows, _write

    from tunelab.tasks.retrain import retrain

    train = [row | {"country": "FR"} for row in _rows("A", 0, 24) + _rows("B", 0, 24)]
    outside = _write(tmp_path / "outside.jsonl", [{"text": f"paris capital number {5000 + i}", "label": "none"} for i in range(12)])
    _, registry_path, champion = _router_v1(tmp_path, tiny_model_dir, group_field="country", out_of_scope=str(outside),
                                            out_of_scope_label="none", train=str(_write(tmp_path / "grouped.jsonl", train)))
    new = _write(tmp_path / "new.jsonl", [row | {"country": "DE"} for row in _rows("A", 100, 16) + _rows("B", 100, 16)])
    outcome = retrain(champion.registry_id, [new], registry_path=registry_path, promote=False)
    assert outcome.groups == []
    assert any("carry no country" in warning and "not judged by group" in warning for warning in outcome.warnings), outcome.warnings
