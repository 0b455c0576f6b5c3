"""More than OpenAI's 4 ``stop`` strings, as vLLM and llama.cpp's server take them: lm-evaluation-harness's
``local-completions`` appends its EOS text to a task's ``until`` list, so a task with 4 sends 5. Every one of them cuts
the answer (streamed or not); past the documented cap (count or length) the request is a 400 naming ``stop``."""

from __future__ import annotations

import json

import pytest
from tests.unit.serve.conftest import assert_openai_error

from tunelab.serve.schemas import MAX_STOP_LENGTH, MAX_STOP_SEQUENCES

PROMPT = "The capital of France is"


def _completion(api, **fields):
    body = {"model": "france", "prompt": PROMPT, "max_tokens": 12, "temperature": 0, **fields}
    return api.post("/v1/completions", json=body)


def _streamed_text(api, **fields):
    body = {"model": "france", "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "stream": True, **fields}
    with api.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        lines = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [choice for line in lines[:-1] for choice in json.loads(line)["choices"]]
    return "".join(choice["text"] for choice in chunks), [c["finish_reason"] for c in chunks if c["finish_reason"]]


@pytest.mark.parametrize("count", [5, MAX_STOP_SEQUENCES])
def test_the_last_of_many_stop_strings_cuts_the_answer(api, count):
    full = _completion(api).json()["choices"][0]["text"]
    stop = full[3:5]
    assert len(stop) == 2 and full.find(stop) >= 0, full
    # Strings the answer never holds (each shares the stop's first character, so streaming holds text back for them too),
    # the one that cuts last: as lm-eval's list ends with its EOS text.
    stops = [f"{stop[0]}\u2603{i}" for i in range(count - 1)] + [stop]
    assert not any(s in full for s in stops[:-1])
    answer = _completion(api, stop=stops).json()["choices"][0]
    assert (answer["text"], answer["finish_reason"]) == (full[: full.find(stop)], "stop")
    assert _streamed_text(api, stop=stops) == (full[: full.find(stop)], ["stop"])


def test_more_stop_strings_than_the_cap_are_a_400_naming_stop(api):
    response = _completion(api, stop=[f"\u2603{i}" for i in range(MAX_STOP_SEQUENCES + 1)])
    error = assert_openai_error(response, 400, param="stop")
    assert str(MAX_STOP_SEQUENCES) in error["message"]


def test_a_stop_string_longer_than_the_cap_is_a_400_naming_stop(api):
    response = _completion(api, stop=["\n\n", "x" * (MAX_STOP_LENGTH + 1)])
    error = assert_openai_error(response, 400, param="stop")
    assert str(MAX_STOP_LENGTH) in error["message"]
    assert _completion(api, stop=["x" * MAX_STOP_LENGTH]).status_code == 200
