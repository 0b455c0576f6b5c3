"""``tunelab review pairs`` writes each pair's prompt as the conversation the answers were generated for. The sheet's
prompt column is one string for people to read ("system: ...\\nuser: ..." for more than one message); written as the
pair's prompt, DPO trained on a single user turn holding that text, a prompt the SFT model was never asked with
(its data's system message as words in the user's turn, a dialogue's earlier turns run together)."""

from __future__ import annotations

import csv

from tunelab.config import DataConfig
from tunelab.data.read import load_records
from tunelab.data.records import SFTRecord
from tunelab.evaluation.evaluate import score_sft
from tunelab.evaluation.result import EvalResult
from tunelab.evaluation.review import export_review, review_pairs

RECORDS = [
    SFTRecord(({"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Capital of Italy?"},
               {"role": "assistant", "content": "Rome."}), source="test.jsonl:1"),
    SFTRecord(({"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}), source="test.jsonl:2"),
]


def _result(name: str, answers: list[str]) -> EvalResult:
    rows, metrics = score_sft(RECORDS, answers, [[r.completion] for r in RECORDS])
    return EvalResult("sft", name, len(rows), metrics, rows)


def test_pairs_keep_each_prompt_as_its_messages(tmp_path):
    sheet, _ = export_review(_result("base", ["Roma.", "Parigi."]), _result("tuned", ["Rome.", "Paris."]), tmp_path / "review.csv")
    with sheet.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["preference"] = "A"
    with sheet.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    pairs = review_pairs(sheet, tmp_path / "pairs.jsonl")
    records = load_records(str(pairs.path), "preference", DataConfig())
    prompts = sorted((list(r.prompt) for r in records), key=len)
    assert prompts == [[{"role": "user", "content": "Capital of France?"}],
                       [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Capital of Italy?"}]]
