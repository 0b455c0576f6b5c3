"""Alpaca and ShareGPT files are read as they are wherever tunelab reads a file: distill's unlabelled prompts,
columns named in another case, ``data show``'s note, and preference pairs written as ShareGPT turns."""

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from tunelab.config import DataConfig, parse_config
from tunelab.data.read import read_records


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _unsourced(records):
    return [dataclasses.replace(record, source="") for record in records]


def _prompts(path):
    from tunelab.tasks.distill import read_unlabeled

    config = parse_config({"task": "sft", "data": {"train": str(path)}})
    return [list(item.messages) for item in read_unlabeled(str(path), config)]


def test_distill_reads_unlabelled_prompts_from_alpaca_rows(tmp_path):
    # Both were refused as "no 'prompt' text"; an unlabelled Alpaca file has an empty output or none.
    path = _write(tmp_path / "alpaca.jsonl", [
        {"instruction": "Translate to French.", "input": "cat", "output": ""},
        {"instruction": "Name a colour."},
        {"instruction": "And now?", "input": "", "output": "Two.", "system": "Count.", "history": [["Start", "One."]]},
    ])
    assert _prompts(path) == [
        [{"role": "user", "content": "Translate to French.\n\ncat"}],
        [{"role": "user", "content": "Name a colour."}],
        [
            {"role": "system", "content": "Count."},
            {"role": "user", "content": "Start"},
            {"role": "assistant", "content": "One."},
            {"role": "user", "content": "And now?"},
        ],
    ]


def test_distill_reads_unlabelled_prompts_from_sharegpt_rows_as_from_messages_rows(tmp_path):
    turns = [("system", "Be brief."), ("human", "Hi"), ("gpt", "Hello."), ("human", "Bye"), ("gpt", "Goodbye.")]
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    sharegpt = _write(tmp_path / "sharegpt.jsonl", [
        {"conversations": [{"from": who, "value": said} for who, said in turns]},
        {"conversations": [{"from": "human", "value": "Only asked."}]},
    ])
    openai = _write(tmp_path / "openai.jsonl", [
        {"messages": [{"role": roles[who], "content": said} for who, said in turns]},
        {"messages": [{"role": "user", "content": "Only asked."}]},
    ])
    assert _prompts(sharegpt) == _prompts(openai) == [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}],
        [{"role": "user", "content": "Only asked."}],
    ]  # fmt: skip


def test_distill_names_a_bad_sharegpt_turn_in_an_unlabelled_row(tmp_path):
    from tunelab.errors import DataError

    path = _write(tmp_path / "sharegpt.jsonl", [{"conversations": [{"from": "bot", "value": "Hi"}]}])
    with pytest.raises(DataError, match=r"sharegpt.jsonl:1: conversations\[1\]: unknown ShareGPT speaker 'bot'"):
        _prompts(path)


@pytest.mark.parametrize(
    ("row", "layout"),
    [
        ({" Instruction": "Translate to French.", "INPUT": "cat", "Output ": "chat"}, "read as Alpaca"),
        ({"Conversations": [{"from": "human", "value": "Translate to French.\n\ncat"}, {"from": "gpt", "value": "chat"}]}, "read as ShareGPT"),
    ],
)
def test_layout_columns_match_whatever_their_case_and_spaces(tmp_path, row, layout):
    # As tunelab's own fields do (``Text`` as ``text``); both were "missing field 'prompt' or 'messages'".
    result = read_records(str(_write(tmp_path / "data.jsonl", [row])), "sft", DataConfig())
    by_hand = read_records(str(_write(tmp_path / "hand.jsonl", [{"prompt": "Translate to French.\n\ncat", "completion": "chat"}])), "sft", DataConfig())
    assert not result.errors, result.errors
    assert _unsourced(result.records) == _unsourced(by_hand.records)
    assert len(result.layouts) == 1 and layout in result.layouts[0]


def test_alpaca_system_and_history_columns_match_whatever_their_case(tmp_path):
    row = {"Instruction": "And now?", "Output": "Two.", "System": "Count.", "History": [["Start", "One."]]}
    result = read_records(str(_write(tmp_path / "data.jsonl", [row])), "sft", DataConfig())
    assert not result.errors and [m["content"] for m in result.records[0].messages] == ["Count.", "Start", "One.", "And now?", "Two."]


def test_two_columns_naming_one_layout_column_are_an_error_naming_both(tmp_path):
    from tunelab.errors import DataError

    path = _write(tmp_path / "data.jsonl", [{"Instruction": "Q", "INSTRUCTION": "Q2", "output": "A"}])
    with pytest.raises(DataError, match="'Instruction' and 'INSTRUCTION'"):
        read_records(str(path), "sft", DataConfig())


def test_columns_of_a_layout_not_read_are_not_matched(tmp_path):
    # A row of tunelab's own fields never reads them: two of them named alike are no question.
    row = {"prompt": "Q", "completion": "A", "System": "x", "SYSTEM": "y"}
    result = read_records(str(_write(tmp_path / "data.jsonl", [row])), "sft", DataConfig())
    assert not result.errors and len(result.records) == 1 and result.layouts == []


def test_data_show_says_how_the_file_was_read(tmp_path, tiny_model_dir):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    path = _write(tmp_path / "alpaca.jsonl", [{"instruction": "Name a colour.", "input": "", "output": "Blue."}])
    result = CliRunner().invoke(app, ["data", "show", str(path), "--task", "sft", "--model", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    # Rich wraps long lines: the words are counted, not the line breaks.
    assert " ".join(result.output.split()).count("note: " + f"{path}: read as Alpaca") == 1, result.output


def _turns(*turns):
    return [{"from": who, "value": said} for who, said in turns]


def _messages(*turns):
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    return [{"role": roles[who], "content": said} for who, said in turns]


@pytest.mark.parametrize("as_turns", [_turns, _messages])
def test_preference_pairs_of_sharegpt_turns_equal_those_of_messages(tmp_path, as_turns):
    # Each was "prompt[1]: unknown role None".
    rows = [
        {"prompt": as_turns(("system", "Be brief."), ("human", "Hi")), "chosen": as_turns(("gpt", "Hello.")), "rejected": as_turns(("gpt", "Go."))},
        {"chosen": as_turns(("human", "Hi"), ("gpt", "Hello.")), "rejected": as_turns(("human", "Hi"), ("gpt", "Go."))},
    ]
    result = read_records(str(_write(tmp_path / "pairs.jsonl", rows)), "preference", DataConfig())
    assert not result.errors, result.errors
    assert [(r.prompt, r.chosen, r.rejected) for r in result.records] == [
        (({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}), "Hello.", "Go."),
        (({"role": "user", "content": "Hi"},), "Hello.", "Go."),
    ]
    assert (len(result.layouts), as_turns) in ((1, _turns), (0, _messages))


def test_a_bad_sharegpt_turn_in_a_preference_pair_is_named(tmp_path):
    rows = [{"prompt": _turns(("human", "Hi")), "chosen": [{"from": "bot", "value": "Hello."}], "rejected": _turns(("gpt", "Go."))}]
    result = read_records(str(_write(tmp_path / "pairs.jsonl", rows)), "preference", DataConfig())
    assert not result.records and "chosen[1]: unknown ShareGPT speaker 'bot'" in result.errors[0].reason
