"""Typed records: what every reader produces and every later step consumes.

Each record carries ``source`` (``file:line``, for messages a person can act on) and ``id``, a stable
content hash used by the split so the same test set is used before and after training. An sft or classify
record may carry ``group`` (``data.group_field``: a country, a product, a channel), which evaluation reports
each metric by and the split stratifies by (``data.split``); it never joins the id, so a record is the same record
with or without a group column.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

# {"role": "system"|"user"|"assistant"|"tool", "content": str}; an assistant turn may add "tool_calls"
# ([{"id", "type": "function", "function": {"name", "arguments": dict}}]) and "weight" (0: not trained),
# a tool turn "tool_call_id". ``content`` is always a string ("" for a turn that only calls tools).
Message = dict[str, Any]


TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_TOOL_CALL_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)


def tool_call_text(call: dict[str, Any]) -> str:
    """One tool call as text: the ``<tool_call>`` JSON block that Hermes-style chat templates (Qwen2.5, ...) write."""
    function = call.get("function") or {}
    body = json.dumps({"name": function.get("name"), "arguments": function.get("arguments")}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def tool_calls_in(text: str) -> list[dict[str, Any]]:
    """The tool calls written in ``text`` as ``tool_call_text`` writes them, each ``{"name", "arguments"}``, in order.

    A block whose body is not a JSON object with a string ``name`` is no call (a model's malformed attempt is skipped,
    not guessed at). ``arguments`` given as a JSON string (as OpenAI's API sends them) is read as the object it holds.
    """
    calls = []
    for body in _TOOL_CALL_BLOCK.findall(text):
        try:
            call = json.loads(body)
        except json.JSONDecodeError:
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            continue
        arguments = call.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        calls.append({"name": call["name"], "arguments": arguments})
    return calls


def message_text(message: Message) -> str:
    """A turn as text: its content, then each tool call it makes (what an answer is scored and matched on)."""
    parts = [message["content"]] if message.get("content") else []
    parts += [tool_call_text(call) for call in message.get("tool_calls") or ()]
    return "\n".join(parts)


def content_id(*parts: Any) -> str:
    """A short stable id from a record's content (same content -> same id, on every platform)."""
    payload = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class TextRecord:
    """A raw document for self-supervised (next-token) training."""

    text: str
    source: str = ""
    id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", content_id("text", self.text))


@dataclass(frozen=True)
class SFTRecord:
    """A conversation; the assistant turns are what the model learns to produce.

    prompt/completion pairs become ``[user, assistant]`` (with an optional system message first).
    ``references`` holds every acceptable answer when a dataset has several (SciTLDR), for
    multi-reference scoring; empty means the completion is the only reference. ``tools`` holds the
    function schemas of a tool-calling conversation (OpenAI's ``tools``), handed to the chat template.
    """

    messages: tuple[Message, ...]
    source: str = ""
    id: str = field(default="")
    references: tuple[str, ...] = ()
    tools: tuple[dict[str, Any], ...] = ()
    group: str | None = None  # data.group_field's value; not part of the id

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(dict(m) for m in self.messages))
        object.__setattr__(self, "references", tuple(self.references))
        object.__setattr__(self, "tools", tuple(self.tools))
        if not self.id:
            # References and tools join the id only when present, so ids of older records never change.
            parts: tuple = ("sft", list(self.messages))
            if self.references:
                parts += (list(self.references),)
            if self.tools:
                parts += ({"tools": list(self.tools)},)
            object.__setattr__(self, "id", content_id(*parts))

    @property
    def prompt_messages(self) -> list[Message]:
        """Everything before the last assistant turn (what the model is given at inference)."""
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return list(self.messages[:last])

    @property
    def completion(self) -> str:
        """The last assistant turn as text (the reference answer in evaluation; tool calls as ``<tool_call>`` blocks)."""
        return message_text([m for m in self.messages if m["role"] == "assistant"][-1])


@dataclass(frozen=True)
class ClassifyRecord:
    """A text and its category."""

    text: str
    label: str
    source: str = ""
    id: str = field(default="")
    group: str | None = None  # data.group_field's value; not part of the id

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", content_id("classify", self.text, self.label))


@dataclass(frozen=True)
class PreferenceRecord:
    """A prompt (as messages) with a preferred and a rejected answer."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    source: str = ""
    id: str = field(default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", tuple(dict(m) for m in self.prompt))
        if not self.id:
            object.__setattr__(self, "id", content_id("preference", list(self.prompt), self.chosen, self.rejected))


Record = TextRecord | SFTRecord | ClassifyRecord | PreferenceRecord
