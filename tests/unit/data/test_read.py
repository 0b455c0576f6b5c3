import csv
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunelab.config import DataConfig
from tunelab.data.read import load_records, load_result, parse_hh_dialogue, read_records
from tunelab.data.records import ClassifyRecord, PreferenceRecord, SFTRecord, TextRecord
from tunelab.errors import DataError

ROWS = {
    "text": [{"text": "The first document."}, {"text": "The second document, a little longer."}],
    "sft": [{"prompt": "What is 2+2?", "completion": "4"}, {"prompt": "Capital of France?", "completion": "Paris"}],
    "classify": [{"text": "my card is lost", "label": "card"}, {"text": "I want a refund", "label": "refund"}],
    "preference": [
        {"prompt": "Say hi", "chosen": "Hello!", "rejected": "Go away."},
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    ],
}


def _write(path, rows, fmt):
    if fmt in ("jsonl", "jsonl.gz"):
        text = "".join(json.dumps(row) + "\n" for row in rows)
        if fmt.endswith(".gz"):
            path.write_bytes(gzip.compress(text.encode()))
        else:
            path.write_text(text)
    elif fmt == "json":
        path.write_text(json.dumps(rows, indent=2))
    elif fmt in ("csv", "tsv", "csv.gz"):
        delimiter = "\t" if fmt == "tsv" else ","
        with open(path.with_suffix(".tmp"), "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
        data = path.with_suffix(".tmp").read_bytes()
        path.write_bytes(gzip.compress(data) if fmt.endswith(".gz") else data)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)


def _check(records, task):
    expected = ROWS[task]
    assert len(records) == len(expected)
    for record, row in zip(records, expected, strict=True):
        if task == "text":
            assert isinstance(record, TextRecord) and record.text == row["text"]
        elif task == "sft":
            assert isinstance(record, SFTRecord)
            assert record.messages == ({"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]})
        elif task == "classify":
            assert isinstance(record, ClassifyRecord) and (record.text, record.label) == (row["text"], row["label"])
        else:
            assert isinstance(record, PreferenceRecord)
            assert record.prompt == ({"role": "user", "content": row["prompt"]},)
            assert (record.chosen, record.rejected) == (row["chosen"], row["rejected"])


@pytest.mark.parametrize("task", list(ROWS))
@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "json", "csv", "csv.gz", "tsv", "parquet"])
def test_each_task_loads_from_each_format(tmp_path, task, fmt):
    path = tmp_path / f"data.{fmt}"
    _write(path, ROWS[task], fmt)
    result = read_records(str(path), task, DataConfig())
    assert result.errors == []
    _check(result.records, task)
    # Sources point at the line (or row) of each record.
    first_line = {"jsonl": 1, "jsonl.gz": 1, "json": 2, "csv": 2, "csv.gz": 2, "tsv": 2, "parquet": 1}[fmt]
    assert result.records[0].source == f"{path}:{first_line}"


def test_text_from_txt_files_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second file")
    (tmp_path / "a.txt").write_text("first file")
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(b"third file"))
    (tmp_path / ".hidden.txt").write_text("never read")
    records = load_records(str(tmp_path), "text", DataConfig())
    assert [r.text for r in records] == ["first file", "second file", "third file"]
    assert load_records(str(tmp_path / "*.txt"), "text", DataConfig())[0].text == "first file"
    with pytest.raises(DataError, match="only the 'text' task"):
        read_records(str(tmp_path / "a.txt"), "sft", DataConfig())


def test_column_mapping_and_system_prompt(tmp_path, tiny_tokenizer):
    from tunelab.data.tokenize import tokenize_sft

    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nWho?,Me\n")
    data = DataConfig(prompt_field="question", completion_field="answer", system_prompt="Be brief.")
    (record,) = load_records(str(path), "sft", data)
    # The system prompt is applied at tokenization, never stored in the record: ids and splits do not depend on it.
    assert record.messages[0] == {"role": "user", "content": "Who?"}
    assert record.id == load_records(str(path), "sft", data.model_copy(update={"system_prompt": None}))[0].id
    assert record.completion == "Me"
    with_system = tokenize_sft(record, tiny_tokenizer, 512, data.system_prompt)
    assert "Be brief." in tiny_tokenizer.decode(with_system.input_ids)
    assert "Be brief." not in tiny_tokenizer.decode(tokenize_sft(record, tiny_tokenizer, 512).input_ids)
    result = read_records(str(path), "sft", DataConfig())
    assert "missing field 'prompt'" in result.errors[0].reason and "--prompt-field" in result.errors[0].reason


