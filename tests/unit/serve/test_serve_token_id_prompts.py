"""Token-id prompts on ``/v1/completions`` (a list of ints, or a list of such lists), as OpenAI takes them and as
lm-evaluation-harness's ``local-completions`` sends them by default (``tokenized_requests=True``): answered exactly as
the text that encodes to those ids, and refused by name (and index) when they are not ids of this model's vocabulary."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient
from tests.unit.serve.conftest import assert_openai_error

from tunelab.inference import completion_prompt
from tunelab.serve import ServeSettings, create_app

LOCAL = "http://127.0.0.1"
PROMPTS = ["The capital of France is", "Two plus two is four."]
TOLERANCE = 1e-5


def _ids(tokenizer, text):
    return completion_prompt(tokenizer, text).ids


def _post(api, body):
    answer = api.post("/v1/completions", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _same_choices(by_ids, by_text):
    """Two answers' choices alike: the same text, tokens, offsets and finish, log-probabilities to float noise."""
    assert len(by_ids["choices"]) == len(by_text["choices"])
    for mine, theirs in zip(by_ids["choices"], by_text["choices"], strict=True):
        assert (mine["index"], mine["text"], mine["finish_reason"]) == (theirs["index"], theirs["text"], theirs["finish_reason"])
        if theirs["logprobs"] is None:
            assert mine["logprobs"] is None
            continue
        assert mine["logprobs"]["tokens"] == theirs["logprobs"]["tokens"]
        assert mine["logprobs"]["text_offset"] == theirs["logprobs"]["text_offset"]
        for a, b in zip(mine["logprobs"]["token_logprobs"], theirs["logprobs"]["token_logprobs"], strict=True):
            assert (a is None and b is None) or abs(a - b) < TOLERANCE
        for a, b in zip(mine["logprobs"]["top_logprobs"], theirs["logprobs"]["top_logprobs"], strict=True):
            assert (a is None and b is None) or (list(a) == list(b) and all(abs(a[k] - b[k]) < TOLERANCE for k in a))
    assert by_ids["usage"] == by_text["usage"]


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_a_token_id_prompt_is_scored_as_the_text_it_encodes(api, tiny_tokenizer, max_tokens):
    """The loglikelihood request (echo + logprobs; max_tokens 1 is what lm-eval sends, 0 scores the prompt alone)."""
    ids = _ids(tiny_tokenizer, PROMPTS[0])
    body = {"model": "france", "max_tokens": max_tokens, "echo": True, "logprobs": 2, "temperature": 0, "seed": 1234}
    by_text = _post(api, {**body, "prompt": PROMPTS[0]})
    # One prompt as a list of ints, and as a batch of one (what lm-eval sends): both the text's answer.
    _same_choices(_post(api, {**body, "prompt": ids}), by_text)
    _same_choices(_post(api, {**body, "prompt": [ids]}), by_text)
    assert by_text["choices"][0]["text"].startswith(PROMPTS[0])


def test_a_batch_of_token_id_prompts_is_answered_as_the_batch_of_texts(api, tiny_tokenizer):
    body = {"model": "germany", "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0}
    by_ids = _post(api, {**body, "prompt": [_ids(tiny_tokenizer, text) for text in PROMPTS]})
    _same_choices(by_ids, _post(api, {**body, "prompt": PROMPTS}))
    assert [choice["text"] for choice in by_ids["choices"]] == PROMPTS  # the echo: the decoded ids


def test_a_token_id_prompt_generates_as_its_text(api, tiny_tokenizer):
    body = {"model": "france", "max_tokens": 5, "temperature": 0, "logprobs": 0}
    by_ids = _post(api, {**body, "prompt": [_ids(tiny_tokenizer, text) for text in PROMPTS]})
    _same_choices(by_ids, _post(api, {**body, "prompt": PROMPTS}))
    stream = api.post("/v1/completions", json={**body, "prompt": _ids(tiny_tokenizer, PROMPTS[0]), "stream": True, "logprobs": None})
    assert stream.status_code == 200, stream.text
    events = [json.loads(line[len("data: "):]) for line in stream.text.splitlines() if line.startswith("data: {")]
    assert "".join(choice["text"] for event in events for choice in event["choices"]) == by_ids["choices"][0]["text"]


def test_lm_evaluation_harness_loglikelihood_request(api, tiny_model_dir, tiny_tokenizer):
    """lm-eval's ``LocalCompletionsAPI._create_payload`` (generate=False) and ``parse_logprobs``, replayed: the
    continuation's log-likelihood (``token_logprobs[ctxlen:-1]``) is the model's own for the ids sent, no BOS added."""
    from transformers import AutoModelForCausalLM

    context, continuation = tiny_tokenizer("Paris is the capital of")["input_ids"], tiny_tokenizer(" France")["input_ids"]
    tokens = context + continuation
    payload = {"model": registry_base(api), "prompt": [tokens], "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": True}
    out = _post(api, payload)
    (choice,) = sorted(out["choices"], key=lambda c: c["index"])
    ctxlen = len(context)
    token_logprobs = choice["logprobs"]["token_logprobs"][ctxlen:-1]
    top_logprobs = choice["logprobs"]["top_logprobs"][ctxlen:-1]
    assert len(token_logprobs) == len(continuation)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([tokens])).logits[0].float(), dim=-1)
    expected = [float(logprobs[position - 1, tokens[position]]) for position in range(ctxlen, len(tokens))]
    assert all(abs(a - b) < 1e-4 for a, b in zip(token_logprobs, expected, strict=True))
    greedy = all(value == max(top.values()) for value, top in zip(token_logprobs, top_logprobs, strict=True))
    assert greedy == all(int(logprobs[p - 1].argmax()) == tokens[p] for p in range(ctxlen, len(tokens)))


