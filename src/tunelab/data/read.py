"""Read a user's data as it is into typed records, reporting every record that cannot be used.

Accepted shapes per task (field names are configurable with ``data.*_field``, and a column matches a field
whatever its case and surrounding spaces, ``Text`` as ``text``, unless one is named exactly):

- text: ``.txt`` files and documents (Markdown and other markup, HTML, .docx, PDF; one file = one document) or rows
  with a ``text`` field.
- sft: ``messages`` in the OpenAI chat format (system/developer/user/assistant/tool; an assistant
  ``weight`` of 0 is kept and not trained; assistant ``tool_calls`` and ``tool`` results, with the
  row's ``tools`` schemas), or ``prompt``/``completion`` as strings or as message lists (TRL's
  conversational prompt-completion). An optional ``references`` list keeps extra reference answers.
  Two common layouts are read as they are (``ReadResult.layouts`` says so, once per file): Alpaca
  (``instruction``, optional ``input``, ``output``; LLaMA-Factory's ``system`` and ``history`` are the
  earlier turns) and ShareGPT (``conversations``, when there is no ``messages`` column, or the messages
  column, of ``from``/``value`` turns: human/user, gpt/assistant, system).
- classify: ``text`` and ``label`` (a string or an integer; a whole-number float such as 1.0 is the integer); or a
  folder of documents kept one folder per label (``FOLDER/LABEL/file``: aclImdb, 20 Newsgroups), each document's text
  as the text task reads it and its folder's name the label, said once (``ReadResult.layouts``).
- preference: ``prompt``/``chosen``/``rejected`` (strings or message lists), or only
  ``chosen``/``rejected`` holding whole dialogues with a shared beginning: the HH-RLHF shape
  (``"\\n\\nHuman: ... \\n\\nAssistant: ..."``) or message lists (TRL's implicit prompt). A message list
  may be ShareGPT turns (``from``/``value``), read as sft's are.

A path is a file, a folder (every readable file below it, in a stable order), a glob, or a Hugging
Face dataset name (``name`` or ``name:split``) when the network is allowed. ``data.preset`` reads a
known public dataset's own layout (see ``tunelab.data.presets``).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import GROUP_TASKS, DataConfig
from tunelab.data.formats import (
    DOCUMENT_FORMATS,
    RecordError,
    RowOrError,
    dataset_rows,
    format_by_name,
    invalid_records,
    iter_rows,
    label_folders,
    looked_for,
    resolve_files,
    too_large,
)
from tunelab.data.presets import get_preset, instruction_prompt
from tunelab.data.records import (
    ClassifyRecord,
    Message,
    PreferenceRecord,
    Record,
    SFTRecord,
    TextRecord,
)
from tunelab.errors import DataError

__all__ = [
    "Fields", "ReadResult", "RecordError", "Unlabeled", "error_summary", "load_records", "load_result", "named_columns", "read_records",
    "read_unlabeled", "row_to_record", "sft_prompt",
]

ROLES = ("system", "user", "assistant", "tool")
MAX_LISTED_ERRORS = 20


@dataclass
class ReadResult:
    """What reading produced: the good records, every bad one (``file:line`` + reason), the files read."""

    records: list[Record] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    truncated_by_limit: bool = False
    layouts: list[str] = field(default_factory=list)  # "file: read as Alpaca: ...", once per file and recognised layout

    def error_summary(self, limit: int = MAX_LISTED_ERRORS) -> str:
        return error_summary(self.errors, limit)


def error_summary(errors: Sequence[RecordError], limit: int = MAX_LISTED_ERRORS) -> str:
    """The first ``limit`` errors, one ``file:line: reason`` a line (indented under the line that counts them)."""
    lines = [str(error) for error in errors[:limit]]
    if len(errors) > limit:
        lines.append(f"... and {len(errors) - limit} more")
    return "\n  ".join(lines)


class _Bad(Exception):
    """A row that is not a valid record; the message is the reason shown to the user."""


class _Missing(_Bad):
    """A row without a field (``roles``: the fields, any of which would have done)."""

    def __init__(self, message: str, roles: tuple[str, ...]) -> None:
        super().__init__(message)
        self.roles = roles


class _MissingField(ValueError):
    """``row_to_record``'s ValueError for a row without a field, its roles kept: a file none of whose rows has it is one error."""

    def __init__(self, message: str, roles: tuple[str, ...]) -> None:
        super().__init__(message)
        self.roles = roles


@dataclass(frozen=True)
class Fields:
    """The column names a row's values are taken from."""

    text: str = "text"
    prompt: str = "prompt"
    completion: str = "completion"
    messages: str = "messages"
    label: str = "label"
    chosen: str = "chosen"
    rejected: str = "rejected"
    max_label_chars: int = 200  # data.max_label_chars
    group: str | None = None  # data.group_field: None reads no group
    # Where the columns are named when not by the data's options and keys: a predictions file's eval.baselines entry.
    named_in: str | None = None

    @classmethod
    def from_config(cls, data: DataConfig, named_in: str | None = None) -> Fields:
        return cls(
            data.text_field,
            data.prompt_field,
            data.completion_field,
            data.messages_field,
            data.label_field,
            data.chosen_field,
            data.rejected_field,
            data.max_label_chars,
            data.group_field,
            named_in,
        )


_OPTION_FOR = {
    "text": "--text-field",
    "prompt": "--prompt-field",
    "completion": "--completion-field",
    "messages": "--messages-field",
    "label": "--label-field",
    "chosen": "--chosen-field",
    "rejected": "--rejected-field",
    "group": "--group-field",
}