def test_openai_chat_and_trl_formats(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "a", "weight": 0}, {"role": "user", "content": "again"}, {"role": "assistant", "content": "b"}]},
        {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "c"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]}, {"role": "assistant", "content": "ok"}]},
    ]
    path = tmp_path / "chat.jsonl"
    _write(path, rows, "jsonl")
    records = load_records(str(path), "sft", DataConfig(system_prompt="unused when a system message exists"))
    assert records[0].messages[2]["weight"] == 0 and records[0].completion == "b"
    assert records[0].messages[0]["content"] == "S"
    assert records[1].messages[-1] == {"role": "assistant", "content": "c"}
    assert records[2].messages[0]["role"] == "user" and records[2].messages[0]["content"] == "parts"


def test_salted_file_reports_every_bad_line(tmp_path):
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}]}),  # 1 good
        "{not json",  # 2
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),  # 3 no assistant turn
        json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),  # 4 role
        json.dumps({"prompt": "q"}),  # 5 missing completion
        json.dumps({"prompt": "q", "completion": "  "}),  # 6 empty
        json.dumps({"prompt": 3, "completion": "a"}),  # 7 wrong type
        "",  # 8 blank: skipped, not an error
        json.dumps(["a", "list"]),  # 9 not an object
        json.dumps({"other": 1}),  # 10 neither prompt nor messages
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "dangling"}]}),  # 11
        json.dumps({"messages": "not a list"}),  # 12
    ]
    path = tmp_path / "salted.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"prompt": "caf\xe9", "completion": "x"}\n')  # 13 bytes
    result = read_records(str(path), "sft", DataConfig())
    assert len(result.records) == 1
    reported = {error.source: error.reason for error in result.errors}
    assert sorted(reported, key=lambda s: int(s.rsplit(":", 1)[1])) == [f"{path}:{n}" for n in (2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13)]
    assert "invalid JSON" in reported[f"{path}:2"]
    assert "no assistant turn" in reported[f"{path}:3"]
    assert "unknown role 'robot'" in reported[f"{path}:4"]
    assert "missing field 'completion'" in reported[f"{path}:5"]
    assert "empty field 'completion'" in reported[f"{path}:6"]
    assert "wrong type" in reported[f"{path}:7"]
    assert "wrong type" in reported[f"{path}:9"]
    assert "end with an assistant turn" in reported[f"{path}:11"]
    assert "undecodable bytes" in reported[f"{path}:13"]
    with pytest.raises(DataError, match="11 invalid record") as raised:
        load_records(str(path), "sft", DataConfig())
    assert f"{path}:13" in str(raised.value)
    kept = load_result(str(path), "sft", DataConfig(skip_invalid=True))
    assert len(kept.records) == 1 and len(kept.errors) == 11


