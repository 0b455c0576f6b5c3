"""A conversation and a stream as OpenAI's clients send and read them, against a real uvicorn on 127.0.0.1: messages
the server cannot put in the prompt faithfully are refused by name (never answered as if they were empty), every
streamed chunk has the ``usage`` key once usage is asked for, and ``GET /v1/models`` dates its models."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

HI = {"role": "user", "content": "hi"}


def refused(call) -> dict:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    error = caught.value.body
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error", error
    return error


@pytest.mark.parametrize("role", ["user", "system", "developer"])
@pytest.mark.parametrize("content", ["missing", None], ids=["missing", "null"])
def test_a_message_without_content_is_refused_not_answered_as_empty(client, role, content):
    # {"role": "user"} (a client that lost its text) was answered as if the user had sent "": OpenAI answers a 400.
    message = {"role": role} if content == "missing" else {"role": role, "content": content}
    error = refused(lambda: client.chat.completions.create(model="france", messages=[HI, message], max_tokens=2))
    assert error["param"] == "messages.1.content"
    assert "messages.1.content" in error["message"]


@pytest.mark.parametrize(
    "turn",
    [
        {"tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
        {"function_call": {"name": "lookup", "arguments": "{}"}},
    ],
    ids=["tool_calls", "function_call"],
)
def test_an_earlier_tool_call_in_the_conversation_is_refused_not_dropped(client, turn):
    # The assistant's call was dropped from the prompt: the model answered a conversation with an empty assistant turn.
    (field,) = turn
    assistant = {"role": "assistant", "content": None, **turn}
    error = refused(lambda: client.chat.completions.create(model="france", messages=[HI, assistant, HI], max_tokens=2))
    assert error["param"] == f"messages.1.{field}" and error["code"] == "unsupported_parameter"


def test_an_assistant_turn_without_content_and_no_call_is_still_answered(client):
    answer = client.chat.completions.create(model="france", messages=[HI, {"role": "assistant", "content": None}, HI], max_tokens=2)
    assert answer.choices[0].finish_reason in ("stop", "length")


def _events(response: httpx.Response) -> list[dict]:
    data = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


@pytest.mark.parametrize(("path", "body"), [("chat/completions", {"messages": [HI]}), ("completions", {"prompt": "hi"})])
def test_with_include_usage_every_chunk_has_the_usage_key(server, path, body):
    # OpenAI: "All other chunks will also include a usage field, but with a null value"; tunelab left the key out.
    request = {"model": "france", "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}, **body}
    chunks = _events(httpx.post(f"{server}/v1/{path}", json=request, timeout=60))
    *answer, last = chunks
    assert answer and all("usage" in chunk and chunk["usage"] is None for chunk in answer)
    assert last["choices"] == [] and last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]
    # Without include_usage no chunk carries it, as OpenAI streams.
    plain = _events(httpx.post(f"{server}/v1/{path}", json={**request, "stream_options": None}, timeout=60))
    assert all("usage" not in chunk for chunk in plain)


def test_models_are_dated_not_from_1970(client):
    # created was 0 for every model: a client listing models by date showed 1970-01-01.
    models = list(client.models.list())
    assert models and all(abs(model.created - time.time()) < 24 * 3600 for model in models)
    assert all(model.owned_by for model in models)
    assert client.models.retrieve("france").created == next(m.created for m in models if m.id == "france")