def _missing(row: dict, name: str, role: str) -> _Missing:
    present = ", ".join(sorted(str(key) for key in row)[:12]) or "none"
    return _Missing(f"missing field '{name}' (fields here: {present}; map another column with {_OPTION_FOR[role]})", (role,))


def _string(row: dict, name: str, role: str) -> str:
    if name not in row:
        raise _missing(row, name, role)
    value = row[name]
    if value is None:
        raise _Bad(f"empty field '{name}' (null)")
    if not isinstance(value, str):
        raise _Bad(f"wrong type: field '{name}' should be a string, got {type(value).__name__}")
    if not value.strip():
        raise _Bad(f"empty field '{name}'")
    return value


def _content(message: Any, where: str, *, required: bool = True) -> str:
    content = message.get("content")
    if isinstance(content, list):
        # OpenAI content parts: only text parts carry anything a text model can learn from.
        texts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        if len(texts) != len(content) or not all(isinstance(text, str) for text in texts):
            raise _Bad(f"{where}: only text content parts are supported")
        content = "".join(texts)
    if content is None:
        if not required:
            return ""
        raise _Bad(f"{where}: missing 'content'")
    if not isinstance(content, str):
        raise _Bad(f"wrong type: {where}: 'content' should be a string, got {type(content).__name__}")
    if required and not content.strip():
        raise _Bad(f"{where}: empty content")
    return content


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI ``tool_calls``, with each call's ``arguments`` (a JSON string there) parsed into an object."""
    if not isinstance(value, list) or not value:
        raise _Bad(f"wrong type: {where}: 'tool_calls' should be a non-empty list")
    calls = []
    for number, call in enumerate(value, start=1):
        here = f"{where}.tool_calls[{number}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise _Bad(f"{here}: expected {{\"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}")
        if call.get("type", "function") != "function":
            raise _Bad(f"{here}: only 'function' tool calls are supported, got {call.get('type')!r}")
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _Bad(f"{here}: missing function 'name'")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as error:
                raise _Bad(f"{here}: 'arguments' is not valid JSON ({error.msg})") from None
        if not isinstance(arguments, dict):
            raise _Bad(f"{here}: 'arguments' should be a JSON object, got {type(arguments).__name__}")
        parsed: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
        if call.get("id") is not None:
            parsed["id"] = str(call["id"])
        calls.append(parsed)
    return calls


def _tools(row: dict) -> tuple[dict[str, Any], ...]:
    """A row's function schemas: OpenAI's ``tools`` (or the older ``functions``), each ``{"type": "function", "function": {...}}``."""
    value = row.get("tools")
    if value is None and row.get("functions") is not None:
        value = [{"type": "function", "function": function} for function in row["functions"]] if isinstance(row["functions"], list) else row["functions"]
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Bad(f"wrong type: 'tools' should be a list of function schemas, got {type(value).__name__}")
    tools = []
    for number, tool in enumerate(value, start=1):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"].strip():
            raise _Bad(f"tools[{number}]: expected {{\"type\": \"function\", \"function\": {{\"name\", \"description\", \"parameters\"}}}}")
        if tool.get("type", "function") != "function":
            raise _Bad(f"tools[{number}]: only 'function' tools are supported, got {tool.get('type')!r}")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise _Bad(f"tools[{number}]: 'parameters' should be a JSON schema object")
        tools.append({"type": "function", "function": dict(function)})
    return tuple(tools)


def _messages(value: Any, name: str, context: Sequence[Message] = ()) -> list[Message]:
    """Validated chat messages; ``context``: the turns before them (a completion's prompt), for tool results."""
    if not isinstance(value, list):
        raise _Bad(f"wrong type: field '{name}' should be a list of messages, got {type(value).__name__}")
    if not value:
        raise _Bad(f"empty field '{name}'")
    messages: list[Message] = []
    call_ids = {call["id"] for m in context for call in m.get("tool_calls") or () if "id" in call}
    for number, message in enumerate(value, start=1):
        where = f"{name}[{number}]"
        if not isinstance(message, dict):
            raise _Bad(f"wrong type: {where} should be an object with 'role' and 'content'")
        role = message.get("role")
        # OpenAI's "developer" role is the system message under its newer name: chat templates know "system".
        role = "system" if role == "developer" else role
        if role not in ROLES:
            raise _Bad(f"{where}: unknown role {role!r} (expected system, developer, user, assistant or tool)")
        if role == "assistant" and message.get("tool_calls"):
            calls = _tool_calls(message["tool_calls"], where)
            call_ids.update(call["id"] for call in calls if "id" in call)
            item: Message = {"role": role, "content": _content(message, where, required=False), "tool_calls": calls}
        elif role == "tool":
            if not any(m.get("tool_calls") for m in [*context, *messages]):
                raise _Bad(f"{where}: a tool result with no assistant tool call before it")
            item = {"role": role, "content": _content(message, where, required=False)}
            if message.get("tool_call_id") is not None:
                if call_ids and str(message["tool_call_id"]) not in call_ids:
                    raise _Bad(f"{where}: 'tool_call_id' {message['tool_call_id']!r} answers no earlier tool call")
                item["tool_call_id"] = str(message["tool_call_id"])
            if isinstance(message.get("name"), str):
                item["name"] = message["name"]
        else:
            item = {"role": role, "content": _content(message, where)}
        if role == "assistant" and "weight" in message:
            if message["weight"] not in (0, 1):
                raise _Bad(f"{where}: 'weight' must be 0 or 1, got {message['weight']!r}")
            item["weight"] = message["weight"]
        messages.append(item)
    return messages


# ShareGPT's speakers (``from``), as axolotl, LLaMA-Factory and unsloth read them; ``user``/``assistant`` are written there too.
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# LLaMA-Factory's tool turns: their JSON is not OpenAI's tool_calls (no call ids, schemas in another column), so they
# are refused by name rather than mapped by a guess.
_SHAREGPT_TOOL_ROLES = ("function_call", "observation")
_CONVERSATIONS = "conversations"  # ShareGPT's column, read as the messages when there is no messages column


def _is_sharegpt(value: Any) -> bool:
    return isinstance(value, list) and any(isinstance(turn, dict) and ("from" in turn or "value" in turn) for turn in value)


def _sharegpt(value: Any, name: str) -> Any:
    """ShareGPT turns (``{"from": "human", "value": ...}``) as OpenAI messages, for ``_messages``; any other value as it is."""
    if not _is_sharegpt(value):
        return value
    messages = []
    for number, turn in enumerate(value, start=1):
        where = f"{name}[{number}]"
        if not isinstance(turn, dict):
            messages.append(turn)  # _messages says what is wrong with it
            continue
        if "role" in turn or "content" in turn:
            raise _Bad(f"{where}: mixes OpenAI 'role'/'content' and ShareGPT 'from'/'value' keys in one conversation (write every turn one way)")
        speaker = turn.get("from")
        if speaker in _SHAREGPT_TOOL_ROLES:
            raise _Bad(
                f"{where}: ShareGPT role {speaker!r} is not supported (write tool-calling conversations as OpenAI "
                "messages: an assistant's 'tool_calls' and 'tool' results)"
            )
        if speaker not in _SHAREGPT_ROLES:
            raise _Bad(f"{where}: unknown ShareGPT speaker {speaker!r} in 'from' (expected human, gpt, system, user or assistant)")
        if "value" not in turn:
            raise _Bad(f"{where}: missing 'value'")
        message = {"role": _SHAREGPT_ROLES[speaker], "content": turn["value"]}
        if "weight" in turn:  # axolotl's per-turn weight, as an OpenAI assistant message's
            message["weight"] = turn["weight"]
        messages.append(message)
    return messages


def _alpaca(row: dict) -> list[Message]:
    """An Alpaca row's messages: its prompt (``_alpaca_prompt``), the output the answer."""
    return [*_alpaca_prompt(row), {"role": "assistant", "content": _string(row, "output", "completion")}]


def _alpaca_prompt(row: dict) -> list[Message]:
    """An Alpaca row's prompt: instruction and input joined as Self-Instruct's are (``instruction_prompt``),
    LLaMA-Factory's ``system`` and ``history`` ([prompt, answer] pairs) the turns before them."""
    instruction = _string(row, "instruction", "prompt")
    given = row.get("input")
    if given is not None and not isinstance(given, str):
        raise _Bad(f"wrong type: field 'input' should be a string, got {type(given).__name__}")
    earlier: list[Message] = []
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise _Bad(f"wrong type: field 'system' should be a string, got {type(system).__name__}")
    if system and system.strip():
        earlier.append({"role": "system", "content": system})
    history = row.get("history") or []
    pairs = isinstance(history, list) and all(
        isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(text, str) for text in pair) for pair in history
    )
    if not pairs:
        raise _Bad("wrong type: 'history' should be a list of [prompt, answer] pairs (the turns before the instruction)")
    for number, (asked, answered) in enumerate(history, start=1):
        if not asked.strip() or not answered.strip():
            raise _Bad(f"history[{number}]: empty prompt or answer")
        earlier += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
    return [*earlier, {"role": "user", "content": instruction_prompt(instruction, given)}]