def test_salted_csv_and_json_array_report_lines(tmp_path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_bytes(b'text,label\nfine,a\n"multi\nline",b\nno label,\ntoo,many,cells\ncaf\xe9,c\n')
    result = read_records(str(csv_path), "classify", DataConfig())
    assert [r.source for r in result.records] == [f"{csv_path}:2", f"{csv_path}:3"]
    reasons = {e.source: e.reason for e in result.errors}
    assert "missing label" in reasons[f"{csv_path}:5"]
    assert "wrong number of columns" in reasons[f"{csv_path}:6"]
    assert "undecodable" in reasons[f"{csv_path}:7"]
    json_path = tmp_path / "bad.json"
    json_path.write_text('[\n {"text": "a", "label": "x"},\n {"text": "b"},\n 5\n]')
    result = read_records(str(json_path), "classify", DataConfig())
    assert [e.source for e in result.errors] == [f"{json_path}:3", f"{json_path}:4"]


def test_hh_rlhf_shape_and_integer_labels(tmp_path):
    chosen = "\n\nHuman: Hi there\n\nAssistant: Hello.\n\nHuman: Tell me a joke\n\nAssistant: A good joke."
    rejected = "\n\nHuman: Hi there\n\nAssistant: Hello.\n\nHuman: Tell me a joke\n\nAssistant: No."
    path = tmp_path / "hh.jsonl.gz"
    _write(path, [{"chosen": chosen, "rejected": rejected}, {"chosen": chosen, "rejected": chosen}], "jsonl.gz")
    result = read_records(str(path), "preference", DataConfig())
    (record,) = result.records
    assert [m["role"] for m in record.prompt] == ["user", "assistant", "user"]
    assert record.prompt[-1]["content"] == "Tell me a joke"
    assert (record.chosen, record.rejected) == ("A good joke.", "No.")
    assert "identical" in result.errors[0].reason
    assert parse_hh_dialogue("\n\nHuman: a\n\nAssistant: b") == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    labels = tmp_path / "labels.jsonl"
    _write(labels, [{"text": "good", "label": 1}, {"text": "bad", "label": 0}, {"text": "?", "label": 0.5}], "jsonl")
    result = read_records(str(labels), "classify", DataConfig())
    assert [r.label for r in result.records] == ["1", "0"] and "wrong type" in result.errors[0].reason


def test_limit_and_missing_path(tmp_path):
    path = tmp_path / "d.jsonl"
    _write(path, [{"text": f"doc {i}"} for i in range(10)], "jsonl")
    result = read_records(str(path), "text", DataConfig(limit=3))
    assert len(result.records) == 3 and result.truncated_by_limit
    with pytest.raises(DataError, match="not found"):
        read_records(str(tmp_path / "nope.jsonl"), "text", DataConfig())
    with pytest.raises(DataError, match="needs the network"):
        read_records("someone/some-dataset", "text", DataConfig())


def test_references_keep_ids_stable():
    messages = ({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"})
    assert SFTRecord(messages).id == SFTRecord(messages, "elsewhere.jsonl:9").id
    with_refs = SFTRecord(messages, references=("a", "b"))
    assert with_refs.references == ("a", "b") and with_refs.id != SFTRecord(messages).id


def test_json_file_holding_json_lines_and_wrapped_array(tmp_path):
    lines = tmp_path / "lines.json"
    lines.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert [r.source for r in load_records(str(lines), "text", DataConfig())] == [f"{lines}:1", f"{lines}:2"]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text('{"data": [\n  {"text": "a"},\n  {"text": "b"}\n]}')
    assert [r.source for r in load_records(str(wrapped), "text", DataConfig())] == [f"{wrapped}:2", f"{wrapped}:3"]


def test_csv_with_bare_carriage_return_line_endings(tmp_path):
    # Excel for Mac's "CSV (Macintosh)" ends lines with a bare \r: rows, not a csv.Error traceback.
    path = tmp_path / "mac.csv"
    path.write_bytes(b'text,label\rmy card is lost,card\r"I want\ra refund",refund\r')
    result = read_records(str(path), "classify", DataConfig())
    assert not result.errors
    assert [(r.text, r.label, r.source) for r in result.records] == [
        ("my card is lost", "card", f"{path}:2"),
        ("I want\ra refund", "refund", f"{path}:3"),
    ]


def test_csv_cell_longer_than_the_csv_module_default_is_read_up_to_max_record_bytes(tmp_path):
    # Python's csv module refuses cells over 131,072 characters; the cap a user sets is data.max_record_bytes.
    path = tmp_path / "long.csv"
    long_text = "word " * 40_000  # 200,000 characters
    path.write_text(f"text,label\n{long_text},a\nshort,b\n")
    result = read_records(str(path), "classify", DataConfig())
    assert not result.errors
    assert [len(r.text) for r in result.records] == [len(long_text), 5]
    small = read_records(str(path), "classify", DataConfig(max_record_bytes=100_000))
    assert [error.source for error in small.errors] == [f"{path}:2"]
    assert "record too large" in small.errors[0].reason
    assert [r.text for r in small.records] == ["short"]


@pytest.mark.parametrize("name", ["train.csv", "train.tsv", "train.jsonl", "train.json", "train.txt"])
@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_a_utf16_file_is_one_clear_error_not_a_garbled_one_per_row(tmp_path, name, encoding):
    # Excel's "Unicode Text" and Windows PowerShell write UTF-16 with a byte-order mark.
    path = tmp_path / name
    task = "text" if name.endswith(".txt") else "classify"
    if name.endswith((".csv", ".tsv")):
        separator = "\t" if name.endswith(".tsv") else ","
        content = f"text{separator}label\nmy card is lost{separator}card\nI want a refund{separator}refund\n"
    elif name.endswith(".txt"):
        content = "A document.\n"
    else:
        content = "".join(json.dumps(row) + "\n" for row in ROWS["classify"])
    path.write_bytes(content.encode(encoding))
    result = read_records(str(path), task, DataConfig())
    assert not result.records
    assert [str(error) for error in result.errors] == [
        f"{path}:1: undecodable bytes: the file is {encoding.upper()} text (it starts with a {encoding.upper()} byte-order mark), not UTF-8; "
        "save it as UTF-8; the file is unread"
    ]


def test_whole_number_float_labels_are_the_integer_label(tmp_path):
    # pandas stores an integer label column holding a missing value as float64: 1.0, 0.0 and NaN.
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"text": ["good", "bad", "meh", "odd"], "label": pa.array([1.0, 0.0, float("nan"), 0.5])}), path)
    result = read_records(str(path), "classify", DataConfig())
    assert [(r.text, r.label) for r in result.records] == [("good", "1"), ("bad", "0")]
    assert [(e.source, e.reason.split(":")[0]) for e in result.errors] == [(f"{path}:3", "missing label"), (f"{path}:4", "wrong type")]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1.0}\n')
    assert [r.label for r in read_records(str(mixed), "classify", DataConfig()).records] == ["1", "1"]


