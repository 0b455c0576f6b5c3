"""A review sheet as it comes back from a spreadsheet program (Excel, LibreOffice): its saving habits are read, and what
would score the wrong rows or the wrong sides is refused instead of counted."""

import csv
import io
import json

import pytest

from tunelab.errors import DataError
from tunelab.evaluation.metrics import wilson_interval
from tunelab.evaluation.result import EvalResult
from tunelab.evaluation.review import export_review, load_sheet, review_pairs, score_review

COLUMNS = ["id", "prompt", "output_a", "output_b", "preference"]


def _result(name, answers):
    rows = [{"id": f"q{i}", "source": "", "prompt": f"question {i}", "reference": "r", "prediction": a, "scores": {}} for i, a in enumerate(answers)]
    return EvalResult("sft", name, len(rows), {}, rows)


@pytest.fixture
def exported(tmp_path):
    """A sheet of six rows with two-line answers, and its rows judged for the tuned answer every time."""
    base = _result("base", [f"base answer {i}\nsecond line" for i in range(6)])
    tuned = _result("tuned", [f"tuned answer {i}\nsecond line" for i in range(6)])
    sheet, key, rows = _judged_for_tuned(base, tuned, tmp_path / "review.csv")
    return base, tuned, sheet, key, rows


def _judged_for_tuned(base, tuned, path):
    """The exported sheet, its key, and its rows with the tuned answer preferred on every one (not yet saved)."""
    sheet, key = export_review(base, tuned, path, seed=0)
    sides = json.loads(key.read_text())["sides"]
    with sheet.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["preference"] = "A" if sides[row["id"]]["A"] == "tuned" else "B"
    return sheet, key, rows


