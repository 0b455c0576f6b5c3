"""A fuzz corpus of hostile data files: `tunelab data check` answers each with exit code 2 and the bad
record's ``file:line``, in bounded time, without a traceback.

Before the caps, labels of 10 K / 30 K / 100 K characters took 1.9 / 11.6 / >120 s, a 1 MB label over
300 s, JSON nested 100,000 deep raised RecursionError, and one 50 MB record took 130 s and 4.8 GB.
The time bound is deliberately generous (a slow shared machine must never fail it); the cases it
guards against took minutes.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

SECONDS_PER_FILE = 60.0
GOOD = [{"text": f"my card number {i} was charged twice", "label": "billing" if i % 2 else "login"} for i in range(20)]


def _jsonl(path: Path, bad_line: str | bytes, *, before: int = 3, bom: bool = False) -> tuple[Path, int]:
    """GOOD rows with ``bad_line`` after the first ``before`` of them; returns the file and the bad line's number."""
    bad = bad_line if isinstance(bad_line, bytes) else bad_line.encode()
    lines = [json.dumps(row).encode() for row in GOOD[:before]] + [bad] + [json.dumps(row).encode() for row in GOOD[before:]]
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + b"\n".join(lines) + b"\n")
    return path, before + 1


def _label(size: int) -> str:
    return json.dumps({"text": "a normal request", "label": "L" * size})


def _deep(depth: int) -> str:
    return '{"text": "x", "label": ' + "[" * depth + "]" * depth + "}"


def _big_record(size: int) -> str:
    return json.dumps({"text": "x" * size, "label": "billing"})


def _corpus(folder: Path) -> list[tuple[str, Path, int, str, str]]:
    """(case, file, bad line, task, what the reason says)."""
    cases = []

    def add(name: str, built: tuple[Path, int], task: str, reason: str) -> None:
        cases.append((name, built[0], built[1], task, reason))

    add("label-10k", _jsonl(folder / "label-10k.jsonl", _label(10_000)), "classify", "max_label_chars")
    add("label-100k", _jsonl(folder / "label-100k.jsonl", _label(100_000)), "classify", "max_label_chars")
    add("label-1mb", _jsonl(folder / "label-1mb.jsonl", _label(1_000_000)), "classify", "max_label_chars")
    add("deep-100k", _jsonl(folder / "deep.jsonl", _deep(100_000)), "classify", "nested too deeply")
    add("record-50mb", _jsonl(folder / "record-50mb.jsonl", _big_record(50_000_000)), "classify", "record too large")
    add("not-utf8", _jsonl(folder / "latin1.jsonl", b'{"text": "caf\xe9", "label": "x"}'), "classify", "not UTF-8")
    add("truncated-json", _jsonl(folder / "truncated.jsonl", '{"text": "cut here', before=7), "classify", "invalid JSON")
    add("not-an-object", _jsonl(folder / "list.jsonl", "[1, 2, 3]"), "classify", "expected a JSON object")
    add("bom-and-bad-row", _jsonl(folder / "bom.jsonl", '{"text": "no label"}', bom=True), "classify", "missing label")
    add("nul-bytes", _jsonl(folder / "nul.jsonl", b'{"text": "\x00", "label": "\x00\x00"}'), "classify", "invalid JSON")
    add("sft-deep-messages", _jsonl(folder / "sft.jsonl", '{"messages": ' + "[" * 50_000 + "]" * 50_000 + "}"), "sft", "nested too deeply")
    deep_array = folder / "deep.json"
    deep_array.write_text("[\n" + json.dumps(GOOD[0]) + ",\n" + "[" * 100_000 + "]" * 100_000 + "\n]\n")
    cases.append(("json-array-deep", deep_array, 3, "classify", "nested too deeply"))
    big_txt = folder / "book.txt"
    big_txt.write_text("word " * 1_000_000)  # 5 MB: one .txt file is one record
    cases.append(("txt-5mb", big_txt, 1, "text", "record too large"))
    csv = folder / "wide.csv"
    # Over the default data.max_record_bytes (4 MB); a 200,000-character cell is a valid record.
    csv.write_text("text,label\n" + "a,b\n" + "x" * 5_000_000 + ",billing\n" + "c,d\n")
    cases.append(("csv-huge-field", csv, 3, "classify", "record too large"))
    gz = folder / "label.jsonl.gz"
    gz.write_bytes(gzip.compress((json.dumps(GOOD[0]) + "\n" + _label(100_000) + "\n").encode()))
    cases.append(("gzip-label", gz, 2, "classify", "max_label_chars"))
    return cases


def _cli(args: list[str]):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, args)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list:
    return _corpus(tmp_path_factory.mktemp("fuzz"))


def test_every_file_of_the_corpus_is_answered_with_its_file_line_in_bounded_time(corpus):
    for name, path, line, task, reason in corpus:
        for mode in (["--json"], []):  # the report as JSON, and as rendered for a person (rich's highlighter)
            started = time.monotonic()
            result = _cli(["data", "check", str(path), "--task", task, "--no-tokens", *mode])
            seconds = time.monotonic() - started
            assert result.exception is None or isinstance(result.exception, SystemExit), (name, mode, repr(result.exception))
            assert result.exit_code == 2, (name, mode, result.output[-2000:])
            assert seconds < SECONDS_PER_FILE, (name, mode, seconds)
            if mode:
                report = json.loads(result.output)
                sources = [error["source"] for error in report["errors"]]
                assert f"{path}:{line}" in sources, (name, sources)
                bad = next(error for error in report["errors"] if error["source"] == f"{path}:{line}")
                assert reason in bad["reason"], (name, bad)
                assert len(bad["reason"]) < 500, name  # the reason names the problem; it does not repeat the record
                if path.name.endswith(".jsonl") and task == "classify":
                    assert report["records"] == len(GOOD), name  # one bad record costs only itself


def test_the_caps_are_config_keys(tmp_path):
    """A project with long labels or long documents raises the caps instead of losing the records."""
    from tunelab.config import DataConfig
    from tunelab.data.read import read_records

    path, _ = _jsonl(tmp_path / "long.jsonl", _label(300))
    assert len(read_records(str(path), "classify", DataConfig()).errors) == 1
    raised = read_records(str(path), "classify", DataConfig(max_label_chars=1000))
    assert not raised.errors and len(raised.records) == len(GOOD) + 1
    big, line = _jsonl(tmp_path / "big.jsonl", _big_record(2000))
    small = read_records(str(big), "classify", DataConfig(max_record_bytes=1000))
    assert [e.source for e in small.errors] == [f"{big}:{line}"] and len(small.records) == len(GOOD)


def test_a_utf8_bom_at_the_start_of_a_jsonl_file_is_accepted(tmp_path):
    from tunelab.config import DataConfig
    from tunelab.data.read import read_records

    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(row) for row in GOOD).encode() + b"\n")
    result = read_records(str(path), "classify", DataConfig())
    assert not result.errors and len(result.records) == len(GOOD)
    assert result.records[0].text == GOOD[0]["text"]