def test_a_csv_header_that_is_not_utf8_is_reported_at_line_1(tmp_path):
    # Column names read with replacement characters would make every row "missing field 'libellé' (fields here: libell�)".
    path = tmp_path / "latin1.csv"
    path.write_bytes("texte,libellé\ncafé au lait,boisson\n".encode("latin-1"))
    result = read_records(str(path), "classify", DataConfig(text_field="texte", label_field="libellé"))
    assert not result.records
    assert [str(error) for error in result.errors] == [
        f"{path}:1: undecodable bytes: not UTF-8 text (byte 0xe9 at byte 13, 'libellé' in Windows-1252; none of the 2 lines "
        "with non-ASCII bytes is UTF-8): the file looks saved as Windows-1252, as Excel saves 'CSV (Comma delimited)'; save it "
        "as UTF-8 (Excel: 'CSV UTF-8 (Comma delimited)'); the file is unread"
    ]
    # Alone in a UTF-8 file, a header that is not UTF-8 is still one error: every row would miss its fields.
    path.write_bytes("texte,libellé\n".encode("latin-1") + "café au lait,boisson\n".encode())
    result = read_records(str(path), "classify", DataConfig(text_field="texte", label_field="libellé"))
    assert [str(error) for error in result.errors] == [
        f"{path}:1: undecodable bytes in the header: not UTF-8 text (byte 0xe9 at byte 13); save the file as UTF-8; the file is unread"
    ]


@pytest.mark.parametrize("separator", [",", "\t"])
def test_an_unbalanced_quote_does_not_silently_swallow_the_next_rows(tmp_path, separator):
    # The csv module's lenient reading made lines 2-4 one record ('Hello she said,a\nnext,b\nand more" here', 'c').
    path = tmp_path / ("train.tsv" if separator == "\t" else "train.csv")
    s = separator
    path.write_text(f'text{s}label\n"Hello she said{s}a\nnext{s}b\nand "more" here{s}c\nlast{s}d\n"a quoted{s} cell\nover two lines"{s}e\n')
    result = read_records(str(path), "classify", DataConfig())
    assert [(e.source, e.reason.startswith("invalid CSV: a quoted cell runs from line 2 to line 4")) for e in result.errors] == [(f"{path}:2", True)]
    assert [(r.source, r.text, r.label) for r in result.records] == [
        (f"{path}:5", "last", "d"),
        (f"{path}:6", f"a quoted{s} cell\nover two lines", "e"),  # a well-formed multi-line cell is still a record
    ]