def _sft_layout(row: dict, fields: Fields, *, answered: bool = True) -> tuple[str, str]:
    """How an sft row is read: ``("messages", column)`` (OpenAI or ShareGPT turns), ``("alpaca", "")`` or
    ``("prompt", "")``. tunelab's own fields come first: ``conversations`` and Alpaca only in a row without them.
    ``answered``: an Alpaca row has its ``output`` (a prompt to be answered, not learned from, needs none)."""
    if fields.messages in row:
        return "messages", fields.messages
    if fields.prompt not in row and fields.completion not in row:
        if _CONVERSATIONS in row:
            return "messages", _CONVERSATIONS
        if "instruction" in row and ("output" in row or not answered):
            return "alpaca", ""
    return "prompt", ""


def sft_prompt(row: dict, fields: Fields) -> list[Message] | None:
    """The turns an sft row asks, for prompts with no answer to learn (distill's unlabelled inputs): its messages
    (OpenAI's or ShareGPT's) or Alpaca columns read as for training, less the assistant turns they end with; None
    for a row of tunelab's ``prompt`` field, left to the caller. ``row``'s columns are already named (``named_columns``).

    Raises:
        ValueError: with the reason, when the row's turns cannot be read.
    """
    kind, column = _sft_layout(row, fields, answered=False)
    try:
        if kind == "messages":
            messages = _messages(_sharegpt(row[column], column), column)
        elif kind == "alpaca":
            messages = _alpaca_prompt(row)
        else:
            return None
    except _Bad as bad:
        raise ValueError(str(bad)) from None
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
    if not messages:
        raise ValueError(f"'{column}' holds only assistant turns (nothing to answer)")
    return messages


