"""data.group_field: each record keeps its row's group (a country, a product), read as other fields are, never part of
the id (so naming a group column changes no split), and a row without one is an invalid record at its file:line."""

import csv
import json
from pathlib import Path

import pytest

from tunelab.config import DataConfig, load_config, parse_config
from tunelab.data.read import read_records
from tunelab.data.split import make_split
from tunelab.errors import ConfigError, DataError

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_quickstart_split_is_unchanged():
    # The fingerprint of the quickstart's split (which records went where) before groups existed: records gained a
    # field, and not one id or place changed.
    split = make_split(load_config(EXAMPLES / "support-routing" / "config.yaml"))
    assert split.fingerprint == "137ac3994634a7b763ff9d25"
    assert all(record.group is None for record in split.test)


def test_a_group_never_changes_an_id(tmp_path):
    rows = [{"text": "my card is lost", "label": "card", "country": "FR"}, {"text": "refund please", "label": "refund", "country": "DE"}]
    path = _jsonl(tmp_path / "data.jsonl", rows)
    without = read_records(str(path), "classify", DataConfig()).records
    grouped = read_records(str(path), "classify", DataConfig(group_field="country")).records
    assert [r.id for r in grouped] == [r.id for r in without]
    assert [r.group for r in grouped] == ["FR", "DE"] and [r.group for r in without] == [None, None]


def test_a_group_column_from_jsonl_and_csv(tmp_path):
    rows = [{"text": "my card is lost", "label": "card", "Country ": "FR"}, {"text": "refund please", "label": "refund", "Country ": 7}]
    jsonl = read_records(str(_jsonl(tmp_path / "data.jsonl", rows)), "classify", DataConfig(group_field="country"))
    assert not jsonl.errors and [r.group for r in jsonl.records] == ["FR", "7"]  # matched as other fields: case and spaces aside
    path = tmp_path / "data.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "completion", "country"])
        writer.writeheader()
        writer.writerows([{"prompt": "Q1", "completion": "A1", "country": "FR"}, {"prompt": "Q2", "completion": "A2", "country": "DE"}])
    read = read_records(str(path), "sft", DataConfig(group_field="country"))
    assert not read.errors and [r.group for r in read.records] == ["FR", "DE"]


def test_an_openai_messages_row_keeps_its_top_level_group(tmp_path):
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "country": "IT"}
    read = read_records(str(_jsonl(tmp_path / "chat.jsonl", [row])), "sft", DataConfig(group_field="country"))
    assert not read.errors and read.records[0].group == "IT"


def test_a_row_without_a_group_is_one_error_at_its_line(tmp_path):
    rows = [{"text": "a", "label": "x", "country": "FR"}, {"text": "b", "label": "y"}, {"text": "c", "label": "x", "country": " "}]
    path = _jsonl(tmp_path / "data.jsonl", rows)
    read = read_records(str(path), "classify", DataConfig(group_field="country"))
    assert [r.group for r in read.records] == ["FR"]
    assert [str(error).split(": ", 1)[0] for error in read.errors] == [f"{path}:2", f"{path}:3"]
    assert "missing group" in str(read.errors[0]) and "'country'" in str(read.errors[0]) and "--group-field" in str(read.errors[0])
    assert "'country' is empty" in str(read.errors[1])


def test_text_and_preference_refuse_the_key(tmp_path):
    path = _jsonl(tmp_path / "docs.jsonl", [{"text": "a document", "country": "FR"}])
    with pytest.raises(DataError, match="sft and classify only, not text"):
        read_records(str(path), "text", DataConfig(group_field="country"))
    with pytest.raises(ConfigError, match="group_field applies to tasks sft and classify only, not preference"):
        parse_config({"task": "preference", "model": "default", "data": {"train": str(path), "group_field": "country"}})


def test_the_out_of_scope_file_needs_no_group(tmp_path):
    # Requests that fit no category (spam, another company's questions) have no country either: the out-of-scope file
    # is read without the group column, in the split and when a run's split is read back.
    from tunelab.data.split import load_split

    labels = ("card", "refund")
    rows = [{"text": f"{label} request number {i}", "label": label, "country": "FR" if i % 2 else "DE"} for label in labels for i in range(20)]
    train = _jsonl(tmp_path / "train.jsonl", rows)
    oos = _jsonl(tmp_path / "oos.jsonl", [{"text": f"tell me a joke {i}", "label": "other"} for i in range(6)])
    config = parse_config({"task": "classify", "data": {"train": str(train), "group_field": "country", "out_of_scope": str(oos),
                                                          "out_of_scope_label": "other"}})
    split = make_split(config)
    assert not split.skipped
    unknown = [r for r in split.test + split.validation if r.label == "other"]
    assert unknown and all(r.group is None for r in unknown)
    assert {r.group for r in split.test if r.label != "other"} <= {"FR", "DE"}
    split.save(tmp_path / "split.json")
    again = load_split(tmp_path / "split.json", config)
    assert [(r.id, r.group) for r in again.test] == [(r.id, r.group) for r in split.test]