def test_a_quote_left_open_at_the_end_of_a_csv_names_the_lines_it_swallowed(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('text,label\nfirst,a\n"never closed,b\nnext,c\nlast,d\n')
    result = read_records(str(path), "classify", DataConfig())
    assert [r.text for r in result.records] == ["first"]
    assert [(e.source, e.reason.startswith("invalid CSV: a quoted cell runs from line 3 to line 5")) for e in result.errors] == [(f"{path}:3", True)]


def test_a_json_array_in_a_jsonl_file_is_read_as_json(tmp_path):
    # json.dump(rows, f, indent=2) into train.jsonl: line by line, "[" and every "}," failed while
    # the last object alone was accepted, so a skip-invalid run trained on one row of many.
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ROWS["classify"], indent=2) + "\n")
    result = read_records(str(path), "classify", DataConfig())
    assert not result.errors
    assert [(r.text, r.source) for r in result.records] == [("my card is lost", f"{path}:2"), ("I want a refund", f"{path}:6")]


@pytest.mark.parametrize("repeat", [1, 40_000])
def test_a_one_line_json_array_in_a_jsonl_file_is_read_as_json(tmp_path, repeat):
    # json.dump(rows, f) (no indent) into train.jsonl writes one line: it was one "wrong type: got a list"
    # error, or past max_record_bytes "record too large; raise data.max_record_bytes", and no records.
    path = tmp_path / "train.jsonl"
    rows = ROWS["classify"] * repeat
    path.write_text(json.dumps(rows))
    assert path.stat().st_size > 4096 or repeat == 1
    result = read_records(str(path), "classify", DataConfig(max_record_bytes=1_000_000))
    assert not result.errors
    assert len(result.records) == len(rows)
    assert result.records[0].source == f"{path}:1"


def test_a_jsonl_file_whose_first_line_is_a_list_still_reads_the_other_lines(tmp_path):
    # A bad first line in real JSON Lines is one invalid record, not the whole file read as one array.
    path = tmp_path / "train.jsonl"
    path.write_text('["my card is lost", "card"]\n' + "".join(json.dumps(row) + "\n" for row in ROWS["classify"]))
    result = read_records(str(path), "classify", DataConfig())
    assert [str(error) for error in result.errors] == [f"{path}:1: wrong type: expected a JSON object, got a list"]
    assert [r.source for r in result.records] == [f"{path}:2", f"{path}:3"]


def test_a_csv_header_repeated_inside_the_file_is_an_invalid_record_not_a_class(tmp_path):
    # Exports joined with `cat a.csv b.csv`: the second header was read as the record ("text", label "label"),
    # a class of its own trained on and tested.
    path = tmp_path / "train.csv"
    path.write_text("text,label\nmy card is lost,card\n text , label\nI want a refund,refund\n")
    result = read_records(str(path), "classify", DataConfig())
    assert [(r.text, r.label) for r in result.records] == [("my card is lost", "card"), ("I want a refund", "refund")]
    assert [e.source for e in result.errors] == [f"{path}:3"] and "header" in result.errors[0].reason


