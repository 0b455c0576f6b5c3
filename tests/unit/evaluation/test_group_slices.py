"""The verdict per group (data.group_field): each group's primary metric for the tuned model and the opponent the
verdict names, the difference with the verdict's own paired bootstrap interval, "too few" under MIN_TEST_EXAMPLES, and
one line under the verdict for each group the tuned model loses, even when fine-tuning paid off on average."""

import numpy as np

from tunelab.evaluation.compare import (
    MIN_TEST_EXAMPLES,
    PAID_OFF,
    Verdict,
    compare_evaluations,
    compare_with_baselines,
)
from tunelab.evaluation.result import EvalResult


def _classify(name, outcomes, groups):
    rows = [{"id": f"x{i}", "source": f"t:{i + 1}", "prompt": f"text {i}", "reference": "a", "prediction": "a" if ok else "b",
             "scores": {"correct": float(ok), "confidence": 0.9, "probability_of_reference": 0.9 if ok else 0.1}, **({"group": group} if group is not None else {})}
            for i, (ok, group) in enumerate(zip(outcomes, groups, strict=True))]
    return EvalResult("classify", name, len(rows), {}, rows, labels=["a", "b"], test_fingerprint="same")


# 150 examples in FR where the tuned model is right on 142 and the baseline on 50; 60 in DE where the tuned model is right
# on 20 and the baseline on 55; 10 in IT, both right on all. Overall the tuned model wins clearly (172 against 115 of 220).
GROUPS = ["FR"] * 150 + ["DE"] * 60 + ["IT"] * 10
TUNED = [i % 20 != 0 for i in range(150)] + [i < 20 for i in range(60)] + [True] * 10
OPPONENT = [i % 3 == 0 for i in range(150)] + [i < 55 for i in range(60)] + [True] * 10


def test_each_group_equals_an_independent_computation():
    tuned, opponent = _classify("tuned", TUNED, GROUPS), _classify("embedding", OPPONENT, [None] * len(GROUPS))
    verdict = compare_with_baselines({"embedding": opponent}, tuned, seed=3, samples=400)
    by_group = {group.group: group for group in verdict.groups}
    assert list(by_group) == ["FR", "DE", "IT"]
    rows = np.arange(len(GROUPS))
    for name in ("FR", "DE"):
        members = rows[np.array(GROUPS) == name]
        right_tuned, right_opponent = np.array(TUNED, float)[members], np.array(OPPONENT, float)[members]
        group = by_group[name]
        assert group.n == len(members) and group.opponent == "embedding" and group.metric == "accuracy"
        assert group.tuned == right_tuned.mean() and group.opponent_value == right_opponent.mean()
        assert group.difference == right_tuned.mean() - right_opponent.mean()
        # The interval of the verdict's own bootstrap (compare_evaluations, same seed and resamples) on the group's rows.
        alone = compare_evaluations(_classify("o", list(right_opponent.astype(bool)), [None] * len(members)),
                                    _classify("t", list(right_tuned.astype(bool)), [None] * len(members)), seed=3, samples=400)
        assert (group.low, group.high) == (alone.metric("accuracy").low, alone.metric("accuracy").high)
    assert by_group["FR"].outcome == "better" and by_group["DE"].outcome == "worse"


def test_a_group_the_tuned_model_loses_is_named_under_a_paid_off_verdict():
    tuned, opponent = _classify("tuned", TUNED, GROUPS), _classify("embedding", OPPONENT, GROUPS)
    # The opponent is far worse on the larger FR: the verdict is "paid off" on average.
    verdict = compare_with_baselines({"embedding": opponent}, tuned, seed=0, samples=400)
    assert verdict.verdict == PAID_OFF
    de = next(group for group in verdict.groups if group.group == "DE")
    assert verdict.group_lines == [
        f"worse than embedding on group 'DE': {de.difference:+.4g} accuracy (95% CI {de.low:+.4g} to {de.high:+.4g}), n=60"
    ]
    assert de.high < 0
    # Saved with the verdict (eval/comparison.json) and read back whole.
    again = Verdict.from_dict(verdict.to_dict())
    assert again.to_dict()["groups"] == verdict.to_dict()["groups"] and again.group_lines == verdict.group_lines
    assert verdict.to_dict()["group_lines"] == verdict.group_lines


