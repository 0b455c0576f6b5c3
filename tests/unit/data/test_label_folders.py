"""A classify run reads labelled texts kept as one folder per label (aclImdb's ``train/pos/*.txt``, 20 Newsgroups,
scikit-learn's ``load_files``): the label is the folder's name, the text the document as the text task reads it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunelab.config import DataConfig
from tunelab.data.read import read_records
from tunelab.errors import DataError

ROWS = [
    ("billing", "a.txt", "I was charged twice.\n"),
    ("billing", "b.md", "# Refund\n\nWhere is my refund?\n"),
    ("billing", "c.txt", "The invoice is wrong."),
    ("outage", "d.txt", "The site is down.\r\nAgain."),
    ("outage", "e.html", "<p>Nothing loads since <b>noon</b>.</p>"),
]


def _tree(root, rows=ROWS):
    for label, name, text in rows:
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / name).write_text(text, newline="")
    return root


def _pairs(result):
    return [(record.text, record.label) for record in result.records]


def test_a_folder_per_label_reads_as_the_same_rows_written_as_jsonl(tmp_path):
    folder = _tree(tmp_path / "tickets")
    # The text each file gives is the one the text task reads from it (line ends, an HTML page's visible text).
    texts = [record.text for record in read_records(str(folder), "text", DataConfig()).records]
    jsonl = tmp_path / "tickets.jsonl"
    jsonl.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, (label, _, _) in zip(texts, ROWS, strict=True)))
    expected = _pairs(read_records(str(jsonl), "classify", DataConfig()))

    result = read_records(str(folder), "classify", DataConfig())
    assert not result.errors
    assert _pairs(result) == expected
    assert [record.source for record in result.records] == [f"{folder / label / name}:1" for label, name, _ in ROWS]
    assert result.layouts == [f"{folder}: read as one folder per label: 2 labels (billing 3 files, outage 2)"]


def test_named_text_and_label_fields_do_not_change_how_a_label_folder_reads(tmp_path):
    folder = _tree(tmp_path / "tickets")
    plain = _pairs(read_records(str(folder), "classify", DataConfig()))
    assert _pairs(read_records(str(folder), "classify", DataConfig(text_field="body", label_field="category"))) == plain


def test_the_folder_name_is_checked_as_any_label(tmp_path):
    folder = _tree(tmp_path / "tickets", [("a-category-name-far-too-long", "a.txt", "words"), ("short", "b.txt", "words")])
    result = read_records(str(folder), "classify", DataConfig(max_label_chars=10))
    assert [error.source for error in result.errors] == [f"{folder / 'a-category-name-far-too-long' / 'a.txt'}:1"]
    assert "data.max_label_chars=10" in result.errors[0].reason
    assert _pairs(result) == [("words", "short")]


def test_a_document_that_cannot_be_read_is_the_error_the_text_task_gives(tmp_path):
    folder = _tree(tmp_path / "tickets")
    (folder / "outage" / "f.txt").write_bytes(b"caf\xe9 down")
    classify = read_records(str(folder), "classify", DataConfig())
    text = read_records(str(folder), "text", DataConfig())
    assert classify.errors == text.errors and len(classify.errors) == 1
    assert len(classify.records) == len(ROWS)


def test_hidden_files_and_office_lock_files_are_skipped(tmp_path):
    folder = _tree(tmp_path / "tickets")
    (folder / ".DS_Store").write_bytes(b"\x00")
    (folder / "billing" / ".DS_Store").write_bytes(b"\x00")
    (folder / "billing" / "~$draft.docx").write_bytes(b"\x00lock")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.txt").write_text("not data")
    result = read_records(str(folder), "classify", DataConfig())
    assert not result.errors and len(result.records) == len(ROWS)


@pytest.mark.parametrize(
    ("extra", "named", "found"),
    [
        ("README.md", "README.md", "at the top"),
        ("billing/2024/g.txt", "g.txt", "deeper"),
        ("train.jsonl", "train.jsonl", "data file"),
    ],
)
def test_a_folder_mixing_layouts_is_one_error_naming_what_was_found(tmp_path, extra, named, found):
    folder = _tree(tmp_path / "tickets")
    path = folder / extra
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"text": "words", "label": "billing"}) + "\n")
    with pytest.raises(DataError) as raised:
        read_records(str(folder), "classify", DataConfig())
    message = str(raised.value)
    assert named in message and found in message and "FOLDER/LABEL/file" in message, message


def test_an_empty_label_folder_is_an_error_naming_it(tmp_path):
    folder = _tree(tmp_path / "tickets")
    (folder / "refunds").mkdir()
    (folder / "refunds" / ".DS_Store").write_bytes(b"\x00")
    with pytest.raises(DataError, match="refunds"):
        read_records(str(folder), "classify", DataConfig())


def test_a_folder_of_data_files_and_the_text_task_read_as_before(tmp_path):
    data = tmp_path / "data"
    (data / "part").mkdir(parents=True)
    (data / "part" / "train.jsonl").write_text(json.dumps({"text": "words", "label": "a"}) + "\n")
    (data / "README.md").write_text("# A dataset card\n")
    result = read_records(str(data), "classify", DataConfig())
    assert _pairs(result) == [("words", "a")] and result.layouts == []
    folder = _tree(tmp_path / "tickets")
    text = read_records(str(folder), "text", DataConfig())
    assert len(text.records) == len(ROWS) and text.layouts == [] and not text.errors
    # Documents at the top of a folder are still raw text, which only the text task reads.
    with pytest.raises(DataError, match="only the 'text' task reads"):
        read_records(str(folder / "billing"), "classify", DataConfig())


def test_data_check_reads_a_folder_per_label_and_a_test_folder_alike(tmp_path, tiny_model_dir):
    from tunelab.cli.main import _register_commands, app

    folder = _tree(tmp_path / "tickets")
    test = _tree(tmp_path / "held-out", [("billing", "x.txt", "Charged for nothing."), ("outage", "y.txt", "Down all day.")])
    _register_commands()
    runner = CliRunner()
    result = runner.invoke(app, ["data", "check", str(folder), "--task", "classify", "--model", str(tiny_model_dir), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["records"] == len(ROWS) and report["labels"] == {"billing": 3, "outage": 2}
    result = runner.invoke(app, ["data", "check", str(folder), "--task", "classify", "--no-tokens", "--test", str(test)])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert output.count("read as one folder per label: 2 labels (billing 3 files, outage 2)") == 1
    assert "read as one folder per label: 2 labels (billing 1 file, outage 1)" in output
    assert "Test file" in output and "2 records" in output


def test_validation_and_test_folders_per_label_split_as_label_columns_do(tmp_path):
    from tunelab.config import parse_config
    from tunelab.data.split import make_split

    def folders(name, count):
        return _tree(tmp_path / name, [(label, f"{name}{i}.txt", f"{name} {label} {i}") for label in ("neg", "pos") for i in range(count)])

    config = parse_config(
        {"task": "classify", "data": {"train": str(folders("train", 6)), "validation": str(folders("dev", 2)), "test": str(folders("test", 2))}}
    )
    split = make_split(config)
    assert sorted((r.text, r.label) for r in split.validation) == [(f"dev {label} {i}", label) for label in ("neg", "pos") for i in range(2)]
    assert sorted((r.text, r.label) for r in split.test) == [(f"test {label} {i}", label) for label in ("neg", "pos") for i in range(2)]
    assert {r.label for r in split.train} == {"neg", "pos"} and len(split.train) == 12
