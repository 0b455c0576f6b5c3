import csv
import json

import pytest

from tunelab.data.records import SFTRecord
from tunelab.errors import DataError
from tunelab.evaluation.evaluate import score_sft
from tunelab.evaluation.metrics import wilson_interval
from tunelab.evaluation.result import EvalResult
from tunelab.evaluation.review import export_review, score_review


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
    # A tie counts half: 14.5 of 20 is a fractional count, the same formula.
    assert wilson_interval(14.5, 20)[0] == pytest.approx(0.5059, abs=1e-3)


def test_one_wilson_interval_for_review_and_monitoring():
    """review and monitor each had their own, and they disagreed at n = 0 ((0, 1) against NaN)."""
    import tunelab.monitor.check as monitor_check
    import tunelab.monitor.signals as signals
    from tunelab.evaluation import review

    assert not hasattr(signals, "wilson_interval")
    assert review.wilson_interval is wilson_interval and monitor_check.wilson_interval is wilson_interval
    assert wilson_interval(0, 0) == (0.0, 1.0)  # nothing observed: every proportion is possible


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
    # A text evaluation written before continuation samples were kept has nothing to compare.
    with pytest.raises(DataError, match="no continuation samples"):
        export_review(EvalResult("text", "a", 0, {}, []), EvalResult("text", "b", 0, {}, []), tmp_path / "t.csv")


def test_review_pairs_are_exactly_the_decided_rows(tmp_path):
    from tunelab.config import DataConfig
    from tunelab.data.read import load_records
    from tunelab.evaluation.review import review_pairs

    base = _result("base", [f"base answer {i}" for i in range(12)])
    tuned = _result("tuned", [f"tuned answer {i}" for i in range(12)])
    sheet, key = export_review(base, tuned, tmp_path / "review.csv", seed=1)
    # q0..q3 blank, q4..q5 tie, even others prefer tuned, odd others prefer base; "a"/"B " casing and spaces allowed.
    def choose(row, side):
        i = int(row["id"][1:])
        if i < 4:
            return ""
        if i < 6:
            return "tie"
        wanted = "tuned" if i % 2 == 0 else "base"
        letter = "A" if side["A"] == wanted else "B"
        return letter.lower() if i == 6 else f"{letter} "

    _fill(sheet, key, choose)
    result = review_pairs(sheet, tmp_path / "pairs.jsonl")
    assert (result.pairs, result.ties, result.unjudged, result.tuned_chosen, result.base_chosen) == (6, 2, 4, 3, 3)
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    expected = {
        f"question {i}": (f"tuned answer {i}", f"base answer {i}") if i % 2 == 0 else (f"base answer {i}", f"tuned answer {i}")
        for i in range(6, 12)
    }
    assert {p["prompt"]: (p["chosen"], p["rejected"]) for p in pairs} == expected
    # Each pair leads back to its sheet's row, whichever folder it lies in (every run's sheet is called review.csv).
    assert {p["review"].rsplit(":", 1)[0] for p in pairs} == {str(sheet.resolve())}
    # The pairs file is preference data as tunelab reads it.
    records = load_records(str(tmp_path / "pairs.jsonl"), "preference", DataConfig())
    assert sorted(r.chosen for r in records) == sorted(c for c, _ in expected.values())


def test_review_pairs_errors_name_the_line(tmp_path):
    from tunelab.evaluation.review import review_pairs

    base, tuned = _result("base", ["x", "y"]), _result("tuned", ["z", "w"])
    sheet, key = export_review(base, tuned, tmp_path / "s.csv")
    _fill(sheet, key, lambda row, side: "")
    with pytest.raises(DataError, match="no row prefers A or B"):
        review_pairs(sheet, tmp_path / "p.jsonl")
    _fill(sheet, key, lambda row, side: "better")
    with pytest.raises(DataError, match=r"s\.csv:2: preference 'better'"):
        review_pairs(sheet, tmp_path / "p.jsonl")
    assert not (tmp_path / "p.jsonl").exists()