def test_a_small_group_says_too_few_and_no_interval():
    tuned, opponent = _classify("tuned", TUNED, GROUPS), _classify("embedding", OPPONENT, GROUPS)
    verdict = compare_with_baselines({"embedding": opponent}, tuned, samples=200)
    italy = next(group for group in verdict.groups if group.group == "IT")
    assert italy.n == 10 < MIN_TEST_EXAMPLES
    assert italy.outcome == "too few (n=10)" and np.isnan(italy.low) and np.isnan(italy.high)
    assert italy.worse_line is None
    assert Verdict.from_dict(verdict.to_dict()).groups[2].outcome == "too few (n=10)"


def test_no_groups_without_a_group_column():
    tuned, opponent = _classify("tuned", TUNED, [None] * len(GROUPS)), _classify("embedding", OPPONENT, [None] * len(GROUPS))
    verdict = compare_with_baselines({"embedding": opponent}, tuned, samples=200)
    assert verdict.groups == [] and verdict.group_lines == []
    assert verdict.to_dict()["groups"] == []


def test_every_row_of_a_grouped_record_carries_its_group():
    # The rows the model and every baseline are scored into (score_classify, score_sft, a remote model's classify_rows).
    from tunelab.data.records import ClassifyRecord, SFTRecord
    from tunelab.evaluation.evaluate import score_classify, score_sft
    from tunelab.evaluation.remote import classify_rows

    records = [ClassifyRecord("lost card", "card", group="FR"), ClassifyRecord("refund", "refund")]
    rows, _, _ = score_classify(records, np.array([[0.9, 0.1], [0.2, 0.8]]), ["card", "refund"])
    assert rows[0]["group"] == "FR" and "group" not in rows[1]  # a record without one: its row as before
    rows, _, _ = classify_rows(records, ["card", "refund"], ["card", "refund"])
    assert rows[0]["group"] == "FR" and "group" not in rows[1]
    chats = [SFTRecord(({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}), group="DE")]
    rows, _ = score_sft(chats, ["Hello"], [["Hello"]])
    assert rows[0]["group"] == "DE"


def test_the_report_and_the_cli_show_the_groups_and_the_lost_one(tmp_path, capsys):
    import json

    from tunelab.cli.common import print_group_lines
    from tunelab.cli.evaluate import print_verdict
    from tunelab.evaluation.report import write_report

    tuned, opponent = _classify("tuned", TUNED, GROUPS), _classify("embedding", OPPONENT, GROUPS)
    verdict = compare_with_baselines({"embedding": opponent}, tuned, samples=200)
    (line,) = verdict.group_lines
    files = write_report(tmp_path, {"embedding": opponent}, tuned, verdict)
    markdown, page = files.markdown.read_text(), files.html.read_text()
    # Right under the verdict, before any table: "paid off" does not hide it.
    assert markdown.index(line) < markdown.index("## Against each baseline") and "## By group" in markdown
    assert "| IT | 10 | 1 | 1 | 0 | - | too few (n=10) |" in markdown
    assert line.replace("'", "&#x27;") in page and "<h2>By group</h2>" in page
    print_verdict(verdict)
    shown = capsys.readouterr().out
    assert "by group" in shown and "too few" in shown and line in " ".join(shown.split())
    # `tunelab show` renders the registry's copy of the verdict (its JSON) by the same function.
    print_group_lines(json.loads(json.dumps(verdict.to_dict())))
    assert line in " ".join(capsys.readouterr().out.split())
