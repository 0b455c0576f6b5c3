"""Sampling extensions of other servers (vLLM, TGI, llama.cpp, transformers' generate) that clients such as
lm-evaluation-harness pass through from a task's gen_kwargs: they change the answer and tunelab does not apply them,
so any value but their no-op is a 400 naming the field, where they were accepted and silently ignored (a 200)."""

from __future__ import annotations

import pytest
from tests.unit.serve.conftest import assert_openai_error

LOCAL = "http://127.0.0.1"
PATHS = ["/v1/chat/completions", "/v1/completions"]

# A value each field changes the answer with (or, for the always refused max_new_tokens, any value).
REFUSED = [
    ("top_k", 1), ("top_k", 40), ("min_p", 0.1), ("typical_p", 0.5), ("repetition_penalty", 1.3),
    ("length_penalty", 0.5), ("min_tokens", 3), ("min_new_tokens", 3), ("max_new_tokens", 5), ("ignore_eos", True),
    ("use_beam_search", True), ("num_beams", 4), ("stop_token_ids", [2]), ("include_stop_str_in_output", True),
    ("skip_special_tokens", False), ("guided_json", {"type": "object"}), ("guided_regex", "[0-9]+"),
    ("guided_choice", ["yes", "no"]), ("guided_grammar", "root ::= \"a\""), ("truncate_prompt_tokens", 8),
    ("prompt_logprobs", 1), ("prompt_logprobs", 0),
    ("repeat_penalty", 1.1), ("no_repeat_ngram_size", 3), ("mirostat", 2), ("tfs_z", 0.9), ("bad_words", ["x"]),
    ("allowed_token_ids", [1, 2]), ("structured_outputs", {"json": {}}), ("grammar", "root ::= \"a\""),
    ("json_schema", {"type": "object"}), ("logits_processors", ["x"]),
    # Values of the wrong kind are no no-op either (a string "0" is not top_k 0).
    ("top_k", "0"), ("ignore_eos", 0),
]

NO_OPS = {
    "top_k": -1, "min_p": 0, "typical_p": 1, "repetition_penalty": 1.0, "length_penalty": 1, "min_tokens": 0,
    "min_new_tokens": 0, "ignore_eos": False, "use_beam_search": False, "num_beams": 1, "stop_token_ids": [],
    "include_stop_str_in_output": False, "skip_special_tokens": True, "prompt_logprobs": None, "guided_json": None,
    "truncate_prompt_tokens": None, "repeat_penalty": 1, "no_repeat_ngram_size": 0, "mirostat": 0, "tfs_z": 1.0,
    "bad_words": [],
}


def _body(path: str, **fields) -> dict:
    body = {"model": "france", "max_tokens": 2, **fields}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "hi"})
    return body


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("field", "value"), REFUSED)
def test_an_extension_that_would_change_the_answer_is_refused_by_name(api, path, field, value):
    error = assert_openai_error(api.post(path, json=_body(path, temperature=1.0, **{field: value})), 400,
                                param=field, code="unsupported_parameter")
    assert field in error["message"]


@pytest.mark.parametrize("path", PATHS)
def test_max_new_tokens_is_refused_with_the_name_to_use(api, path):
    error = assert_openai_error(api.post(path, json=_body(path, max_new_tokens=2)), 400, param="max_new_tokens")
    assert "max_tokens" in error["message"].replace("max_new_tokens", "")


@pytest.mark.parametrize("path", PATHS)
def test_the_no_op_values_are_accepted(api, path):
    response = api.post(path, json=_body(path, temperature=0, **NO_OPS))
    assert response.status_code == 200, response.text
    # top_k's other no-op spelling (transformers' 0), and an extension left null.
    for field, value in (("top_k", 0), ("guided_regex", None), ("min_p", 0.0)):
        response = api.post(path, json=_body(path, temperature=0, **{field: value}))
        assert response.status_code == 200, (field, response.text)


@pytest.mark.parametrize("path", PATHS)
def test_do_sample_is_accepted_only_when_it_agrees_with_the_temperature(api, path):
    """tunelab samples at a temperature above 0 and is greedy at 0 (left out: the run's own, greedy here): do_sample
    that says the same is accepted, one that says otherwise would be silently overruled and is refused."""
    for fields in ({"do_sample": False, "temperature": 0}, {"do_sample": False}, {"do_sample": True, "temperature": 0.7},
                   {"do_sample": None, "temperature": 0.7}):
        response = api.post(path, json=_body(path, **fields))
        assert response.status_code == 200, (fields, response.text)
    for fields in ({"do_sample": True, "temperature": 0}, {"do_sample": True}, {"do_sample": False, "temperature": 1.0},
                   {"do_sample": "false", "temperature": 0}):
        assert_openai_error(api.post(path, json=_body(path, **fields)), 400, param="do_sample", code="unsupported_parameter")


def test_lm_evaluation_harness_default_requests_are_accepted(api, tiny_tokenizer):
    """What lm-evaluation-harness's local-completions and local-chat-completions send by default (their
    ``_create_payload``): a generation, a scored prompt (token ids, echo), a chat generation; and a task's gen_kwargs
    that say greedy the way transformers does (``do_sample: false`` at temperature 0)."""
    ids = tiny_tokenizer("The capital of France is Paris")["input_ids"]
    generate = {"model": "france", "prompt": "Question: 2+2?\nAnswer:", "max_tokens": 4, "temperature": 0, "stop": ["\n\n", "Question:"], "seed": 1234}
    scored = {"model": "france", "prompt": [ids], "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": True}
    chat = {"model": "france", "messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 4, "temperature": 0,
            "stop": ["<|im_end|>"], "seed": 1234}
    for path, body in (("/v1/completions", generate), ("/v1/completions", scored), ("/v1/chat/completions", chat),
                       ("/v1/completions", {**generate, "do_sample": False, "temperature": 0.0}),
                       ("/v1/chat/completions", {**chat, "do_sample": False, "top_k": -1})):
        response = api.post(path, json=body)
        assert response.status_code == 200, (path, body, response.text)


def test_a_classify_run_answers_greedily_so_only_do_sample_false_agrees(api):
    """A classify run's chat answer is its most likely label, whatever the temperature: never sampled."""
    body = {"model": "router", "messages": [{"role": "user", "content": "My invoice is wrong"}], "temperature": 1.0}
    response = api.post("/v1/chat/completions", json={**body, "do_sample": False})
    assert response.status_code == 200, response.text
    assert_openai_error(api.post("/v1/chat/completions", json={**body, "do_sample": True}), 400, param="do_sample")
    assert_openai_error(api.post("/v1/chat/completions", json={**body, "top_k": 5}), 400, param="top_k")