def test_identical_outputs_are_not_asked_for_the_score_nor_the_pairs(tmp_path):
    """`review score` counted an identical-output row judged A as a win, `review pairs` dropped it as a tie; then both
    counted it a tie (half a win) while the Review page never asked it: one rule now, the row is not asked."""
    from tunelab.evaluation.review import review_pairs

    base = _result("base", ["same answer", "base answer", "base other"])
    tuned = _result("tuned", ["same answer", "tuned answer", "tuned other"])
    sheet, key = export_review(base, tuned, tmp_path / "review.csv", seed=0)
    # The reviewer clicks the tuned side everywhere, also on the row whose two outputs are the same text.
    _fill(sheet, key, lambda row, side: "A" if side["A"] == "tuned" else "B")
    score = score_review(sheet)
    pairs = review_pairs(sheet, tmp_path / "pairs.jsonl")
    assert (score.tuned_wins, score.ties, score.judged, score.identical) == (2, 0, 2, 1) and score.win_rate == 1.0
    assert (pairs.pairs, pairs.ties) == (2, 0)


def test_a_test_example_given_twice_is_one_row_of_the_sheet_scored_on_its_own_sides(tmp_path):
    # A duplicated test example (evaluation scores each copy) had two rows of one id, each with its own random
    # sides, and one entry in the key: a reviewer who always chose the tuned answer got base wins.
    def doubled(name):
        result = _result(name, [f"{name} answer {i}" for i in range(10)])
        result.rows += [dict(row) for row in result.rows]
        result.n = len(result.rows)
        return result

    sheet, key = export_review(doubled("base"), doubled("tuned"), tmp_path / "review.csv", seed=0)
    with sheet.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # the reviewer reads the outputs, not the key
        row["preference"] = "A" if row["output_a"].startswith("tuned") else "B"
    with sheet.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    score = score_review(sheet)
    assert (score.tuned_wins, score.base_wins) == (score.judged, 0)
    assert sorted(r["id"] for r in rows) == [f"q{i}" for i in range(10)]  # one row per example, as the registry keys judgments


# -- review pairs: a prompt of several messages ----------------------------------------------------------------------
DIALOGUE_RECORDS = [
    SFTRecord(({"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Capital of Italy?"},
               {"role": "assistant", "content": "Rome."}), source="test.jsonl:1"),
    SFTRecord(({"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}), source="test.jsonl:2"),
]


def _sft_result(name: str, answers: list[str]) -> EvalResult:
    rows, metrics = score_sft(DIALOGUE_RECORDS, answers, [[r.completion] for r in DIALOGUE_RECORDS])
    return EvalResult("sft", name, len(rows), metrics, rows)


def test_pairs_keep_each_prompt_as_its_messages(tmp_path):
    """``tunelab review pairs`` writes each pair's prompt as the conversation the answers were generated for. The sheet's
    prompt column is one string for people to read ("system: ...\\nuser: ..." for more than one message); written as the
    pair's prompt, DPO trained on a single user turn holding that text, a prompt the SFT model was never asked with
    (its data's system message as words in the user's turn, a dialogue's earlier turns run together)."""
    from tunelab.config import DataConfig
    from tunelab.data.read import load_records
    from tunelab.evaluation.review import review_pairs

    sheet, key = export_review(_sft_result("base", ["Roma.", "Parigi."]), _sft_result("tuned", ["Rome.", "Paris."]), tmp_path / "review.csv")
    _fill(sheet, key, lambda row, sides: "A")
    pairs = review_pairs(sheet, tmp_path / "pairs.jsonl")
    records = load_records(str(pairs.path), "preference", DataConfig())
    prompts = sorted((list(r.prompt) for r in records), key=len)
    assert prompts == [[{"role": "user", "content": "Capital of France?"}],
                       [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Capital of Italy?"}]]
