"""Identical answers in a blind review: neither the exported sheet nor the Review page asks them, and both report how many.

The page left them out while the exported sheet asked them and counted their "tie" as half a win, so one run reviewed
both ways got two win rates.
"""

import csv
import json

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tunelab.cli.main import _register_commands, app
from tunelab.evaluation.result import EvalResult
from tunelab.evaluation.review import export_review, load_sheet, review_sheet_path, score_review
from tunelab.registry import Registry
from tunelab.ui import UISettings, create_app

HEADERS = {"X-Tunelab-UI": "1"}
# q0..q2 answered alike (q1 only in spacing and line breaks: the same answer to `same_answer`), q3..q7 differently.
BASE = ["Paris.", "The answer\nis 4.", "Blue", "base 3", "base 4", "base 5", "base 6", "base 7"]
TUNED = ["Paris.", "The  answer is 4. ", "Blue", "tuned 3", "tuned 4", "tuned 5", "tuned 6", "tuned 7"]


def _result(name, answers):
    rows = [{"id": f"q{i}", "source": "", "prompt": f"question {i}", "reference": "r", "prediction": a, "scores": {}} for i, a in enumerate(answers)]
    return EvalResult("sft", name, len(rows), {}, rows)


def _tuned_side(sides, example_id):
    return next(side for side, model in sides[example_id].items() if model == "tuned")


def test_the_sheet_and_the_page_ask_the_same_rows_and_score_the_same_judgments_alike(tmp_path):
    run_dir = tmp_path / "runs" / "demo"
    base, tuned = _result("base", BASE), _result("tuned", TUNED)
    base.save(run_dir / "eval" / "base.json")
    tuned.save(run_dir / "eval" / "tuned.json")
    registry = Registry(tmp_path / "runs" / "registry.db")
    record = registry.create_run(name="demo", task="sft", run_dir=str(run_dir))

    # The page: ann is shown every row it asks and prefers the tuned answer each time.
    with TestClient(create_app(UISettings(registry=registry.path)), base_url="http://127.0.0.1:7860") as client:
        state = client.get(f"/api/runs/{record.id}/review", params={"reviewer": "ann"}).json()
        sides = load_sheet(review_sheet_path(run_dir)).sides
        asked = []
        while state["next"] is not None:
            example_id = state["next"]["id"]
            asked.append(example_id)
            body = {"reviewer": "ann", "example_id": example_id, "preference": _tuned_side(sides, example_id)}
            state = client.post(f"/api/runs/{record.id}/review", json=body, headers=HEADERS).json()
        page = client.get(f"/runs/{record.id}/review", params={"reviewer": "ann"}).text
    assert sorted(asked) == ["q3", "q4", "q5", "q6", "q7"] and state["identical"] == 3
    assert "3 identical answers not asked" in page
    by_page = state["score"]

    # The sheet (`tunelab review export`): the same rows; the reviewer prefers the tuned answer on each row it shows.
    sheet, key = export_review(base, tuned, tmp_path / "sheet.csv", seed=0)
    with sheet.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["id"] for row in rows) == sorted(asked)
    by_sheet_sides = load_sheet(sheet).sides
    for row in rows:
        row["preference"] = _tuned_side(by_sheet_sides, row["id"])
    with sheet.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    by_sheet = score_review(sheet, key).to_dict()

    for name in ("judged", "tuned_wins", "base_wins", "ties", "win_rate", "low", "high", "identical"):
        assert by_sheet[name] == by_page[name], name
    assert (by_sheet["judged"], by_sheet["win_rate"], by_sheet["identical"], by_sheet["missing"]) == (5, 1.0, 3, 0)

    _register_commands()
    printed = CliRunner().invoke(app, ["review", "score", str(sheet)])
    assert printed.exit_code == 0, printed.output
    assert "3 identical answers not asked" in printed.output


def test_a_sheet_exported_before_the_rule_still_scores_its_identical_rows_as_not_asked(tmp_path):
    # Sheets written before identical answers were left out still hold them; a "tie" (or an A) filled in on such a row
    # is no judgement of either model, as on the page.
    base, tuned = _result("base", BASE), _result("tuned", TUNED)
    sheet, key = export_review(base, tuned, tmp_path / "sheet.csv", seed=0)
    sides = load_sheet(sheet).sides
    # The key as an old export wrote it: the identical rows have sides too, and no list of identical rows.
    old_key = json.loads(key.read_text(encoding="utf-8"))
    old_key.pop("identical", None)
    old_key["sides"].update({f"q{i}": {"A": "tuned", "B": "base"} for i in range(3)})
    key.write_text(json.dumps(old_key), encoding="utf-8")
    rows = []
    for example_id in [i for i in sides if i not in ("q0", "q1", "q2")]:
        a, b = ("tuned", "base") if sides[example_id]["A"] == "tuned" else ("base", "tuned")
        answers = {"tuned": TUNED[int(example_id[1:])], "base": BASE[int(example_id[1:])]}
        rows.append({"id": example_id, "prompt": "p", "output_a": answers[a], "output_b": answers[b], "preference": _tuned_side(sides, example_id)})
    for example_id, preference in (("q0", "tie"), ("q1", "A"), ("q2", "")):
        rows.append({"id": example_id, "prompt": "p", "output_a": TUNED[int(example_id[1:])], "output_b": BASE[int(example_id[1:])], "preference": preference})
    with sheet.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    score = score_review(sheet, key)
    assert (score.judged, score.ties, score.win_rate, score.unjudged, score.identical) == (5, 0, 1.0, 0, 3)