def _layout(row: dict, task: str, fields: Fields) -> str | None:
    """How the columns of a row in a recognised layout are read, for people (None: tunelab's own fields)."""
    if task == "preference":
        # One note for the file, whichever of a row's columns hold the turns (a pair's prompt may be a string).
        if any(_is_sharegpt(row.get(name)) for name in (fields.prompt, fields.chosen, fields.rejected)):
            return "read as ShareGPT: turns from/value → messages (human → user, gpt → assistant)"
        return None
    if task != "sft":
        return None
    kind, column = _sft_layout(row, fields)
    if kind == "alpaca":
        return "read as Alpaca: instruction + input → prompt, output → completion" + (
            ", system and history → the turns before" if row.get("system") or row.get("history") else ""
        )
    if kind == "messages" and _is_sharegpt(row[column]):
        return f"read as ShareGPT: '{column}' turns from/value → messages (human → user, gpt → assistant)"
    if column == _CONVERSATIONS:
        return f"read '{_CONVERSATIONS}' as the messages"
    return None


def _references(row: dict) -> tuple[str, ...]:
    value = row.get("references")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise _Bad("wrong type: 'references' should be a list of non-empty strings")
    return tuple(value)


def _sft(row: dict, source: str, fields: Fields) -> SFTRecord:
    kind, column = _sft_layout(row, fields)
    if kind == "messages":
        messages = _messages(_sharegpt(row[column], column), column)
        if not any(m["role"] == "assistant" for m in messages):
            raise _Bad(f"no assistant turn in '{column}' (nothing to learn)")
        if messages[-1]["role"] != "assistant":
            raise _Bad(f"'{column}' must end with an assistant turn (the answer to learn)")
        if not any(m["role"] == "user" for m in messages):
            raise _Bad(f"no user turn in '{column}'")
    elif kind == "alpaca":
        messages = _alpaca(row)
    else:
        if fields.prompt not in row:
            if fields.completion not in row:
                raise _Missing(
                    f"missing field '{fields.prompt}' or '{fields.messages}' (fields here: "
                    f"{', '.join(sorted(map(str, row))[:12]) or 'none'}; map columns with --prompt-field/--completion-field)",
                    ("messages", "prompt", "completion"),
                )
            raise _missing(row, fields.prompt, "prompt")
        prompt_value = row[fields.prompt]
        if isinstance(prompt_value, list):
            prompt = _messages(prompt_value, fields.prompt)
            if prompt[-1]["role"] == "assistant":
                raise _Bad(f"'{fields.prompt}' must not end with an assistant turn")
        else:
            prompt = [{"role": "user", "content": _string(row, fields.prompt, "prompt")}]
        completion_value = row.get(fields.completion)
        if isinstance(completion_value, list):
            completion = _messages(completion_value, fields.completion, context=prompt)
            if any(m["role"] not in ("assistant", "tool") for m in completion) or completion[-1]["role"] != "assistant":
                raise _Bad(f"'{fields.completion}' may hold only assistant turns (and tool results), ending with the assistant's")
        else:
            completion = [{"role": "assistant", "content": _string(row, fields.completion, "completion")}]
        messages = prompt + completion
    return SFTRecord(tuple(messages), source=source, references=_references(row), tools=_tools(row), group=_group(row, fields))


def _classify(row: dict, source: str, fields: Fields) -> ClassifyRecord:
    text = _string(row, fields.text, "text")
    if fields.label not in row:
        raise _Missing(f"missing label: {_missing(row, fields.label, 'label')}", ("label",))
    label = row[fields.label]
    if isinstance(label, float) and (label != label or label.is_integer()):
        # pandas writes an integer label column holding a missing value as float64 (1.0, NaN): 1.0 is label 1.
        label = None if label != label else int(label)
    if label is None or (isinstance(label, str) and not label.strip()):
        raise _Bad(f"missing label: field '{fields.label}' is empty")
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise _Bad(f"wrong type: label '{fields.label}' should be a string or an integer, got {type(label).__name__}")
    # NFC: an accent typed as one character or as a letter and a combining mark (Mac exports) looks the same
    # wherever a label is shown, and is one class; composed labels (nearly all) are unchanged.
    label = unicodedata.normalize("NFC", str(label).strip())
    if len(label) > fields.max_label_chars:
        # A category, not a text: a long one is almost always a column mix-up (and labels are shown everywhere).
        raise _Bad(
            f"label '{fields.label}' is {len(label):,} characters long, more than data.max_label_chars={fields.max_label_chars} "
            f"(is the text in the label column? map columns with --text-field/--label-field)"
        )
    return ClassifyRecord(text, label, source=source, group=_group(row, fields))


def _group(row: dict, fields: Fields) -> str | None:
    """The row's group (``data.group_field``), as its label is read: a string or an integer, never empty; None when no
    group column is named. A top-level field of the row in every layout (an OpenAI-messages row's too)."""
    if fields.group is None:
        return None
    if fields.group not in row:
        raise _Missing(f"missing group: {_missing(row, fields.group, 'group')}", ("group",))
    value = row[fields.group]
    if isinstance(value, float) and (value != value or value.is_integer()):
        value = None if value != value else int(value)  # pandas' float64 for an integer column with a gap, as a label's
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _Bad(f"missing group: field '{fields.group}' is empty")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Bad(f"wrong type: group '{fields.group}' should be a string or an integer, got {type(value).__name__}")
    return unicodedata.normalize("NFC", str(value).strip())


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_hh_dialogue(text: str) -> list[Message]:
    """Split an HH-RLHF dialogue (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) into messages.

    Raises:
        ValueError: when the text is not in that shape.
    """
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise ValueError("not an HH-RLHF dialogue (expected '\\n\\nHuman: ...' turns)")
    messages: list[Message] = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return messages


