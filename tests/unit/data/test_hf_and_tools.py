"""Data people already have: Hugging Face ``datasets`` folders and Arrow files; OpenAI tool-calling chats."""

from __future__ import annotations

import copy
import json

import pyarrow as pa
import pyarrow.parquet
import pytest

from tunelab.config import DataConfig
from tunelab.data.read import load_records, read_records
from tunelab.data.records import SFTRecord
from tunelab.data.templates import TOOLS_INSTRUCTION, render_chat, render_prompt_ids
from tunelab.data.tokenize import IGNORE_INDEX, tokenize_sft
from tunelab.errors import DataError

datasets = pytest.importorskip("datasets")

ROWS = [{"text": "my card has not arrived", "label": "card"}, {"text": "I want my money back", "label": "refund"}]


def test_a_saved_dataset_folder_reads_its_rows_not_its_metadata(tmp_path):
    folder = tmp_path / "tickets"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    records = load_records(str(folder), "classify", DataConfig())
    assert [(r.text, r.label) for r in records] == [(row["text"], row["label"]) for row in ROWS]
    assert records[0].source == f"{folder}:1"
    # The same folder inside a bigger one is one source, beside the other files there.
    (tmp_path / "more.jsonl").write_text(json.dumps({"text": "where is my parcel", "label": "card"}) + "\n")
    result = read_records(str(tmp_path), "classify", DataConfig())
    assert result.errors == [] and len(result.records) == 3
    assert result.files == [str(tmp_path / "more.jsonl"), str(folder)]


def test_class_label_integers_come_back_as_label_names(tmp_path):
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["card", "refund"])})
    dataset = datasets.Dataset.from_dict({"text": [r["text"] for r in ROWS], "label": [0, 1]}, features=features)
    dataset.save_to_disk(str(tmp_path / "d"))
    assert [r.label for r in load_records(str(tmp_path / "d"), "classify", DataConfig())] == ["card", "refund"]


def test_class_labels_of_a_hugging_face_parquet_file_come_back_as_label_names(tmp_path):
    # Dataset.to_parquet and the Hub's parquet files keep the class names in the schema's metadata: read as
    # plain parquet, labels were "0", "1" (the label tokens, the zero-shot prompt and the report said numbers),
    # and a test file saved with save_to_disk had labels "never seen in train".
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["card", "refund"])})
    dataset = datasets.Dataset.from_dict({"text": [r["text"] for r in ROWS], "label": [0, 1]}, features=features)
    dataset.to_parquet(str(tmp_path / "train.parquet"))
    records = load_records(str(tmp_path / "train.parquet"), "classify", DataConfig())
    assert [(r.label, r.source) for r in records] == [("card", f"{tmp_path / 'train.parquet'}:1"), ("refund", f"{tmp_path / 'train.parquet'}:2")]
    # A parquet file with no class names keeps its integers (label 0 is "0").
    pa.parquet.write_table(pa.Table.from_pylist([{"text": "x y", "label": 0}, {"text": "z w", "label": 1}]), tmp_path / "plain.parquet")
    assert [r.label for r in load_records(str(tmp_path / "plain.parquet"), "classify", DataConfig())] == ["0", "1"]


def test_a_dataset_dict_folder_reads_its_train_split(tmp_path):
    train, test = datasets.Dataset.from_list(ROWS), datasets.Dataset.from_list(ROWS[:1])
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_records(str(tmp_path / "dd"), "classify", DataConfig())) == 2
    assert len(load_records(str(tmp_path / "dd" / "test"), "classify", DataConfig())) == 1
    datasets.DatasetDict({"validation": train}).save_to_disk(str(tmp_path / "no-train"))
    with pytest.raises(DataError, match="none is 'train'") as raised:
        read_records(str(tmp_path / "no-train"), "classify", DataConfig())
    assert "no-train/validation" in raised.value.hint