def _save(path, rows, header=COLUMNS, *, delimiter=",", trailer=""):
    """What a spreadsheet program writes: a BOM, CRLF line ends, quoted newlines, its own delimiter."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row[name] for name in COLUMNS])
    path.write_text("\ufeff" + buffer.getvalue() + trailer, encoding="utf-8", newline="")
    return path


def test_a_sheet_saved_with_semicolons_in_a_european_locale_is_read(exported):
    # LibreOffice and Excel in a German or French locale save CSV with ';': the sheet was refused for "missing column(s)
    # id, preference", though every column was there.
    _, _, sheet, key, rows = exported
    _save(sheet, rows, delimiter=";")
    score = score_review(sheet)
    assert (score.tuned_wins, score.base_wins, score.judged) == (6, 0, 6)
    assert review_pairs(sheet, sheet.with_name("pairs.jsonl")).tuned_chosen == 6


def test_header_names_as_a_person_retypes_them_are_read(exported):
    _, _, sheet, _, rows = exported
    _save(sheet, rows, header=["ID", "Prompt", "Output A", "output_b ", "Preference"])
    assert score_review(sheet).tuned_wins == 6


def test_empty_rows_a_spreadsheet_leaves_at_the_end_are_not_rows(exported):
    # Excel keeps rows that were once touched as ",,,,": they were refused as "id '' is not in the key".
    _, _, sheet, _, rows = exported
    rows[0]["preference"] = ""
    _save(sheet, rows, trailer=",,,,\r\n , , ,,\r\n")
    score = score_review(sheet)
    assert (score.tuned_wins, score.judged, score.unjudged) == (5, 5, 1)
    assert len(load_sheet(sheet).rows) == 6


def test_a_row_given_twice_is_refused_not_counted_twice(exported):
    # A row pasted twice (or left in after sorting) counted as two judgments: 8 wins out of a sheet of 6 rows.
    _, _, sheet, _, rows = exported
    _save(sheet, [*rows, rows[2]])
    with pytest.raises(DataError, match=rf"review\.csv:22: id '{rows[2]['id']}' is also on line 10"):
        score_review(sheet)
    with pytest.raises(DataError, match="also on line"):
        review_pairs(sheet, sheet.with_name("pairs.jsonl"))


def test_two_reviewers_of_the_same_row_are_two_judgments(exported, tmp_path):
    # What `write_judged_sheet` writes for the browser's judgments: one row per reviewer and example.
    _, _, sheet, _, rows = exported
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*COLUMNS, "reviewer"])
    for reviewer in ("ann", "bob"):
        for row in rows:
            writer.writerow([*(row[name] for name in COLUMNS), reviewer])
    judged = sheet.with_name("judged.csv")
    judged.write_text(buffer.getvalue(), encoding="utf-8")
    assert score_review(judged, sheet.with_name("review.key.json")).tuned_wins == 12


def test_the_key_of_another_seed_is_refused(exported, tmp_path):
    # Exported again with another seed, the ids are the same but the sides are not: the reviewer who chose the tuned
    # answer every time was scored 3 wins and 3 losses, silently.
    base, tuned, sheet, _, rows = exported
    _save(sheet, rows)
    _, other_key = export_review(base, tuned, tmp_path / "again.csv", seed=1)
    with pytest.raises(DataError, match="not the key of this sheet"):
        score_review(sheet, other_key)
    with pytest.raises(DataError, match="not the key of this sheet"):
        review_pairs(sheet, tmp_path / "pairs.jsonl", other_key)


def test_the_key_of_another_run_with_the_same_ids_is_refused(exported, tmp_path):
    _, _, sheet, _, rows = exported
    _save(sheet, rows)
    _, other_key = export_review(_result("b", [f"x{i}" for i in range(6)]), _result("t", [f"y{i}" for i in range(6)]), tmp_path / "other.csv")
    with pytest.raises(DataError, match="not the key of this sheet"):
        score_review(sheet, other_key)


def test_an_answer_a_spreadsheet_reformatted_does_not_refuse_the_sheet(exported):
    # The sides are checked by the answers' text; a cell the program changed (trailing spaces, CRLF in a cell) is no
    # sign of another key, and the other rows still match.
    _, _, sheet, _, rows = exported
    rows[0]["output_a"] = rows[0]["output_a"].replace("\n", "\r\n") + "  "
    rows[1]["output_b"] = "edited by hand"
    _save(sheet, rows)
    assert score_review(sheet).tuned_wins == 6


def test_a_preference_evaluation_is_refused_for_review_with_a_reason(tmp_path):
    # `tunelab review export runs/my-dpo` ended in KeyError: 'prediction' (a preference evaluation scores given pairs).
    rows = [{"id": "p0", "source": "", "prompt": "x", "chosen": "a", "rejected": "b", "scores": {}}]
    pairs = EvalResult("preference", "m", 1, {}, rows)
    with pytest.raises(DataError, match="no generated answers") as raised:
        export_review(pairs, pairs, tmp_path / "review.csv")
    assert "review.csv" in raised.value.hint


def test_a_clean_sweep_has_an_interval_ending_exactly_at_one():
    # 10 of 10 read high = 0.9999999999999999 in `review score --json`.
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0


def test_the_sides_by_position_are_not_the_same_on_every_sheet_of_one_seed(tmp_path):
    # The side of the k-th row came from the seed and the row count alone: every 20-row sheet exported with seed 0 (the
    # README's, the web interface's) had the tuned answer on the same positions, so one key seen told them all.
    def side_pattern(run, ids):
        def result(name):
            rows = [{"id": i, "source": "", "prompt": f"question {i}", "reference": "r", "prediction": f"{name} {run} {i}", "scores": {}} for i in ids]
            return EvalResult("sft", name, len(rows), {}, rows)

        sheet, _ = export_review(result("base"), result("tuned"), tmp_path / f"{run}.csv", seed=0)
        with sheet.open(newline="", encoding="utf-8") as handle:
            return "".join("T" if row["output_a"].startswith("tuned") else "b" for row in csv.DictReader(handle))

    first = side_pattern("r1", [f"q{i}" for i in range(20)])
    assert side_pattern("r2", [f"ex-{i * 7}" for i in range(20)]) != first
    assert side_pattern("r3", [f"q{i}" for i in range(20)]) != first  # the same test set answered by another run
    assert side_pattern("r1", [f"q{i}" for i in range(20)]) == first  # still the seed's own sheet


def test_rows_deleted_from_the_sheet_are_counted_and_said(exported):
    # A reviewer who deleted the rows they did not want to judge got a win rate over what was left, and "not judged 0".
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app

    _, _, sheet, _, rows = exported
    _save(sheet, rows[2:])
    score = score_review(sheet)
    assert (score.judged, score.unjudged, score.missing) == (4, 0, 2)
    if not any(c.name == "eval" for c in app.registered_commands):
        _register_commands()
    result = CliRunner().invoke(app, ["review", "score", str(sheet)])
    assert result.exit_code == 0 and "2 rows of the key are not in the sheet" in result.output


def test_answers_alike_but_for_spacing_are_not_asked_as_the_web_page_treats_them(tmp_path):
    # The Review page does not ask a row whose answers differ only in spacing (it compares them with spaces
    # collapsed); a sheet's row of those answers judged A was a win for the score and a DPO pair of two same answers.
    # The sheet now leaves it out too (`not_asked`), and the score says so.
    base = _result("base", ["Paris is the capital.", "base answer"])
    tuned = _result("tuned", ["Paris is the  capital.\n", "tuned answer"])
    sheet, _, rows = _judged_for_tuned(base, tuned, tmp_path / "review.csv")
    _save(sheet, rows)
    score = score_review(sheet)
    assert (score.tuned_wins, score.ties, score.identical, len(rows)) == (1, 0, 1, 1)
    assert (review_pairs(sheet, tmp_path / "pairs.jsonl").pairs, score.judged) == (1, 1)


def test_a_sheet_saved_in_a_windows_code_page_is_a_clear_error(exported):
    # Excel's plain "CSV" is saved in the Windows code page: an answer with an accent ended in a UnicodeDecodeError.
    _, _, sheet, _, rows = exported
    rows[0]["output_a"] += " café"
    buffer = io.StringIO()
    csv.writer(buffer).writerows([COLUMNS, *([row[name] for name in COLUMNS] for row in rows)])
    sheet.write_bytes(buffer.getvalue().encode("cp1252"))
    with pytest.raises(DataError, match="not UTF-8") as raised:
        score_review(sheet)
    assert "CSV UTF-8" in raised.value.hint


def test_exporting_again_does_not_overwrite_a_filled_sheet(tmp_path):
    # `tunelab review export RUN` a second time (another seed, or just again after people filled the sheet in) wrote a
    # blank sheet and a new key over the filled one: every judgment lost, and the web page's stored judgments (A or B)
    # read with other sides.
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app

    if not any(c.name == "eval" for c in app.registered_commands):
        _register_commands()
    run = tmp_path / "run"
    _result("base", [f"base answer {i}" for i in range(6)]).save(run / "eval" / "base.json")
    _result("tuned", [f"tuned answer {i}" for i in range(6)]).save(run / "eval" / "tuned.json")
    runner = CliRunner()
    assert runner.invoke(app, ["review", "export", str(run)]).exit_code == 0
    assert runner.invoke(app, ["review", "export", str(run)]).exit_code == 0  # the same sheet again: nothing is lost
    key = json.loads((run / "review.key.json").read_text())
    refused = runner.invoke(app, ["review", "export", str(run), "--seed", "1"])
    assert isinstance(refused.exception, DataError) and "already exists" in str(refused.exception)
    assert json.loads((run / "review.key.json").read_text()) == key
    sheet = run / "review.csv"
    with sheet.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    rows[0]["preference"] = "A"
    _save(sheet, rows)
    assert isinstance(runner.invoke(app, ["review", "export", str(run)]).exception, DataError)
    assert score_review(sheet).judged == 1