def _dialogue(row: dict, name: str) -> list[Message]:
    value = row.get(name)
    if isinstance(value, list):
        return _messages(_sharegpt(value, name), name)
    text = _string(row, name, name)
    try:
        return parse_hh_dialogue(text)
    except ValueError:
        raise _Bad(
            f"field '{name}' is neither a dialogue ('\\n\\nHuman: ... \\n\\nAssistant: ...') nor a message list, "
            "and there is no prompt field (map it with --prompt-field)"
        ) from None


def _answer(row: dict, name: str) -> str:
    value = row.get(name)
    if isinstance(value, list):
        messages = _messages(_sharegpt(value, name), name)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise _Bad(f"'{name}' should hold exactly one assistant message")
        return messages[0]["content"]
    return _string(row, name, "chosen" if name == "chosen" else "rejected")


def _preference(row: dict, source: str, fields: Fields) -> PreferenceRecord:
    for name, role in ((fields.chosen, "chosen"), (fields.rejected, "rejected")):
        if name not in row:
            raise _missing(row, name, role)
    if fields.prompt in row:
        prompt_value = row[fields.prompt]
        if isinstance(prompt_value, list):
            prompt = _messages(_sharegpt(prompt_value, fields.prompt), fields.prompt)
            # As an sft prompt: the answers are the assistant's next turn, after something said to it.
            if prompt[-1]["role"] == "assistant":
                raise _Bad(f"'{fields.prompt}' must not end with an assistant turn")
            if not any(m["role"] == "user" for m in prompt):
                raise _Bad(f"no user turn in '{fields.prompt}'")
        else:
            prompt = [{"role": "user", "content": _string(row, fields.prompt, "prompt")}]
        chosen, rejected = _answer(row, fields.chosen), _answer(row, fields.rejected)
    else:
        # Whole dialogues: the shared beginning is the prompt, the differing last turns the answers.
        chosen_turns, rejected_turns = _dialogue(row, fields.chosen), _dialogue(row, fields.rejected)
        shared = 0
        while shared < min(len(chosen_turns), len(rejected_turns)) and chosen_turns[shared] == rejected_turns[shared]:
            shared += 1
        if shared == len(chosen_turns) == len(rejected_turns):
            raise _Bad("chosen and rejected are identical (nothing to prefer)")
        shared = min(shared, len(chosen_turns) - 1, len(rejected_turns) - 1)
        chosen_rest, rejected_rest = chosen_turns[shared:], rejected_turns[shared:]
        if len(chosen_rest) != 1 or len(rejected_rest) != 1:
            raise _Bad("chosen and rejected dialogues differ before their last turn (no shared prompt)")
        if chosen_rest[0]["role"] != "assistant" or rejected_rest[0]["role"] != "assistant":
            raise _Bad("the last turn of chosen and rejected must be the assistant's")
        prompt = chosen_turns[:shared]
        if not prompt or prompt[-1]["role"] != "user":
            raise _Bad("the shared prompt must end with a user turn")
        chosen, rejected = chosen_rest[0]["content"], rejected_rest[0]["content"]
        if not chosen.strip() or not rejected.strip():
            raise _Bad("empty answer in chosen or rejected")
    if chosen == rejected:
        raise _Bad("chosen and rejected are identical (nothing to prefer)")
    return PreferenceRecord(tuple(prompt), chosen, rejected, source=source)


# The fields each task reads (what a column name is matched against).
_ROLES_FOR = {
    "text": ("text",),
    "sft": ("messages", "prompt", "completion"),
    "classify": ("text", "label"),
    "preference": ("prompt", "chosen", "rejected"),
}

# The columns of the layouts read as they are (Alpaca's, LLaMA-Factory's, ShareGPT's), matched as the fields are.
_LAYOUT_COLUMNS = {
    "sft": ("instruction", "input", "output", "system", "history", "conversations"),
}


def named_columns(row: dict, source: str, task: str, fields: Fields) -> dict:
    """``row`` with a column that names a field in another case or with spaces around it (Excel's ``Text,Label``,
    ``" label"``) under the field's own name, as one naming a recognised layout's column (``Instruction``,
    ``Conversations``) in a row without those fields. A column named exactly wins: any other is one more column, left unread.

    Raises:
        DataError: when two columns match a field's name (``Text`` and ``TEXT``): which one is meant cannot be told.
    """
    roles = _ROLES_FOR.get(task, ())
    named = roles + ("group",) if fields.group is not None else roles
    missing = [(role, getattr(fields, role)) for role in named if getattr(fields, role) not in row]
    if not missing and not _LAYOUT_COLUMNS.get(task):
        return row
    by_folded: dict[str, list[str]] = {}
    for key in row:
        if isinstance(key, str):
            by_folded.setdefault(key.strip().casefold(), []).append(key)
    for role, name in missing:
        row = _named(row, source, by_folded, name, role)
    if not any(getattr(fields, role) in row for role in roles):
        # A layout's columns are read only in a row without tunelab's own fields (``_sft_layout``): only then
        # can two of them that match one name be a question.
        for name in _LAYOUT_COLUMNS.get(task, ()):
            if name not in row:
                row = _named(row, source, by_folded, name, None)
    return row


def _named(row: dict, source: str, by_folded: dict[str, list[str]], name: str, role: str | None) -> dict:
    """``row`` with the column whose folded name is ``name``'s under ``name`` (``role``: the field it is, None for a
    layout's column)."""
    keys = by_folded.get(name.strip().casefold(), [])
    if len(keys) > 1:
        both = f"{source}: the columns {' and '.join(repr(key) for key in keys)} both match"
        if role is None:  # a layout's column has no option to name it: only its own name is read
            raise DataError(f"{both} the column '{name}' (case and spaces aside)", f"rename one of them, or name one exactly '{name}'")
        raise DataError(
            f"{both} the {role} field '{name}' (case and spaces aside)",
            f"name the one to read exactly with {_OPTION_FOR[role]} (data.{role}_field), or rename the other",
        )
    return {name if key == keys[0] else key: value for key, value in row.items()} if keys else row


