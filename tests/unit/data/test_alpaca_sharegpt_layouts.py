"""Alpaca (``instruction``/``input``/``output``) and ShareGPT (``conversations`` of ``from``/``value`` turns) files
are read as they are for sft, into the same records as their prompt/completion and OpenAI ``messages`` equivalents."""

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from tunelab.config import DataConfig
from tunelab.data.read import read_records

ALPACA = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
]
# The same rows as a user would write them by hand: the input after a blank line, when there is one.
ALPACA_BY_HAND = [
    {"prompt": "Name a colour.", "completion": "Blue."},
    {"prompt": "Translate to French.\n\ncat", "completion": "chat"},
]
SHAREGPT = [
    {"conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello."},
        {"from": "user", "value": "Bye"},
        {"from": "assistant", "value": "Goodbye."},
    ]},
]
OPENAI = [
    {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]},
]


def _write(path, rows):
    if path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=2))
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _read(path, **options):
    return read_records(str(path), "sft", DataConfig(**options))


def _unsourced(records):
    return [dataclasses.replace(record, source="") for record in records]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_alpaca_rows_equal_the_prompt_completion_rows_written_by_hand(tmp_path, suffix):
    alpaca = _read(_write(tmp_path / f"alpaca{suffix}", ALPACA))
    by_hand = _read(_write(tmp_path / f"hand{suffix}", ALPACA_BY_HAND))
    assert not alpaca.errors and not by_hand.errors
    assert _unsourced(alpaca.records) == _unsourced(by_hand.records) and len(alpaca.records) == 2
    assert alpaca.layouts == [f"{tmp_path / f'alpaca{suffix}'}: read as Alpaca: instruction + input → prompt, output → completion"]
    assert by_hand.layouts == []


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_sharegpt_rows_equal_the_openai_messages_rows(tmp_path, suffix):
    sharegpt = _read(_write(tmp_path / f"sharegpt{suffix}", SHAREGPT))
    openai = _read(_write(tmp_path / f"openai{suffix}", OPENAI))
    assert not sharegpt.errors and not openai.errors
    assert _unsourced(sharegpt.records) == _unsourced(openai.records) and len(sharegpt.records) == 1
    assert len(sharegpt.layouts) == 1 and "read as ShareGPT" in sharegpt.layouts[0]
    assert openai.layouts == []


def test_sharegpt_turns_under_a_named_messages_field(tmp_path):
    path = _write(tmp_path / "chats.jsonl", [{"dialogue": SHAREGPT[0]["conversations"]}])
    result = _read(path, messages_field="dialogue")
    assert not result.errors
    assert result.records[0].messages == _read(_write(tmp_path / "openai.jsonl", OPENAI)).records[0].messages


def test_alpaca_system_and_history_are_the_earlier_turns(tmp_path):
    row = {"instruction": "And now?", "input": "", "output": "Two.", "system": "Count.", "history": [["Start", "One."]]}
    by_hand = {"prompt": [
        {"role": "system", "content": "Count."},
        {"role": "user", "content": "Start"},
        {"role": "assistant", "content": "One."},
        {"role": "user", "content": "And now?"},
    ], "completion": "Two."}
    alpaca = _read(_write(tmp_path / "alpaca.jsonl", [row]))
    assert not alpaca.errors
    assert _unsourced(alpaca.records) == _unsourced(_read(_write(tmp_path / "hand.jsonl", [by_hand])).records)


def test_alpaca_without_optional_columns_and_with_null_input(tmp_path):
    rows = [{"instruction": "Say hi.", "output": "Hi."}, {"instruction": "Say yo.", "input": None, "output": "Yo."}]
    result = _read(_write(tmp_path / "alpaca.jsonl", rows))
    assert not result.errors and [r.messages[0]["content"] for r in result.records] == ["Say hi.", "Say yo."]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"instruction": "Q", "input": "", "output": ""}, "empty field 'output'"),
        ({"instruction": "Q", "input": 3, "output": "A"}, "'input' should be a string"),
        ({"instruction": "Q", "output": "A", "history": [["only one"]]}, "'history' should be a list of [prompt, answer] pairs"),
        ({"instruction": "Q", "output": "A", "history": "Start"}, "'history' should be a list of [prompt, answer] pairs"),
    ],
)
def test_bad_alpaca_rows_are_errors_naming_the_column(tmp_path, row, reason):
    path = _write(tmp_path / "alpaca.jsonl", [row])
    result = _read(path)
    assert not result.records and len(result.errors) == 1
    assert result.errors[0].source == f"{path}:1" and reason in result.errors[0].reason