def test_a_header_without_the_field_is_one_error_naming_the_columns_and_the_option(tmp_path):
    # `review,category` for classify (text,label) gave one "missing field 'text'" per row: 20 listed, then "... and N more".
    path = tmp_path / "train.csv"
    path.write_text("review,category\n" + "".join(f"the app crashed again {i},bug\n" for i in range(30)))
    result = read_records(str(path), "classify", DataConfig())
    assert not result.records and len(result.errors) == 1, [str(e) for e in result.errors[:3]]
    (error,) = result.errors
    assert error.source == str(path) and error.rows == 30
    assert "'text'" in error.reason and "'label'" in error.reason and "review, category" in error.reason, error.reason
    assert "--text-field" in error.reason and "data.text_field" in error.reason and "data.label_field" in error.reason
    # The one column of words is the text, the other one then the label: both are named in the hint, as a guess.
    assert error.reason.endswith("name them with --text-field review and --label-field category "
                                 "(data.text_field: review, data.label_field: category), if those are the ones meant"), error.reason
    with pytest.raises(DataError) as raised:
        load_result(str(path), "classify", DataConfig())
    assert raised.value.message.startswith(f"30 invalid record(s) in {path}:") and "... and" not in raised.value.message
    # Only the label column is named otherwise, and it is the one other column: it is named in the hint.
    path.write_text("Text,category\n" + "".join(f"the app crashed again {i},bug\n" for i in range(30)))
    (error,) = read_records(str(path), "classify", DataConfig()).errors
    assert "no column 'label'" in error.reason and "--label-field category" in error.reason, error.reason
    # Two columns of words (and no text column): no guess.
    path.write_text("review,summary,category\n" + "".join(f"the app crashed {i},it crashed,bug\n" for i in range(30)))
    (error,) = read_records(str(path), "classify", DataConfig()).errors
    assert error.reason.endswith("name them with --text-field and --label-field (data.text_field, data.label_field)"), error.reason
    # sft: a prompt and a completion column, or a messages column.
    qa = tmp_path / "qa.csv"
    qa.write_text("question,answer\n" + "".join(f"What is {i}?,It is {i}.\n" for i in range(5)))
    (error,) = read_records(str(qa), "sft", DataConfig()).errors
    assert error.reason == ("no columns 'prompt' and 'completion', nor 'messages' (columns: question, answer); name them with --prompt-field "
                            "and --completion-field (data.prompt_field, data.completion_field), or the chat rows' column with "
                            "--messages-field (data.messages_field)"), error.reason
    # A JSONL file where every row lacks the field: one error too; where only some do, each is listed.
    jsonl = tmp_path / "train.jsonl"
    _write(jsonl, [{"review": f"r{i}", "label": "a"} for i in range(5)], "jsonl")
    assert [e.source for e in read_records(str(jsonl), "classify", DataConfig()).errors] == [str(jsonl)]
    _write(jsonl, [{"text": "fine", "label": "a"}] + [{"review": f"r{i}", "label": "a"} for i in range(4)], "jsonl")
    result = read_records(str(jsonl), "classify", DataConfig())
    assert [e.source for e in result.errors] == [f"{jsonl}:{n}" for n in range(2, 6)]
    assert all("missing field 'text'" in e.reason for e in result.errors)


def test_a_csv_header_naming_a_column_twice_is_one_error_not_the_last_column_read(tmp_path):
    # Two 'text' columns (an export that joined sheets): the row kept the last one, and the run trained on
    # it without a word.
    path = tmp_path / "train.csv"
    path.write_text("text,label,text\nmy card is lost,card,internal note\nI want a refund,refund,another note\n")
    result = read_records(str(path), "classify", DataConfig())
    assert result.records == []
    assert [str(error) for error in result.errors] == [
        f"{path}:1: the header names the column 'text' twice (columns 1 and 3): which one to read cannot be told; "
        "rename one; the file is unread"
    ]


def test_a_csv_header_with_several_empty_names_is_read(tmp_path):
    # Spreadsheets export trailing empty columns with empty names: no column is named twice.
    path = tmp_path / "train.csv"
    path.write_text("text,label,,\nmy card is lost,card,,\n")
    result = read_records(str(path), "classify", DataConfig())
    assert not result.errors and [(r.text, r.label) for r in result.records] == [("my card is lost", "card")]


def test_a_jsonl_line_ending_with_a_comma_says_so(tmp_path):
    # Lines copied out of a JSON array keep their commas; "Extra data" did not tell the user what to remove.
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "my card is lost", "label": "card"},\n{"text": "I want a refund", "label": "refund"}\n')
    result = read_records(str(path), "classify", DataConfig())
    assert [str(error) for error in result.errors] == [
        f"{path}:1: invalid JSON: a ',' after the object (column 45); JSON Lines has one object per line and no commas between them"
    ]
    assert [r.source for r in result.records] == [f"{path}:2"]


def test_a_label_is_one_class_whatever_the_unicode_form_of_its_accents(tmp_path):
    # "Café" with é as one character (NFC) and as e + a combining accent (NFD, from a Mac export) look the same
    # everywhere they are shown, yet trained as two classes, with no warning (they differ in no case or space).
    import unicodedata

    composed, decomposed = unicodedata.normalize("NFC", "Café"), unicodedata.normalize("NFD", "Café")
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "a latte please", "label": composed}) + "\n" + json.dumps({"text": "an espresso", "label": decomposed}) + "\n")
    records = read_records(str(path), "classify", DataConfig()).records
    assert [r.label for r in records] == [composed, composed]