def test_arrow_files_in_both_layouts(tmp_path):
    # The stream format datasets writes (its cache files and shards) ...
    stream = tmp_path / "stream.arrow"
    table = pa.Table.from_pylist(ROWS)
    with pa.OSFile(str(stream), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    # ... and Arrow's random-access file format.
    random_access = tmp_path / "file.arrow"
    with pa.OSFile(str(random_access), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    for path in (stream, random_access):
        records = load_records(str(path), "classify", DataConfig())
        assert [r.text for r in records] == [row["text"] for row in ROWS] and records[1].source == f"{path}:2"
    broken = tmp_path / "broken.arrow"
    broken.write_bytes(b"not arrow at all")
    with pytest.raises(DataError, match="not a readable Arrow file"):
        read_records(str(broken), "classify", DataConfig())


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
TOOL_ROW = {
    "messages": [
        {"role": "developer", "content": "You answer about the weather."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        {"role": "assistant", "content": "Sunny and 21 degrees."},
    ],
    "tools": TOOLS,
    "parallel_tool_calls": False,
}


def test_openai_tool_calling_rows_read_in_full(tmp_path):
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(TOOL_ROW) + "\n")
    (record,) = load_records(str(path), "sft", DataConfig())
    assert record.messages[0] == {"role": "system", "content": "You answer about the weather."}  # developer = system
    call = record.messages[2]["tool_calls"][0]
    assert call == {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    assert record.messages[3] == {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_1"}
    assert record.tools == tuple(TOOLS) and record.completion == "Sunny and 21 degrees."
    # Tools join the record's identity: the same chat with other schemas is another example.
    assert record.id != SFTRecord(record.messages).id


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda row: row["messages"][2]["tool_calls"][0]["function"].update(arguments="{city: Paris"), "'arguments' is not valid JSON"),
        (lambda row: row["messages"][3].update(tool_call_id="call_9"), "answers no earlier tool call"),
        (lambda row: row["messages"].pop(2), "a tool result with no assistant tool call before it"),
        (lambda row: row["messages"][1].update(role="function"), "unknown role 'function'"),
        (lambda row: row.update(tools=[{"type": "function"}]), "tools[1]: expected"),
    ],
)
def test_bad_tool_rows_are_reported_with_the_reason(tmp_path, change, reason):
    row = json.loads(json.dumps(TOOL_ROW))
    change(row)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    result = read_records(str(path), "sft", DataConfig())
    assert result.records == [] and reason in result.errors[0].reason and result.errors[0].source == f"{path}:1"


def _tool_record() -> SFTRecord:
    messages = json.loads(json.dumps(TOOL_ROW["messages"]))
    messages[0]["role"] = "system"
    messages[2]["content"] = ""
    messages[2]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    return SFTRecord(tuple(messages), tools=tuple(TOOLS))


def _trained_pieces(tokenizer, example) -> list[str]:
    pieces, current = [], []
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            pieces.append(tokenizer.decode(current))
            current = []
    return pieces + ([tokenizer.decode(current)] if current else [])


def test_tool_chats_train_only_the_assistant_turns_with_a_plain_template(tiny_tokenizer):
    # The tiny ChatML template knows no tools: calls become <tool_call> text, results a user turn, schemas the system message.
    record = _tool_record()
    example = tokenize_sft(record, tiny_tokenizer, max_length=4096)
    text = tiny_tokenizer.decode(example.input_ids)
    assert text == render_chat(tiny_tokenizer, record.messages, tools=record.tools)
    assert TOOLS_INSTRUCTION.split("{tools}")[0] in text and json.dumps(TOOLS[0]) in text
    assert "<|im_start|>user\n<tool_response>\nsunny, 21 C\n</tool_response><|im_end|>" in text
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert _trained_pieces(tiny_tokenizer, example) == [f"{call}<|im_end|>", "Sunny and 21 degrees.<|im_end|>"]
    # The prompt evaluation and serving render is the training text up to the last answer.
    prompt_ids = render_prompt_ids(tiny_tokenizer, record.prompt_messages, record.tools)
    assert example.input_ids[: len(prompt_ids)] == prompt_ids


TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}"
    "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_tool_aware_template_gets_the_calls_and_the_schemas_itself(tiny_tokenizer):
    aware = copy.deepcopy(tiny_tokenizer)
    aware.chat_template = TOOL_TEMPLATE
    record = _tool_record()
    example = tokenize_sft(record, aware, max_length=4096)
    text = aware.decode(example.input_ids)
    assert text.startswith("<|im_start|>system\nTOOLS:[{")
    assert '"name": "get_weather"' in text and "<tool_call>" not in text
    assert _trained_pieces(aware, example) == ['CALL get_weather {"city": "Paris"}<|im_end|>', "Sunny and 21 degrees.<|im_end|>"]
    assert "<|im_start|>tool\nsunny, 21 C<|im_end|>" in text