def row_to_record(row: dict, source: str, task: str, fields: Fields) -> Record:
    """Validate one row and build its record; a column names a field whatever its case and surrounding spaces.

    Raises:
        ValueError: with the reason, when the row is not a valid record of ``task``.
        DataError: when two columns match one field's name.
    """
    row = named_columns(row, source, task, fields)
    try:
        if task == "text":
            return TextRecord(_string(row, fields.text, "text"), source=source)
        if task == "sft":
            return _sft(row, source, fields)
        if task == "classify":
            return _classify(row, source, fields)
        if task == "preference":
            return _preference(row, source, fields)
    except _Missing as missing:
        raise _MissingField(str(missing), missing.roles) from None
    except _Bad as bad:
        raise ValueError(str(bad)) from None
    raise DataError(f"unknown task '{task}'", "use text, sft, classify or preference")


def content_size(value: Any, limit: int) -> int:
    """Characters of text in a row (strings, keys, nested lists and objects), counted up to just past ``limit``."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            total += sum(len(key) for key in item if isinstance(key, str))
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        else:
            total += 8
    return total


def _looks_like_hub_name(path: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?(:[\w.-]+)?", path)) and not Path(path).suffix


def _hub_rows(name: str) -> Iterator[RowOrError]:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise DataError(
            f"data not found locally: {name}{looked_for(name)}; as a Hugging Face dataset name it needs the network",
            "pass --allow-network, or download the data and give its path",
        )
    import datasets

    dataset_name, _, split = name.partition(":")
    try:
        dataset = datasets.load_dataset(dataset_name, split=split or "train")
    except Exception as error:  # datasets raises many types for a missing or private dataset
        raise DataError(f"cannot load the Hugging Face dataset '{name}': {str(error).splitlines()[0]}") from None
    yield from dataset_rows(dataset, name)


def read_records(path: str, task: str, data: DataConfig, *, named_in: str | None = None) -> ReadResult:
    """Read every record at ``path`` for ``task``, keeping each bad one as an error (nothing is dropped).

    ``data.preset`` selects a known dataset's layout, ``data.*_field`` the column names,
    ``data.format`` the format (default: by extension) and ``data.limit`` caps the rows read.
    ``data.system_prompt`` is not part of a record: it is applied at tokenization. ``named_in``: where a missing
    column is to be named, when not with the data's options and keys (see ``Fields.named_in``).

    Raises:
        DataError: when the path matches nothing, a file cannot be opened, or a preset does not fit.
    """
    if data.group_field is not None and task not in GROUP_TASKS:
        raise DataError(
            f"data.group_field (--group-field) applies to tasks sft and classify only, not {task}: its metrics are not reported by group",
            "drop it",
        )
    result = ReadResult()
    preset = get_preset(data.preset) if data.preset else None
    if preset is not None:
        if preset.task != task:
            raise DataError(f"preset '{preset.name}' is {preset.task} data, not {task}", f"use --task {preset.task}")
        files = preset.files(path)
        fields = Fields(max_label_chars=data.max_label_chars, group=data.group_field)
        rows: Iterator[tuple[str, RowOrError]] = ((str(file), item) for file in files for item in preset.rows(file))
    elif not Path(path).expanduser().exists() and not any(ch in path for ch in "*?[") and _looks_like_hub_name(path):
        files = []
        fields = Fields.from_config(data, named_in)
        rows = ((path, item) for item in _hub_rows(path))
        result.files.append(path)
    else:
        files = resolve_files(path)
        fields = Fields.from_config(data, named_in)
        folder = Path(path).expanduser()
        labels = label_folders(folder, files) if task == "classify" and data.format == "auto" and folder.is_dir() else None
        if task != "text" and labels is None:
            text_files = [f for f in files if format_by_name(f) in DOCUMENT_FORMATS]
            if text_files and data.format == "auto":
                by_folder = f", or keep each label's documents in a folder named after it ({path}/LABEL/file)" if task == "classify" else ""
                raise DataError(
                    f"{text_files[0]}: a {Path(text_files[0].name.lower().removesuffix('.gz')).suffix} file is raw text "
                    "(one document), which only the 'text' task reads",
                    f"give {task} data as JSONL, JSON, CSV, TSV or Parquet{by_folder}, or use --task text",
                )
        rows = ((str(file), item) for file in files for item in iter_rows(file, data.format, data.max_record_bytes))
        if labels is not None:
            rows = ((file, _labelled(item, labels[Path(file)], fields)) for file, item in rows)
            result.layouts.append(f"{path}: {_label_folders_note(labels)}")
    result.files.extend(str(file) for file in files)
    count = 0
    tables: dict[str, _Columns] = {}
    for file, (source, row) in rows:
        if data.limit is not None and count >= data.limit:
            result.truncated_by_limit = True
            break
        count += 1
        if isinstance(row, RecordError):
            result.errors.append(row)
            continue
        size = content_size(row, data.max_record_bytes)
        if size > data.max_record_bytes:  # rows no reader could measure in bytes (Parquet, presets, the hub)
            result.errors.append(RecordError(source, too_large(size, data.max_record_bytes)))
            continue
        table = tables.setdefault(file, _Columns())
        table.rows += 1
        table.names.update(dict.fromkeys(str(key) for key in row))
        try:
            result.records.append(row_to_record(row, source, task, fields))
            # Only sft and preference rows have layouts of others' to recognise: no second pass over a text or classify row.
            layout = _layout(named_columns(row, source, task, fields), task, fields) if task in ("sft", "preference") else None
            if layout:
                table.layouts[layout] = None
        except _MissingField as missing:
            result.errors.append(RecordError(source, str(missing)))
            table.missing.append((result.errors[-1], missing.roles))
            table.spaced.update(str(key) for key, value in row.items() if isinstance(value, str) and _SPACED.search(value))
        except ValueError as error:
            result.errors.append(RecordError(source, str(error)))
    result.errors = _files_without_a_field(result.errors, tables, task, fields)
    result.layouts += [f"{file}: {layout}" for file, table in tables.items() for layout in table.layouts]
    return result


def _labelled(item: RowOrError, label: str, fields: Fields) -> RowOrError:
    """A document's row (``{"text": ...}``) from a label folder as a classify row under the run's field names; an error
    as it is."""
    source, row = item
    if isinstance(row, RecordError):
        return item
    return source, {fields.text: row["text"], fields.label: label}


def _label_folders_note(labels: dict[Path, str], shown: int = 10) -> str:
    """``read as one folder per label: 2 labels (neg 12,500 files, pos 12,500)``: said once, as a layout is."""
    counts = sorted(Counter(labels.values()).items())
    listed = [f"{label} {count:,}" for label, count in counts[:shown]]
    listed[0] += " file" if counts[0][1] == 1 else " files"  # the unit once: "(neg 12,500 files, pos 12,500)"
    more = f", ... {len(counts) - shown} more" if len(counts) > shown else ""
    return f"read as one folder per label: {len(counts)} label{'s' if len(counts) != 1 else ''} ({', '.join(listed)}{more})"


@dataclass
class _Columns:
    """What one file's rows held: how many, their column names (in order), and those that lacked a field."""

    rows: int = 0
    names: dict[str, None] = field(default_factory=dict)
    missing: list[tuple[RecordError, tuple[str, ...]]] = field(default_factory=list)
    spaced: Counter[str] = field(default_factory=Counter)  # column -> rows whose value has two words or more (of those missing)
    layouts: dict[str, None] = field(default_factory=dict)  # how rows in a recognised layout were read (``_layout``), in order