def test_a_prompt_that_starts_with_the_pad_token_is_scored_whole_in_a_padded_batch(api, tiny_model_dir, tiny_tokenizer):
    """lm-eval's rolling loglikelihood sends a prefix token (BOS, else EOS: often the server's pad id) then the text; in a
    batch with a longer prompt the row is left-padded with that same id, and its own first token still counts."""
    from transformers import AutoModelForCausalLM

    pad = api.app.state.engine.pad_id
    short = [pad, *tiny_tokenizer("Paris is nice")["input_ids"]]
    long = [pad, *tiny_tokenizer("Two plus two is four, and four plus four is eight.")["input_ids"]]
    payload = {"model": registry_base(api), "prompt": [short, long], "temperature": 0, "max_tokens": 1, "logprobs": 1, "echo": True}
    choices = sorted(_post(api, payload)["choices"], key=lambda c: c["index"])
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    for tokens, choice in zip([short, long], choices, strict=True):
        with torch.inference_mode():
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([tokens])).logits[0].float(), dim=-1)
        served = choice["logprobs"]["token_logprobs"][1:-1]  # lm-eval's [ctxlen:-1], ctxlen 1: the prefix token predicts
        expected = [float(logprobs[position - 1, tokens[position]]) for position in range(1, len(tokens))]
        assert all(abs(a - b) < 1e-4 for a, b in zip(served, expected, strict=True))


def registry_base(api):
    return api.app.state.service.registry.base_name


def test_token_ids_are_used_as_given(api, tiny_tokenizer):
    """No template, no special tokens added: a prompt of special-token ids is scored as those tokens."""
    special = [tiny_tokenizer.convert_tokens_to_ids("<|im_start|>"), *_ids(tiny_tokenizer, "user"), tiny_tokenizer.eos_token_id]
    out = _post(api, {"model": "france", "prompt": special, "max_tokens": 0, "echo": True, "logprobs": 0})
    assert out["choices"][0]["logprobs"]["tokens"] == [tiny_tokenizer.decode([t]) for t in special]
    assert out["usage"]["prompt_tokens"] == len(special)


def test_a_token_id_prompt_beyond_the_context_is_refused_as_text_is(api, tiny_tokenizer):
    context = api.app.state.service.registry.context_length
    one = _ids(tiny_tokenizer, "a")
    error = assert_openai_error(api.post("/v1/completions", json={"model": "france", "prompt": one * (context + 1), "max_tokens": 1}),
                                400, param="prompt", code="context_length_exceeded")
    assert str(context) in error["message"]
    # Exactly the context with max_tokens 0 (scored only) fits; one answer token more does not.
    assert api.post("/v1/completions", json={"model": "france", "prompt": one * context, "max_tokens": 0, "echo": True}).status_code == 200
    assert_openai_error(api.post("/v1/completions", json={"model": "france", "prompt": [one, one * context], "max_tokens": 1}),
                        400, param="prompt", code="context_length_exceeded")