@pytest.mark.parametrize(
    ("turn", "reason"),
    [
        ({"from": "bot", "value": "Hello."}, "conversations[2]: unknown ShareGPT speaker 'bot'"),
        ({"value": "Hello."}, "conversations[2]: unknown ShareGPT speaker None"),
        ({"from": "gpt", "content": "Hello."}, "conversations[2]: mixes"),
        ({"role": "assistant", "content": "Hello."}, "conversations[2]: mixes"),
        ({"from": "function_call", "value": "{}"}, "conversations[2]: ShareGPT role 'function_call' is not supported"),
        ({"from": "observation", "value": "{}"}, "conversations[2]: ShareGPT role 'observation' is not supported"),
    ],
)
def test_bad_sharegpt_turns_are_errors_naming_the_row_and_turn(tmp_path, turn, reason):
    path = _write(tmp_path / "sharegpt.jsonl", [{"conversations": [{"from": "human", "value": "Hi"}, turn]}])
    result = _read(path)
    assert not result.records and len(result.errors) == 1
    assert result.errors[0].source == f"{path}:1" and reason in result.errors[0].reason, result.errors[0].reason


def test_a_messages_column_is_read_before_conversations(tmp_path):
    row = {**OPENAI[0], "conversations": [{"from": "human", "value": "other"}, {"from": "gpt", "value": "other"}]}
    result = _read(_write(tmp_path / "both.jsonl", [row]))
    assert not result.errors and result.records[0].messages[1]["content"] == "Hi" and result.layouts == []


def test_a_conversations_column_of_openai_turns_is_the_messages(tmp_path):
    path = _write(tmp_path / "chats.jsonl", [{"conversations": OPENAI[0]["messages"]}])
    result = _read(path)
    assert not result.errors and result.layouts == [f"{path}: read 'conversations' as the messages"]
    assert _unsourced(result.records) == _unsourced(_read(_write(tmp_path / "openai.jsonl", OPENAI)).records)


def _cli(args):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize(("rows", "layout"), [(ALPACA, "read as Alpaca"), (SHAREGPT, "read as ShareGPT")])
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_data_check_reads_the_layout_and_says_so(tmp_path, rows, layout, suffix):
    path = _write(tmp_path / f"data{suffix}", rows)
    result = _cli(["data", "check", str(path), "--task", "sft", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["records"] == len(rows) and not report["errors"]
    assert sum(layout in note for note in report["layouts"]) == 1
    result = _cli(["data", "check", str(path), "--task", "sft"])
    # Rich wraps long lines: the words are counted, not the line breaks.
    assert result.exit_code == 0 and " ".join(result.output.split()).count(layout) == 1, result.output


def test_data_check_names_a_bad_sharegpt_turn(tmp_path):
    path = _write(tmp_path / "data.jsonl", [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "x"}]}])
    result = _cli(["data", "check", str(path), "--task", "sft", "--json"])
    assert result.exit_code == 2
    error = json.loads(result.output)["errors"][0]
    assert error["source"] == f"{path}:1" and "conversations[2]: unknown ShareGPT speaker 'bot'" in error["reason"]


def test_tunelab_run_says_once_how_an_alpaca_file_was_read(tmp_path, tiny_model_dir, monkeypatch):
    from tunelab.config import parse_config
    from tunelab.tasks import pipeline

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(8)]
    path = _write(tmp_path / "alpaca.json", rows)
    config = parse_config({
        "task": "sft", "model": str(tiny_model_dir), "name": "alpaca",
        "data": {"train": str(path), "max_length": 64}, "train": {"output_dir": str(tmp_path / "runs")},
    })
    events = []
    context = pipeline.open_pipeline(config, calibrate=False, on_event=lambda *event: events.append(event))
    pipeline.check_step(context)
    said = [details["message"] for _, status, details in events if status == "event"]
    assert said == [f"data: {path}: read as Alpaca: instruction + input → prompt, output → completion"]
