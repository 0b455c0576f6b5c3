"""Files as Excel (and people) save them: Windows-1252 text, capitalised headers, ``sep=;`` and semicolons."""

import json

import pytest
from typer.testing import CliRunner

from tunelab.config import DataConfig
from tunelab.data.read import read_records
from tunelab.errors import DataError

ROWS = [("Le café est froid", "complaint"), ("plain ascii row", "info"), ("Mon résumé est prêt", "info"), ("Ça coûte 5 €", "billing")]


def _csv(rows, separator=",", header=("text", "label")):
    return "\r\n".join(separator.join(row) for row in [header, *rows]) + "\r\n"


@pytest.mark.parametrize("name", ["train.csv", "train.jsonl"])
def test_a_windows_1252_file_is_one_error_naming_the_encoding_and_the_fix(tmp_path, name):
    # Excel on Windows saves "CSV (Comma delimited)" in the machine's code page: one error per accented row
    # (and the ASCII rows quietly kept) said nothing about why or what to do.
    path = tmp_path / name
    if name.endswith(".csv"):
        content = _csv(ROWS)
    else:
        content = "".join(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n" for text, label in ROWS)
    path.write_bytes(content.encode("cp1252"))
    result = read_records(str(path), "classify", DataConfig())
    assert not result.records
    line = 2 if name.endswith(".csv") else 1
    byte = content.splitlines()[line - 1].index("é") + 1
    excel = "as Excel saves 'CSV (Comma delimited)'; save it as UTF-8 (Excel: 'CSV UTF-8 (Comma delimited)')"
    assert [str(error) for error in result.errors] == [
        f"{path}:{line}: undecodable bytes: not UTF-8 text (byte 0xe9 at byte {byte}, 'café' in Windows-1252; none of "
        f"the 3 lines with non-ASCII bytes is UTF-8): the file looks saved as Windows-1252"
        + (f", {excel}" if name.endswith(".csv") else "; save it as UTF-8")
        + "; the file is unread"
    ]


def test_a_file_in_another_code_page_is_one_error_too(tmp_path):
    # 0x81 is no Windows-1252 character: the file is refused whole all the same, naming no code page.
    path = tmp_path / "train.csv"
    path.write_bytes(b"text,label\nab\x81c,x\nd\x81e,y\n")
    (error,) = read_records(str(path), "classify", DataConfig()).errors
    assert str(error) == (
        f"{path}:2: undecodable bytes: not UTF-8 text (byte 0x81 at byte 3; none of the 2 lines with non-ASCII bytes is "
        "UTF-8): the file is in an 8-bit code page; save it as UTF-8; the file is unread"
    )


def test_one_bad_line_in_a_utf8_file_stays_that_line_s_error(tmp_path):
    # A UTF-8 file (its accents decode) with one damaged line is not a Windows-1252 file: only that line is refused.
    path = tmp_path / "train.csv"
    path.write_bytes(_csv(ROWS[:2]).encode("utf-8") + "Ça coûte 5 €,billing\r\n".encode("cp1252"))
    result = read_records(str(path), "classify", DataConfig())
    assert [r.text for r in result.records] == ["Le café est froid", "plain ascii row"]
    assert [error.source for error in result.errors] == [f"{path}:4"] and "not UTF-8" in result.errors[0].reason


def test_excel_csv_utf8_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"\xef\xbb\xbf" + _csv(ROWS).encode("utf-8"))
    result = read_records(str(path), "classify", DataConfig())
    assert not result.errors
    assert [(r.text, r.label) for r in result.records] == ROWS


@pytest.mark.parametrize("header", [("Text", "Label"), (" text ", " label "), ("TEXT", "Label ")])
def test_column_names_match_whatever_their_case_and_surrounding_spaces(tmp_path, header):
    path = tmp_path / "train.csv"
    path.write_text(_csv(ROWS, header=header), encoding="utf-8")
    result = read_records(str(path), "classify", DataConfig())
    assert not result.errors
    assert [(r.text, r.label) for r in result.records] == ROWS


def test_json_keys_match_whatever_their_case(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"Prompt": "What is 2+2?", "Completion": "4"}\n')
    (record,) = read_records(str(path), "sft", DataConfig()).records
    assert (record.prompt_messages[0]["content"], record.completion) == ("What is 2+2?", "4")


def test_an_exact_column_name_wins_over_one_in_another_case(tmp_path):
    # 'Text' is then one more column that is not read, like an 'id' column.
    path = tmp_path / "train.csv"
    path.write_text("text,Text,label\nthe text,other,a\n", encoding="utf-8")
    (record,) = read_records(str(path), "classify", DataConfig()).records
    assert record.text == "the text"


def test_two_columns_matching_one_name_are_one_error_naming_both(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("Text,TEXT,label\na,b,x\nc,d,y\n", encoding="utf-8")
    with pytest.raises(DataError) as raised:
        read_records(str(path), "classify", DataConfig())
    assert str(raised.value) == (
        f"{path}:2: the columns 'Text' and 'TEXT' both match the text field 'text' (case and spaces aside) "
        "(name the one to read exactly with --text-field (data.text_field), or rename the other)"
    )
    # Named exactly, the column is read.
    assert [r.text for r in read_records(str(path), "classify", DataConfig(text_field="TEXT")).records] == ["b", "d"]


@pytest.mark.parametrize("separator", [";", ",", "\t", "|"])
def test_excel_sep_line_is_honoured_and_skipped(tmp_path, separator):
    # Excel writes (and reads) a first line 'sep=;' naming the separator: it is no header.
    path = tmp_path / "train.csv"
    path.write_text(f"sep={separator}\r\n" + _csv(ROWS, separator), encoding="utf-8")
    result = read_records(str(path), "classify", DataConfig())
    assert not result.errors
    assert [(r.text, r.label, r.source) for r in result.records] == [
        (text, label, f"{path}:{number}") for number, (text, label) in enumerate(ROWS, start=3)
    ]


def test_a_semicolon_csv_with_commas_in_its_text_is_read(tmp_path):
    # European Excel separates with ';' (',' is the decimal mark). The header line decides the separator: it holds
    # column names, no free text, where a comma in a sentence would outvote the real separator.
    path = tmp_path / "train.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "text;label\r\nHello, café;greet\r\n1,5 kg, please;order\r\n".encode())
    result = read_records(str(path), "classify", DataConfig())
    assert not result.errors
    assert [(r.text, r.label) for r in result.records] == [("Hello, café", "greet"), ("1,5 kg, please", "order")]


def test_a_sep_line_then_a_header_that_is_not_utf8_is_one_error_at_line_2(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes("sep=;\ntexte;libellé\n".encode("latin-1") + "café au lait;boisson\n".encode())
    result = read_records(str(path), "classify", DataConfig(text_field="texte", label_field="libellé"))
    assert [error.source for error in result.errors] == [f"{path}:2"] and "in the header" in result.errors[0].reason


def _cli(args):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, args)


def test_data_check_shows_one_line_for_a_windows_1252_csv(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(_csv(ROWS * 20).encode("cp1252"))
    result = _cli(["data", "check", str(path), "--task", "classify", "--no-tokens", "--json"])
    assert result.exit_code == 2, result.output
    report = json.loads(result.output)
    # One line for the file (and the check's "no usable records"), not one per accented row.
    assert [error["source"] for error in report["errors"]] == [f"{path}:2", str(path)]
    assert "Windows-1252" in report["errors"][0]["reason"]