@pytest.mark.parametrize(
    ("prompt", "param"),
    [
        ([-1], "prompt.0"),
        ([5, -3], "prompt.1"),
        ([5, "a"], "prompt.1"),
        (["a", 5], "prompt.1"),
        ([5, 1.5], "prompt.1"),
        ([True, 5], "prompt.0"),
        ([5, [6]], "prompt.1"),
        ([[5], 6], "prompt.1"),
        ([[5], []], "prompt.1"),
        ([[5, 6], [7, -1]], "prompt.1.1"),
        ([[5, 6], [7, "x"]], "prompt.1.1"),
        ([[5, 6], [[7]]], "prompt.1.0"),
        ([], "prompt"),
        ([[]], "prompt.0"),
        ([None], "prompt.0"),
    ],
    ids=str,
)
def test_malformed_token_id_prompts_are_400s_naming_the_index(api, prompt, param):
    error = assert_openai_error(api.post("/v1/completions", json={"model": "france", "prompt": prompt, "max_tokens": 1}), 400, param=param)
    assert "prompt" in error["message"] and "list[" not in error["message"]


@pytest.mark.parametrize(("shape", "param"), [("single", "prompt.1"), ("batch", "prompt.1.0")])
def test_ids_outside_the_vocabulary_are_400s_naming_the_index(api, tiny_tokenizer, shape, param):
    outside = len(tiny_tokenizer)
    prompt = [5, outside] if shape == "single" else [[5], [outside, 6]]
    error = assert_openai_error(api.post("/v1/completions", json={"model": "france", "prompt": prompt, "max_tokens": 1}), 400, param=param)
    assert str(outside) in error["message"] and "vocabulary" in error["message"]
    assert api.post("/v1/completions", json={"model": "france", "prompt": [5, outside - 1], "max_tokens": 1}).status_code == 200


def test_the_openai_client_sends_token_ids(client, tiny_tokenizer):
    ids = _ids(tiny_tokenizer, PROMPTS[0])
    by_ids = client.completions.create(model="france", prompt=ids, max_tokens=0, echo=True, logprobs=1)
    by_text = client.completions.create(model="france", prompt=PROMPTS[0], max_tokens=0, echo=True, logprobs=1)
    assert by_ids.choices[0].text == by_text.choices[0].text == PROMPTS[0]
    assert by_ids.choices[0].logprobs.tokens == by_text.choices[0].logprobs.tokens


def test_the_request_log_holds_the_prompts_text_one_input_per_prompt(registry, tmp_path, tiny_tokenizer):
    """The log's prompt is text (monitoring and feedback read its inputs): a token-id prompt is logged as the text its ids
    decode to, one input per prompt, where '[5, 6, 7]' read as three inputs '5', '6', '7'."""
    from tunelab.serve import read_requests

    log_path = tmp_path / "requests.db"
    app = create_app(registry, ServeSettings(max_tokens_limit=16, log_path=log_path))
    with TestClient(app, base_url=LOCAL) as api:
        single = _post(api, {"model": "france", "prompt": _ids(tiny_tokenizer, PROMPTS[0]), "max_tokens": 2})
        batch = _post(api, {"model": "france", "prompt": [_ids(tiny_tokenizer, text) for text in PROMPTS], "max_tokens": 2})
        # One prompt: feedback about its second input is refused (it has one).
        assert_openai_error(api.post("/v1/feedback", json={"id": single["id"], "index": 1, "rating": 1}), 400, param="index")
        assert api.post("/v1/feedback", json={"id": batch["id"], "index": 1, "rating": 1}).status_code == 200
    rows = {row["response_id"]: row for row in read_requests(log_path)}
    assert rows[single["id"]]["prompt"] == json.dumps(PROMPTS[0])
    assert json.loads(rows[batch["id"]]["prompt"]) == PROMPTS


def test_an_echoed_text_prompt_longer_than_the_runs_max_length_is_scored_whole(api, registry, tiny_tokenizer):
    """lm-eval with ``tokenized_requests=False`` sends text and reads ``token_logprobs[ctxlen:-1]`` by its own count: a
    text prompt cut to the run's max_length (512 here, the model's context 1024) shifted every position it read. An
    echoed prompt is scored whole, as its token ids are; without echo the run still reads the end that fits it."""
    max_length = registry.get("france").max_length
    text = PROMPTS[1]
    while len(_ids(tiny_tokenizer, text)) < max_length + 40:
        text += " " + PROMPTS[1]
    ids = _ids(tiny_tokenizer, text)
    assert max_length < len(ids) < registry.context_length
    body = {"model": "france", "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}
    by_text = _post(api, {**body, "prompt": text})
    assert by_text["choices"][0]["text"].startswith(text) and by_text["usage"]["prompt_tokens"] == len(ids)
    _same_choices(_post(api, {**body, "prompt": ids}), by_text)
    plain = _post(api, {**body, "echo": False, "logprobs": None, "prompt": text})
    assert plain["usage"]["prompt_tokens"] == max_length
