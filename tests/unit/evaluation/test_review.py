import csv
import json

import pytest

from tunelab.errors import DataError
from tunelab.evaluation.result import EvalResult
from tunelab.evaluation.review import export_review, score_review, wilson_interval


def _result(name, answers):
    rows = [{"id": f"q{i}", "source": "", "prompt": f"question {i}", "reference": "r", "prediction": a, "scores": {}} for i, a in enumerate(answers)]
    return EvalResult("sft", name, len(rows), {}, rows)


def _fill(sheet, key, choose):
    sides = json.loads(key.read_text())["sides"]
    with sheet.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["preference"] = choose(row, sides[row["id"]])
    with sheet.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_export_is_blind_seeded_and_scores_back(tmp_path):
    base = _result("base", [f"base answer {i}" for i in range(20)])
    tuned = _result("tuned", [f"tuned answer {i}" for i in range(20)])
    sheet, key = export_review(base, tuned, tmp_path / "review.csv", seed=3)
    assert key.name == "review.key.json"
    rows = list(csv.DictReader(sheet.open()))
    assert list(rows[0]) == ["id", "prompt", "output_a", "output_b", "preference"]
    assert all(r["preference"] == "" for r in rows)
    assert [r["id"] for r in rows] != [f"q{i}" for i in range(20)]  # shuffled
    tuned_on_a = sum(r["output_a"].startswith("tuned") for r in rows)
    assert 0 < tuned_on_a < 20  # sides are randomised
    again, _ = export_review(base, tuned, tmp_path / "again.csv", seed=3)
    assert again.read_text() == sheet.read_text()

    # The reviewer prefers the tuned answer 14 times, the base 4 times, and calls 2 ties.
    def choose(row, side):
        number = int(row["id"][1:])
        if number < 2:
            return "tie"
        if number < 6:
            return "A" if side["A"] == "base" else "b"
        return "A" if side["A"] == "tuned" else "B"

    _fill(sheet, key, choose)
    score = score_review(sheet)
    assert (score.tuned_wins, score.base_wins, score.ties, score.judged) == (14, 4, 2, 20)
    assert score.win_rate == pytest.approx(15 / 20)
    assert score.low < 0.75 < score.high and score.low > 0.5


def test_wilson_interval_by_hand():
    low, high = wilson_interval(15, 20)
    # Wilson: centre (p + z²/2n)/(1 + z²/n), with p = 0.75, n = 20, z = 1.96.
    assert low == pytest.approx(0.5313, abs=1e-3) and high == pytest.approx(0.8881, abs=1e-3)


def test_bad_sheets_are_clear_errors(tmp_path):
    base, tuned = _result("base", ["x", "y"]), _result("tuned", ["z", "w"])
    sheet, key = export_review(base, tuned, tmp_path / "s.csv")
    with pytest.raises(DataError, match="no row has a preference"):
        score_review(sheet)
    _fill(sheet, key, lambda row, side: "maybe")
    with pytest.raises(DataError, match=r"s.csv:2: preference 'maybe' is not A, B or tie"):
        score_review(sheet)
    with pytest.raises(DataError, match="not found"):
        score_review(tmp_path / "nothing.csv")
    with pytest.raises(DataError, match="no generated outputs"):
        export_review(EvalResult("text", "a", 0, {}, []), EvalResult("text", "b", 0, {}, []), tmp_path / "t.csv")
