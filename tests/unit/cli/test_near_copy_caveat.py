"""The split's near-copy finding (``data.near_copies``) is kept in the run folder (split.json), so report.md/html say it
under the verdict and ``tunelab show`` in a row: with most test prompts a word away from a training one, the report said
"use embedding instead" with no caveat, and the line lived only in the console and pipeline.json."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunelab.config import parse_config
from tunelab.data.near_copies import NearCopies, NearCopy
from tunelab.evaluation.compare import compare_with_baselines
from tunelab.evaluation.report import write_report
from tunelab.evaluation.result import EvalResult
from tunelab.registry import Registry
from tunelab.runs import RunFolder, read_near_copies

pytestmark = pytest.mark.usefixtures("wide_console")

CAVEAT = "79 of 100 test requests (79%) are near-copies of training requests (similarity ≥ 0.9): every score on them is optimistic"


def _found(count: int = 79) -> NearCopies:
    pairs = [NearCopy(f"test.jsonl:{i}", f"train.jsonl:{i}", 0.95, f"cancel order {i}", f"cancel my order {i}") for i in range(1, 6)]
    return NearCopies(0.9, 100, count, pairs[: min(count, 5)])


def _split_file(folder, found: NearCopies | None, *, key: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    saved = {"version": 1, "task": "classify", "train": [], "validation": [], "test": []}
    if key:
        saved["near_copies"] = found.to_dict() if found is not None else None
    RunFolder(folder).split.write_text(json.dumps(saved))


def _classify(name, outcomes):
    rows = [{"id": f"x{i}", "source": f"t:{i + 1}", "prompt": f"text {i}", "reference": "a", "prediction": "a" if ok else "b",
             "scores": {"correct": float(ok), "confidence": 0.9, "probability_of_reference": 0.9 if ok else 0.1}}
            for i, ok in enumerate(outcomes)]
    return EvalResult("classify", name, len(rows), {}, rows, labels=["a", "b"], test_fingerprint="same")


def _report(folder):
    tuned, base = _classify("tuned", [True] * 20 + [False] * 30), _classify("embedding", [True] * 45 + [False] * 5)
    verdict = compare_with_baselines({"embedding": base}, tuned, samples=100)
    files = write_report(folder, {"embedding": base}, tuned, verdict)
    return verdict, files.markdown.read_text(), files.html.read_text()


def test_the_stored_finding_reads_back_with_three_pairs_at_most(tmp_path):
    _split_file(tmp_path, _found())
    found = read_near_copies(RunFolder(tmp_path))
    assert (found.count, found.compared, found.threshold) == (79, 100, 0.9)
    assert [pair.test for pair in found.pairs] == ["test.jsonl:1", "test.jsonl:2", "test.jsonl:3"]
    assert found.caveat() == CAVEAT
    saved = json.loads(RunFolder(tmp_path).split.read_text())["near_copies"]
    assert saved["share"] == 0.79 and len(saved["pairs"]) == 3


def test_the_report_says_the_near_copies_under_the_verdict(tmp_path):
    _split_file(tmp_path, _found())
    verdict, markdown, page = _report(tmp_path)
    assert verdict.verdict.startswith("use ")
    lines = markdown.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("**Verdict:"))
    assert lines[at + 2] == f"**{CAVEAT}.**", markdown
    assert markdown.count("near-copies") == 1
    after = page.split("Verdict:", 1)[1]
    assert CAVEAT in after.split("<h2>", 1)[0] and page.count("near-copies") == 1


@pytest.mark.parametrize("case", ["none found", "documents", "older split.json", "no split.json"])
def test_a_run_without_near_copies_or_an_older_folder_reports_as_before(tmp_path, case):
    if case != "no split.json":
        _split_file(tmp_path, _found(0) if case == "none found" else None, key=case != "older split.json")
    _, markdown, page = _report(tmp_path)
    assert "near-copies" not in markdown and "near-copies" not in page
    assert read_near_copies(RunFolder(tmp_path)) is None or read_near_copies(RunFolder(tmp_path)).caveat() is None


def _registered(tmp_path, found: NearCopies | None, *, key: bool = True):
    folder = tmp_path / "runs" / "leaky"
    _split_file(folder, found, key=key)
    path = tmp_path / "registry.db"
    Registry(path).create_run(name="leaky", task="classify", model="default", status="finished", run_dir=str(folder),
                              comparison={"verdict": "use embedding instead"})
    return path


def test_show_says_the_near_copies_in_one_row_and_in_json(app, tmp_path):
    path = _registered(tmp_path, _found())
    result = CliRunner().invoke(app, ["show", "leaky", "--registry", str(path)])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "near-copies" in line)
    assert "79 of 100 test requests (79%)" in row, result.output
    shown = json.loads(CliRunner().invoke(app, ["show", "leaky", "--registry", str(path), "--json"]).output)
    assert shown["near_copies"]["count"] == 79 and shown["near_copies"]["compared"] == 100
    assert shown["near_copies"]["share"] == 0.79 and shown["near_copies"]["threshold"] == 0.9
    assert len(shown["near_copies"]["pairs"]) == 3


@pytest.mark.parametrize("case", ["none found", "older split.json"])
def test_show_of_a_run_without_near_copies_says_nothing_new(app, tmp_path, case):
    path = _registered(tmp_path, _found(0), key=case != "older split.json")
    result = CliRunner().invoke(app, ["show", "leaky", "--registry", str(path)])
    assert result.exit_code == 0, result.output
    assert "near-copies" not in result.output
    shown = json.loads(CliRunner().invoke(app, ["show", "leaky", "--registry", str(path), "--json"]).output)
    assert "near_copies" not in shown


def _twice_each(path):
    # Forty distinct requests, each written twice with another order number: near-copies, never identical.
    topics = [f"{verb} my {thing}" for verb in ("cancel", "return", "track", "change", "repair")
              for thing in ("kettle", "teapot", "frying pan", "knife set", "toaster", "blender", "oven mitts", "scale")]
    texts = [f"Please {topic}, order {n}" for topic in topics for n in (1000 + len(topic), 2000 + len(topic))]
    path.write_text("".join(json.dumps({"text": text, "label": text.split()[1]}) + "\n" for text in texts))
    return path


def test_the_split_step_keeps_the_finding_in_the_run_folder(tmp_path, tiny_model_dir):
    from tunelab.data.near_copies import find_near_copies
    from tunelab.tasks import pipeline

    path = _twice_each(tmp_path / "data.jsonl")
    config = parse_config({"task": "classify", "model": str(tiny_model_dir), "name": "near",
                           "data": {"train": str(path), "test_size": 0.25, "max_length": 64},
                           "train": {"output_dir": str(tmp_path / "runs")}})
    context = pipeline.open_pipeline(config, calibrate=False)
    split = pipeline.split_step(context)
    expected = find_near_copies(split.test, [*split.train, *split.validation])
    kept = read_near_copies(context.run)
    assert expected.count > 0 and (kept.count, kept.compared) == (expected.count, expected.compared)
    assert [pair.test for pair in kept.pairs] == [pair.test for pair in expected.pairs[:3]]
    assert sum("near-copies:" in message for message in context.warnings) == 1  # said once, as before
