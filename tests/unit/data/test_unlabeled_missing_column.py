"""`tunelab predict` (and distill's unlabeled prompts) on a spreadsheet whose header names no prompt or text column: one
error naming the file, its columns and the option that maps it, as training data's header is told, not one
"no 'prompt' text" per row with "fix them, or drop them with --skip-invalid" (which would drop every row)."""

from __future__ import annotations

from tunelab.config import DataConfig
from tunelab.data.formats import invalid_records
from tunelab.data.read import read_unlabeled


def test_an_sft_file_without_a_prompt_column_is_one_error_naming_its_columns_and_the_option(tmp_path):
    path = tmp_path / "questions.csv"
    path.write_text('Question;Country\n"In FR, how much notice do I owe?";FR\n"In IT, what deposit is allowed?";IT\n'
                    '"In DE, how long is probation?";DE\n', encoding="utf-8")
    inputs, errors = read_unlabeled(str(path), "sft", DataConfig())
    assert inputs == []
    (error,) = errors
    assert invalid_records(errors) == 3, errors
    assert "no column 'prompt'" in error.reason and "Question, Country" in error.reason, error.reason
    # The one column of words is the prompt meant (a country code is one word).
    assert "--prompt-field Question" in error.reason, error.reason


def test_a_classify_file_without_a_text_column_names_the_text_alone(tmp_path):
    # No label column is needed to be answered: the error names the text only.
    path = tmp_path / "tickets.csv"
    path.write_text("request,channel\nmy card was charged twice,mail\nthe app will not open,chat\n", encoding="utf-8")
    inputs, errors = read_unlabeled(str(path), "classify", DataConfig())
    (error,) = errors
    assert "no column 'text'" in error.reason and "label" not in error.reason, error.reason
    assert "--text-field request" in error.reason, error.reason


def test_a_file_whose_rows_differ_keeps_one_error_per_row(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"prompt": "hello there"}\n{"question": "no prompt here"}\n{"prompt": ""}\n', encoding="utf-8")
    inputs, errors = read_unlabeled(str(path), "sft", DataConfig())
    assert len(inputs) == 1 and [error.source for error in errors] == [f"{path}:2", f"{path}:3"], errors


def test_skip_invalid_on_a_file_without_the_column_says_why_nothing_is_left(tmp_path):
    # With --skip-invalid every row was dropped and the one line said only "no prompt to answer in questions.csv".
    import pytest

    from tunelab.errors import DataError
    from tunelab.tasks.predict import read_inputs

    path = tmp_path / "questions.csv"
    path.write_text('Question,Country\n"In FR, how much notice do I owe?",FR\n"In IT, what deposit is allowed?",IT\n', encoding="utf-8")
    with pytest.raises(DataError) as raised:
        read_inputs(str(path), "sft", DataConfig(skip_invalid=True))
    assert "no prompt to answer" in str(raised.value) and "--prompt-field Question" in str(raised.value), str(raised.value)
