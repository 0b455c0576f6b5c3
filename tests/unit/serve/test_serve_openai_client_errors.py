"""What the official ``openai`` client sees of requests tunelab refuses, against a real uvicorn on 127.0.0.1:
the exception class, and an error body in OpenAI's shape whose ``param`` and message name what is wrong
(never a validator's internals such as a union branch), for fields tunelab does not implement as for
mistyped ones."""

from __future__ import annotations

import httpx
import openai
import pytest

HI = [{"role": "user", "content": "hi"}]


def refused(call, exception=openai.BadRequestError) -> dict:
    """The error object of a refused call (it must raise ``exception``, with OpenAI's four keys)."""
    with pytest.raises(exception) as caught:
        call()
    error = caught.value.body
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"] and error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize(
    ("fields", "param", "named"),
    [
        # The legacy names of tool calling: ignored, the client would get text where it waits for a call.
        ({"functions": [{"name": "lookup", "parameters": {"type": "object", "properties": {}}}]}, "functions", "function"),
        # Audio output: the answer would come back without the audio asked for.
        ({"modalities": ["text", "audio"]}, "modalities", "audio"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "audio"),
    ],
    ids=lambda value: str(value),
)
def test_chat_fields_tunelab_does_not_do_are_refused_not_ignored(client, fields, param, named):
    error = refused(lambda: client.chat.completions.create(model="france", messages=HI, max_tokens=2, **fields))
    assert error["param"] == param and error["code"] == "unsupported_parameter"
    assert named in error["message"].lower()


@pytest.mark.parametrize("tool_choice", ["auto", "required", {"type": "function", "function": {"name": "lookup"}}], ids=str)
def test_a_tool_choice_without_tools_is_refused_as_openai_refuses_it(client, tool_choice):
    # tool_choice "auto" with no tools was accepted silently: OpenAI answers 400, naming the field.
    error = refused(lambda: client.chat.completions.create(model="france", messages=HI, max_tokens=2, tool_choice=tool_choice))
    assert error["param"] == "tool_choice"
    assert "'tool_choice' is only allowed when 'tools' are specified." in error["message"]


@pytest.mark.parametrize("function_call", ["auto", {"name": "lookup"}], ids=str)
def test_a_function_call_without_functions_is_refused_as_openai_refuses_it(client, function_call):
    # The deprecated twin of tool_choice: "auto" with no functions was accepted silently, a name was called unsupported.
    error = refused(lambda: client.chat.completions.create(model="france", messages=HI, max_tokens=2, function_call=function_call))
    assert error["param"] == "function_call"
    assert "'function_call' is only allowed when 'functions' are specified." in error["message"]


@pytest.mark.parametrize("stream_options", [{"include_usage": True}, {}], ids=str)
def test_stream_options_without_stream_is_refused_as_openai_refuses_it(client, stream_options):
    # Accepted silently: a client asking for a usage chunk on a plain answer was never told it gets none.
    for create, body in ((client.chat.completions.create, {"messages": HI}), (client.completions.create, {"prompt": "hi"})):
        for stream in ({}, {"stream": False}):
            error = refused(lambda: create(model="france", max_tokens=2, stream_options=stream_options, **body, **stream))  # noqa: B023
            assert error["param"] == "stream_options"
            assert error["message"] == "The 'stream_options' parameter is only allowed when 'stream' is enabled."
    # With stream: true (or null), as before.
    with client.chat.completions.create(model="france", messages=HI, max_tokens=2, stream=True, stream_options=stream_options) as stream:
        assert list(stream)
    client.chat.completions.create(model="france", messages=HI, max_tokens=2, stream_options=None)


def test_the_no_op_values_of_those_fields_are_accepted(client):
    answer = client.chat.completions.create(
        model="france", messages=HI, max_tokens=2, temperature=0, tool_choice="none", functions=None,
        function_call="none", modalities=["text"], top_logprobs=0, parallel_tool_calls=False, store=False, metadata={"team": "a"}, user="u-1",
    )
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_a_content_part_other_than_text_is_named(client):
    image = {"type": "image_url", "image_url": {"url": "http://127.0.0.1/cat.png"}}
    error = refused(lambda: client.chat.completions.create(
        model="france", max_tokens=2, messages=[{"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}]
    ))
    assert error["param"] == "messages.0.content.1.type"
    assert "'image_url'" in error["message"] and "text" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"messages": HI, "stop": 5}, "stop"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text"),
    ],
    ids=lambda value: str(value),
)
def test_a_mistyped_union_field_is_named_without_validator_internals(client, body, param):
    """``content`` is a string or a list of parts, ``stop`` a string or a list: the param was 'messages.0.content.str'."""
    error = refused(lambda: client.post("/chat/completions", body={"model": "france", "max_tokens": 2, **body}, cast_to=object))
    assert error["param"] == param
    assert ".str" not in error["message"] and "list[" not in error["message"]


def test_token_ids_outside_the_vocabulary_are_refused_by_index(client, tiny_tokenizer):
    """Token-id prompts are answered (test_serve_token_id_prompts.py); an id the tokenizer has no token for is named."""
    error = refused(lambda: client.completions.create(model="france", prompt=[1, 2, len(tiny_tokenizer)], max_tokens=2))
    assert error["param"] == "prompt.2" and "vocabulary" in error["message"]


def test_max_completion_tokens_over_the_limit_is_named_as_sent(client):
    error = refused(lambda: client.chat.completions.create(model="france", messages=HI, max_completion_tokens=17))
    assert error["param"] == "max_completion_tokens" and "max_completion_tokens" in error["message"]
    error = refused(lambda: client.chat.completions.create(model="france", messages=HI, max_tokens=17))
    assert error["param"] == "max_tokens"


def test_a_prompt_beyond_the_context_says_how_long_it_is(client, registry):
    """The base model has no run to shorten the prompt to: a prompt past the tiny model's 1024 tokens is refused."""
    long = [{"role": "user", "content": "Four score and seven years ago " * 150}]
    error = refused(lambda: client.chat.completions.create(model=registry.base_name, messages=long, max_tokens=2))
    assert error["param"] == "messages" and error["code"] == "context_length_exceeded"
    assert "1024" in error["message"] and "your messages resulted in" in error["message"]


def test_an_empty_body_is_named_as_such(server):
    response = httpx.post(f"{server}/v1/chat/completions", content=b"", headers={"content-type": "application/json"})
    error = response.json()["error"]
    assert response.status_code == 400 and "None" not in error["message"] and "empty" in error["message"]


def test_the_server_answers_after_every_refusal(client):
    assert client.chat.completions.create(model="france", messages=HI, max_tokens=2, temperature=0).choices[0].message.content is not None