_SPACED = re.compile(r"\S\s+\S")


# The fields a record of each task cannot do without: a file missing one is named whole, even when its rows'
# errors stopped at another (a classify row without its text is never looked at for its label).
_NEEDED_FOR = {"text": ("text",), "classify": ("text", "label"), "preference": ("chosen", "rejected"), "sft": ()}


def _files_without_a_field(errors: list[RecordError], tables: dict[str, _Columns], task: str, fields: Fields,
                           needed: tuple[str, ...] | None = None) -> list[RecordError]:
    """``errors`` with the rows of a file that has no column for a field (every row lacks it: a header that names
    other columns) as one error naming the file, its columns and the option that maps the field; a file whose rows
    differ keeps one error per row. One row's error is already one line: it is kept as it is. ``needed``: the fields a
    row cannot do without (default the task's training fields; inputs to answer need no label)."""
    whole: dict[int, RecordError | None] = {}  # id of a row's error -> the file's error (first row) or None (the rest)
    for file, table in tables.items():
        if table.rows < 2 or len(table.missing) != table.rows:
            continue
        folded = {name.strip().casefold() for name in table.names}
        named = {role for _, roles in table.missing for role in roles} | set(_NEEDED_FOR.get(task, ()) if needed is None else needed)
        roles = _ROLES_FOR.get(task, ()) + (("group",) if fields.group is not None else ())
        absent = [role for role in roles if role in named and getattr(fields, role).strip().casefold() not in folded]
        if not absent or any(not set(roles) & set(absent) for _, roles in table.missing):
            continue  # rows that lack different fields: each says its own
        error = RecordError(file, _no_column(absent, table, task, fields), rows=table.rows)
        for number, (row_error, _) in enumerate(table.missing):
            whole[id(row_error)] = None if number else error
    if not whole:
        return errors
    return [whole.get(id(error)) or error for error in errors if whole.get(id(error), error) is not None]


def _no_column(absent: list[str], table: _Columns, task: str, fields: Fields) -> str:
    """``no column 'text' (columns: review, category); name it with --text-field (data.text_field)``, with the columns
    meant when they can be told (see ``_guess_columns``)."""
    chat = "messages" in absent and len(absent) == 3  # sft: either a messages column, or a prompt and a completion column
    named = [role for role in absent if role != "messages"] if chat else absent
    names = [f"'{getattr(fields, role)}'" for role in named]
    what = f"no column {names[0]}" if len(names) == 1 else f"no columns {', '.join(names[:-1])} and {names[-1]}"
    if chat:
        what += f", nor '{fields.messages}'"
    columns = list(table.names)
    shown = (", ".join(columns[:12]) + (f", ... ({len(columns)} in all)" if len(columns) > 12 else "")) if columns else "none"
    guesses = _guess_columns(named, table, task, fields)
    options = " and ".join(" ".join(filter(None, (_OPTION_FOR[role], guesses.get(role)))) for role in named)
    keys = ", ".join(f"data.{role}_field" + (f": {guesses[role]}" if role in guesses else "") for role in named)
    meant = (", if that is the one meant" if len(guesses) == 1 else ", if those are the ones meant") if guesses else ""
    if fields.named_in is not None:  # not the data's: its --text-field would rename the test data's column too
        pairs = ", ".join(f"{role}_field: {guesses.get(role, '...')}" for role in named)
        return f"{what} (columns: {shown}); name {'it' if len(named) == 1 else 'them'} in {fields.named_in} ({pairs}){meant}"
    chat_rows = f", or the chat rows' column with {_OPTION_FOR['messages']} (data.messages_field)" if chat else ""
    return f"{what} (columns: {shown}); name {'it' if len(named) == 1 else 'them'} with {options} ({keys}){meant}{chat_rows}"


def _guess_columns(absent: list[str], table: _Columns, task: str, fields: Fields) -> dict[str, str]:
    """The column each absent field most likely is, where only one can be: the text is the one column that names no
    field and holds words (two or more in most rows; a label is one word); then, one field left and one column left,
    that column. Nothing is guessed otherwise (two wordy columns, more columns than fields)."""
    known = {getattr(fields, role).strip().casefold() for role in _ROLES_FOR.get(task, ())}
    others = [column for column in table.names if column.strip().casefold() not in known]
    guesses: dict[str, str] = {}
    wordy = [column for column in others if table.spaced[column] * 2 >= table.rows]
    if "text" in absent and len(wordy) == 1:
        guesses["text"] = wordy[0]
    elif absent == ["prompt"] and len(wordy) == 1:  # prompts to answer (`tunelab predict`): a question is words too
        guesses["prompt"] = wordy[0]
    left = [role for role in absent if role not in guesses]
    rest = [column for column in others if column not in guesses.values()]
    if len(left) == 1 and len(rest) == 1:
        guesses[left[0]] = rest[0]
    return guesses


def load_result(path: str, task: str, data: DataConfig) -> ReadResult:
    """``read_records``, failing on bad records unless ``data.skip_invalid`` (then they are listed, not kept).

    Raises:
        DataError: listing the bad records (the first 20 and a count), or when no record is usable.
    """
    result = read_records(path, task, data)
    if result.errors and not data.skip_invalid:
        raise DataError(
            f"{invalid_records(result.errors)} invalid record(s) in {path}:\n  {result.error_summary()}",
            "fix them, or drop them with --skip-invalid (data.skip_invalid: true); each dropped one is listed",
        )
    if not result.records:
        raise DataError(f"no usable {task} records in {path}")
    return result


def load_records(path: str, task: str, data: DataConfig) -> list[Record]:
    """The valid records at ``path`` (see ``load_result``).

    Raises:
        DataError: listing every bad record unless ``data.skip_invalid``, or when none is usable.
    """
    return load_result(path, task, data).records


@dataclass(frozen=True)
class Unlabeled:
    """One input with nothing to learn from it, to be answered (distill's teacher, ``tunelab predict``): an sft prompt
    (``messages``) or a classify text (``text``), and the row it came from as read (``row``, every column; a line
    of a .txt file is ``{field: line}``)."""

    source: str
    row: dict[str, Any]
    messages: tuple[Message, ...] = ()
    text: str = ""


def read_unlabeled(path: str, task: str, data: DataConfig) -> tuple[list[Unlabeled], list[RecordError]]:
    """The inputs at ``path`` and the rows without one (``file:line``), no label or answer column needed: sft prompts
    (``data.prompt_field``, or chat ``messages``, ShareGPT ``conversations`` or Alpaca ``instruction``/``input``
    without the assistant turns they end with; a .txt file, or Markdown and other markup read as .txt: one prompt per
    non-empty line), classify texts (``data.text_field``). A column matches its field as in training data.

    Raises:
        DataError: when the path matches nothing or a file cannot be opened; as ``named_columns``.
    """
    from tunelab.data.formats import decode_text, read_bytes

    fields = Fields.from_config(data)
    field_name = data.prompt_field if task == "sft" else data.text_field
    inputs: list[Unlabeled] = []
    bad: list[RecordError] = []
    tables: dict[str, _Columns] = {}  # per file: a header without the field is one error, as training data's is

    def of_value(value: str, source: str, row: dict[str, Any]) -> Unlabeled:
        if task == "sft":
            return Unlabeled(source, row, messages=({"role": "user", "content": value},))
        return Unlabeled(source, row, text=value)

    for file in resolve_files(path):
        if format_by_name(file) == "txt" and data.format in ("auto", "txt"):  # .txt, .md, .rst, ...: text as written
            for number, line in enumerate(decode_text(file, read_bytes(file)).splitlines(), 1):
                if line.strip():
                    inputs.append(of_value(line.strip(), f"{file}:{number}", {field_name: line.strip()}))
            continue
        table = tables.setdefault(str(file), _Columns())
        for source, row in iter_rows(file, data.format, data.max_record_bytes):
            if isinstance(row, RecordError):
                bad.append(row)
                continue
            table.rows += 1
            table.names.update(dict.fromkeys(str(key) for key in row))
            named = named_columns(row, source, task, fields)
            if task == "sft":
                # Chat rows (OpenAI's or ShareGPT's) and Alpaca's columns are read as training data's are.
                try:
                    messages = sft_prompt(named, fields)
                except ValueError as error:
                    bad.append(RecordError(source, str(error)))
                    continue
                if messages is not None:
                    inputs.append(Unlabeled(source, row, messages=tuple(messages)))
                    continue
            value = named.get(field_name)
            if isinstance(value, str) and value.strip():
                inputs.append(of_value(value.strip(), source, row))
            else:
                bad.append(RecordError(source, f"no '{field_name}' text"))
                table.missing.append((bad[-1], ("prompt" if task == "sft" else "text",)))
                table.spaced.update(str(key) for key, value in row.items() if isinstance(value, str) and _SPACED.search(value))
    return inputs, _files_without_a_field(bad, tables, task, fields, needed=())
