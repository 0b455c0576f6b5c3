"""Token log-probabilities (chat ``logprobs``/``top_logprobs``, completions ``logprobs``/``echo``), as OpenAI shapes them:
each number checked against a plain forward pass of a standalone copy of the model over prompt + answer."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fastapi.testclient import TestClient
from tests.unit.serve.conftest import assert_openai_error

from tunelab.inference import chat_prompt, completion_prompt
from tunelab.models.generate import stop_token_ids
from tunelab.serve import ServeSettings, create_app

LOCAL = "http://127.0.0.1"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT = "The capital of France is"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference(tiny_model_dir, fake_runs, tiny_tokenizer):
    """``(model_name, prompt_ids, n) -> (answer ids, log-probabilities [positions, vocab])``: a standalone copy of the
    model answers greedily by plain forward passes, then scores prompt + answer in one forward pass."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    models: dict[str, object] = {}
    stops = set(stop_token_ids(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), tiny_tokenizer))

    def load(name):
        if name not in models:
            model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
            if name in fake_runs:
                model = PeftModel.from_pretrained(model, str(fake_runs[name] / "adapter"))
            models[name] = model.eval()
        return models[name]

    def score(name, prompt_ids, n):
        model = load(name)
        ids = list(prompt_ids)
        answer = []
        with torch.inference_mode():
            for _ in range(n):
                token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                if token in stops:
                    break
                answer.append(token)
                ids.append(token)
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
        return answer, logprobs

    return score


def _events(api, path, body):
    with api.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        lines = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def _check_top(entries, chosen_logprob, chosen_token, k, exact=True):
    """Sorted, ``k`` of them (at most, for the legacy dict: alternatives of the same text are one), and holding the
    chosen token's logprob when the chosen token is among them."""
    assert len(entries) == k if exact else 1 <= len(entries) <= k
    values = [value for _, value in entries]
    assert values == sorted(values, reverse=True)
    if values and chosen_logprob >= values[-1] - 1e-6:
        assert any(token == chosen_token and abs(value - chosen_logprob) < 1e-6 for token, value in entries)


@pytest.mark.parametrize("name", ["base", "france"])
def test_chat_logprobs_are_the_models_own(api, registry, reference, tiny_tokenizer, name):
    model = registry.base_name if name == "base" else name
    body = {"model": model, "messages": QUESTION, "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 3}
    answer = api.post("/v1/chat/completions", json=body).json()
    content = answer["choices"][0]["logprobs"]["content"]
    prompt_ids = chat_prompt(tiny_tokenizer, [dict(m) for m in QUESTION]).ids
    ids, logprobs = reference(name if name != "base" else None, prompt_ids, 8)
    assert ids, "the tiny model answered nothing: the test would check nothing"
    assert [item["token"] for item in content] == [tiny_tokenizer.decode([t]) for t in ids]
    assert "".join(item["token"] for item in content) == answer["choices"][0]["message"]["content"]
    for position, (item, token) in enumerate(zip(content, ids, strict=True)):
        expected = float(logprobs[len(prompt_ids) - 1 + position, token])
        assert abs(item["logprob"] - expected) < TOLERANCE
        assert bytes(item["bytes"]).decode("utf-8", errors="replace") == item["token"]
        tops = item["top_logprobs"]
        assert set(tops[0]) == {"token", "logprob", "bytes"}
        _check_top([(t["token"], t["logprob"]) for t in tops], item["logprob"], item["token"], 3)
        best = torch.topk(logprobs[len(prompt_ids) - 1 + position], 3)
        assert [abs(t["logprob"] - float(v)) < TOLERANCE for t, v in zip(tops, best.values, strict=True)] == [True] * 3

    # Streamed: the chunks carry the logprobs of their own tokens, the same ones in all.
    chunks = _events(api, "/v1/chat/completions", body)
    streamed = [item for chunk in chunks for choice in chunk["choices"] if choice["logprobs"] for item in choice["logprobs"]["content"]]
    assert [(i["token"], round(i["logprob"], 4)) for i in streamed] == [(i["token"], round(i["logprob"], 4)) for i in content]
    for chunk in chunks:
        for choice in chunk["choices"]:
            if choice["logprobs"] is not None:
                assert "".join(i["token"] for i in choice["logprobs"]["content"]) == choice["delta"].get("content", "")


def test_chat_logprobs_are_before_temperature(api, registry):
    body = {"model": registry.base_name, "messages": QUESTION, "max_tokens": 1, "logprobs": True, "top_logprobs": 5}
    greedy = api.post("/v1/chat/completions", json={**body, "temperature": 0}).json()
    hot = api.post("/v1/chat/completions", json={**body, "temperature": 1.7, "seed": 3}).json()
    first = [greedy["choices"][0]["logprobs"]["content"][0], hot["choices"][0]["logprobs"]["content"][0]]
    assert [round(t["logprob"], 4) for t in first[0]["top_logprobs"]] == [round(t["logprob"], 4) for t in first[1]["top_logprobs"]]


def test_without_logprobs_the_answer_says_null(api, registry):
    chat = api.post("/v1/chat/completions", json={"model": "france", "messages": QUESTION, "max_tokens": 4}).json()
    assert chat["choices"][0]["logprobs"] is None
    completion = api.post("/v1/completions", json={"model": "france", "prompt": PROMPT, "max_tokens": 4}).json()
    assert completion["choices"][0]["logprobs"] is None
    for chunk in _events(api, "/v1/completions", {"model": "france", "prompt": PROMPT, "max_tokens": 4}):
        assert all(choice["logprobs"] is None for choice in chunk["choices"])
    # logprobs: false is the same as left out; top_logprobs 0 with it too.
    chat = api.post("/v1/chat/completions", json={"model": "france", "messages": QUESTION, "max_tokens": 2, "logprobs": False}).json()
    assert chat["choices"][0]["logprobs"] is None


def test_echo_with_max_tokens_0_scores_the_prompt(api, reference, tiny_tokenizer):
    # lm-evaluation-harness's local-completions: the prompt scored, nothing generated.
    body = {"model": "france", "prompt": [PROMPT, "Two plus two is four."], "max_tokens": 0, "echo": True, "logprobs": 2, "temperature": 0}
    answer = api.post("/v1/completions", json=body)
    assert answer.status_code == 200, answer.text
    for choice, prompt in zip(answer.json()["choices"], body["prompt"], strict=True):
        ids = completion_prompt(tiny_tokenizer, prompt).ids
        _, logprobs = reference("france", ids, 0)
        result = choice["logprobs"]
        assert choice["text"] == prompt and choice["finish_reason"] == "length"
        assert result["tokens"] == [tiny_tokenizer.decode([t]) for t in ids]
        assert result["token_logprobs"][0] is None and result["top_logprobs"][0] is None
        for position in range(1, len(ids)):
            expected = float(logprobs[position - 1, ids[position]])
            assert abs(result["token_logprobs"][position] - expected) < TOLERANCE
            top = result["top_logprobs"][position]
            # A dict by token text: the 2 most likely texts (a text's most likely token stands for it).
            best = _best_texts(logprobs[position - 1], tiny_tokenizer, 2)
            assert list(top) == list(best)
            assert all(abs(top[text] - best[text]) < TOLERANCE for text in best)
        assert result["text_offset"] == [len(tiny_tokenizer.decode(ids[:i])) for i in range(len(ids))]
    usage = answer.json()["usage"]
    assert usage["completion_tokens"] == 0


def _best_texts(logprobs, tokenizer, k):
    """The ``k`` most likely token texts of one position, each with its most likely token's log-probability."""
    best: dict[str, float] = {}
    for token in torch.argsort(logprobs, descending=True).tolist():
        best.setdefault(tokenizer.decode([token]), float(logprobs[token]))
        if len(best) == k:
            break
    return best


def test_legacy_top_logprobs_hold_k_distinct_texts(api, reference, tiny_tokenizer):
    """Two of the k most likely tokens of the same text (byte tokens that are halves of characters all decode to
    U+FFFD) made the dict keyed by text hold fewer than k: the next most likely texts fill it, as OpenAI's holds k."""
    k = 20
    body = {"model": "france", "prompt": PROMPT, "max_tokens": 4, "echo": True, "logprobs": k, "temperature": 0}
    choice = api.post("/v1/completions", json=body).json()["choices"][0]
    ids = completion_prompt(tiny_tokenizer, PROMPT).ids
    _, logprobs = reference("france", ids, 4)
    tops = choice["logprobs"]["top_logprobs"]
    positions = range(1, min(len(tops), logprobs.shape[0] + 1))
    shared = [p for p in positions if len({tiny_tokenizer.decode([t]) for t in torch.topk(logprobs[p - 1], k).indices.tolist()}) < k]
    assert shared, "no position's top tokens share a text: the test would mean nothing"
    for position in positions:
        best = _best_texts(logprobs[position - 1], tiny_tokenizer, k)
        assert list(tops[position]) == list(best), position
        assert all(abs(tops[position][text] - best[text]) < TOLERANCE for text in best)
    streamed = [top for chunk in _events(api, "/v1/completions", body) for c in chunk["choices"] if c["logprobs"]
                for top in c["logprobs"]["top_logprobs"]]
    assert [list(top or ()) for top in streamed] == [list(top or ()) for top in tops]


def test_completion_logprobs_echo_and_generated(api, reference, tiny_tokenizer):
    body = {"model": "germany", "prompt": PROMPT, "max_tokens": 6, "echo": True, "logprobs": 3, "temperature": 0}
    choice = api.post("/v1/completions", json=body).json()["choices"][0]
    ids = completion_prompt(tiny_tokenizer, PROMPT).ids
    answer, logprobs = reference("germany", ids, 6)
    assert answer
    result = choice["logprobs"]
    assert choice["text"] == PROMPT + tiny_tokenizer.decode(answer)
    everything = ids + answer
    assert result["tokens"] == [tiny_tokenizer.decode([t]) for t in everything]
    assert result["token_logprobs"][0] is None
    for position in range(1, len(everything)):
        assert abs(result["token_logprobs"][position] - float(logprobs[position - 1, everything[position]])) < TOLERANCE
    assert result["text_offset"] == [len(tiny_tokenizer.decode(everything[:i])) for i in range(len(everything))]
    for position in range(len(ids), len(everything)):
        top = result["top_logprobs"][position]
        _check_top(list(top.items()), result["token_logprobs"][position], result["tokens"][position], 3, exact=False)

    # Without echo: only the generated tokens, offsets into the answer; streamed alike.
    plain = api.post("/v1/completions", json={**body, "echo": False}).json()["choices"][0]
    assert plain["logprobs"]["tokens"] == result["tokens"][len(ids):]
    assert [round(v, 4) for v in plain["logprobs"]["token_logprobs"]] == [round(v, 4) for v in result["token_logprobs"][len(ids):]]
    assert plain["logprobs"]["text_offset"][0] == 0
    chunks = _events(api, "/v1/completions", {**body, "echo": False})
    tokens = [t for chunk in chunks for c in chunk["choices"] if c["logprobs"] for t in c["logprobs"]["tokens"]]
    assert tokens == plain["logprobs"]["tokens"]


def test_classify_chat_logprobs_are_the_labels_probability(api):
    body = {"model": "router", "messages": [{"role": "user", "content": "my card was charged twice"}], "logprobs": True, "top_logprobs": 3}
    answer = api.post("/v1/chat/completions", json=body).json()
    classified = api.post("/v1/classify", json={"model": "router", "input": "my card was charged twice"}).json()["data"][0]
    (item,) = answer["choices"][0]["logprobs"]["content"]
    assert item["token"] == classified["label"] == answer["choices"][0]["message"]["content"]
    assert abs(item["logprob"] - math.log(classified["probabilities"][item["token"]])) < TOLERANCE
    assert [t["token"] for t in item["top_logprobs"]] == sorted(classified["probabilities"], key=classified["probabilities"].get, reverse=True)


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),  # OpenAI: top_logprobs needs logprobs: true
        ("/v1/completions", {"logprobs": 21}, "logprobs"),
        ("/v1/completions", {"logprobs": -1}, "logprobs"),
        ("/v1/completions", {"max_tokens": 0}, "max_tokens"),  # 0 only with echo (the prompt scored)
        ("/v1/completions", {"max_tokens": 0, "logprobs": 1}, "max_tokens"),
    ],
    ids=str,
)
def test_out_of_range_values_are_400s_naming_the_parameter(api, path, fields, param):
    body = {"model": "france", **({"messages": QUESTION} if "chat" in path else {"prompt": PROMPT}), "max_tokens": 2, **fields}
    assert_openai_error(api.post(path, json=body), 400, param=param)


def test_a_batch_mixing_rows_gives_each_its_own(registry, reference, tiny_tokenizer):
    """One left-padded batch: a row with logprobs, one without, one that only scores its prompt (max_tokens 0): each
    row's numbers are those of its prompt alone, and the row that did not ask gets none."""
    import asyncio

    from tunelab.serve.engine import Engine, SamplingParams

    engine = Engine(registry, max_batch_size=8, batch_window_ms=300)
    texts = ("hi", "What is two plus two? Two plus", PROMPT, "Four score")
    prompts = [completion_prompt(tiny_tokenizer, text).ids for text in texts]
    params = [
        SamplingParams(max_tokens=5, logprobs=2), SamplingParams(max_tokens=5), SamplingParams(max_tokens=0, logprobs=1, echo=True),
        SamplingParams(max_tokens=3, logprobs=1, echo=True),  # shorter than the longest: its prompt scored from padded rows
    ]

    async def run_all():
        jobs = [engine.submit("france", "generate", ids, p) for ids, p in zip(prompts, params, strict=True)]
        return [await engine.result(job) for job in jobs]

    try:
        results = asyncio.run(run_all())
        assert engine.largest_batch == 4
    finally:
        engine.stop()
    answer, logprobs = reference("france", prompts[0], 5)
    assert [item.token for item in results[0].logprobs] == answer
    for position, item in enumerate(results[0].logprobs):
        assert abs(item.logprob - float(logprobs[len(prompts[0]) - 1 + position, item.token])) < TOLERANCE
        assert len(item.top) == 2
    assert results[1].logprobs is None and results[1].prompt_logprobs is None and results[1].completion_tokens >= 1
    scored = results[2]
    assert scored.completion_tokens == 0 and scored.text == "" and scored.logprobs == []
    _, logprobs = reference("france", prompts[2], 0)
    assert [item.token for item in scored.prompt_logprobs] == prompts[2]
    assert scored.prompt_logprobs[0].logprob is None
    for position, item in enumerate(scored.prompt_logprobs[1:], start=1):
        assert abs(item.logprob - float(logprobs[position - 1, item.token])) < TOLERANCE
    echoed = results[3]
    answer, logprobs = reference("france", prompts[3], 3)
    assert [item.token for item in echoed.prompt_logprobs] == prompts[3] and [item.token for item in echoed.logprobs] == answer
    for position, item in enumerate([*echoed.prompt_logprobs[1:], *echoed.logprobs], start=1):
        assert abs(item.logprob - float(logprobs[position - 1, item.token])) < TOLERANCE


def test_an_echoed_prompt_is_scored_from_the_prefill_not_a_second_pass(registry, tiny_tokenizer):
    import asyncio

    from tunelab.serve.engine import Engine, SamplingParams

    calls = []
    causal_lm = registry.model.get_base_model() if hasattr(registry.model, "get_base_model") else registry.model
    handle = causal_lm.register_forward_hook(lambda module, args, output: calls.append(output.logits.shape[1]))
    engine = Engine(registry, max_batch_size=8, batch_window_ms=0)
    ids = completion_prompt(tiny_tokenizer, PROMPT).ids

    async def passes(params):
        calls.clear()
        result = await engine.result(engine.submit(registry.base_name, "generate", ids, params))
        return list(calls), result

    try:
        plain, _ = asyncio.run(passes(SamplingParams(max_tokens=3, logprobs=1)))
        echoed, result = asyncio.run(passes(SamplingParams(max_tokens=3, logprobs=1, echo=True)))
    finally:
        engine.stop()
        handle.remove()
    assert len(plain) >= 1 and len(echoed) == len(plain)  # no extra forward pass
    assert echoed[0] == len(ids) and plain[0] == 1  # the prefill kept every position's logits only when asked
    assert len(result.prompt_logprobs) == len(ids)


def test_only_a_batch_that_asks_computes_logprobs(api, monkeypatch):
    from tunelab.serve import engine

    made = []

    class Counting(engine._LogprobReader):
        def __init__(self, rows):
            made.append(len(rows))
            super().__init__(rows)

    monkeypatch.setattr(engine, "_LogprobReader", Counting)
    api.post("/v1/completions", json={"model": "france", "prompt": PROMPT, "max_tokens": 3})
    api.post("/v1/chat/completions", json={"model": "france", "messages": QUESTION, "max_tokens": 3})
    assert made == []
    api.post("/v1/completions", json={"model": "france", "prompt": PROMPT, "max_tokens": 3, "logprobs": 0})
    assert made == [1]


def test_a_stop_sequence_cuts_the_logprobs_with_the_text(api):
    body = {"model": "france", "messages": QUESTION, "max_tokens": 12, "temperature": 0, "logprobs": True}
    full = api.post("/v1/chat/completions", json=body).json()["choices"][0]
    tokens = [item["token"] for item in full["logprobs"]["content"]]
    assert len(tokens) >= 6
    stop = "".join(tokens[4:])[:2]
    cut = api.post("/v1/chat/completions", json={**body, "stop": [stop]}).json()["choices"][0]
    text = cut["message"]["content"]
    kept = [item["token"] for item in cut["logprobs"]["content"]]
    assert kept == tokens[: len(kept)] and "".join(kept).startswith(text) and len("".join(kept[:-1])) < len(text) + 1
    assert len(kept) < len(tokens)


def test_the_openai_client_reads_them(client):
    """The official client's types parse both shapes, as lm-evaluation-harness's local-completions reads them."""
    scored = client.completions.create(model="france", prompt=PROMPT, max_tokens=0, echo=True, logprobs=1, temperature=0)
    logprobs = scored.choices[0].logprobs
    assert scored.choices[0].text == PROMPT and logprobs.token_logprobs[0] is None and len(logprobs.tokens) == len(logprobs.text_offset) > 1
    chat = client.chat.completions.create(model="france", messages=QUESTION, max_tokens=3, logprobs=True, top_logprobs=2, temperature=0)
    content = chat.choices[0].logprobs.content
    assert content and all(len(item.top_logprobs) == 2 and isinstance(item.bytes, list) for item in content)


def test_a_streamed_echo_sends_the_prompt_first(api):
    body = {"model": "france", "prompt": PROMPT, "max_tokens": 3, "echo": True, "logprobs": 1, "temperature": 0}
    whole = api.post("/v1/completions", json=body).json()["choices"][0]
    chunks = [c for chunk in _events(api, "/v1/completions", body) for c in chunk["choices"]]
    assert chunks[0]["text"] == PROMPT and chunks[0]["logprobs"]["token_logprobs"][0] is None
    assert "".join(c["text"] for c in chunks) == whole["text"]
    for key in ("tokens", "text_offset"):
        assert [v for c in chunks if c["logprobs"] for v in c["logprobs"][key]] == whole["logprobs"][key]
    # Without logprobs the prompt still comes first, as text.
    plain = [c for chunk in _events(api, "/v1/completions", {**body, "logprobs": None}) for c in chunk["choices"]]
    assert plain[0]["text"] == PROMPT and all(c["logprobs"] is None for c in plain)
    assert "".join(c["text"] for c in plain) == whole["text"]


def test_classify_run_with_an_out_of_scope_label_refuses_logprobs(tmp_path, tiny_model_dir, tiny_tokenizer):
    """Its out-of-scope answer is a label of no probability of its own: a 400 naming logprobs, not a made-up number."""
    from tests.unit.serve.conftest import write_fake_run

    from tunelab.data.labels import OutOfScope
    from tunelab.serve.adapters import load_registry

    guarded = write_fake_run(tmp_path / "guarded", tiny_model_dir, tiny_tokenizer, seed=3, task="classify")
    OutOfScope("out_of_scope", 0.5).save(guarded / "out_of_scope.json")
    registry = load_registry(str(tiny_model_dir), [("guarded", str(guarded))])
    with TestClient(create_app(registry, ServeSettings(max_tokens_limit=8)), base_url=LOCAL) as guarded_client:
        body = {"model": "guarded", "messages": [{"role": "user", "content": "refund please"}]}
        error = assert_openai_error(guarded_client.post("/v1/chat/completions", json={**body, "logprobs": True}), 400, param="logprobs")
        assert "out-of-scope" in error["message"]
        assert guarded_client.post("/v1/chat/completions", json=body).status_code == 200


def test_a_token_that_is_part_of_a_character_has_its_raw_bytes(tiny_tokenizer):
    """Byte-level BPE splits "é€" into byte tokens that decode alone to U+FFFD: their bytes are the raw ones, which
    joined give the characters' UTF-8 (as OpenAI's ``bytes``), not the replacement character's."""
    from tunelab.serve.logprobs import TokenRenderer

    render = TokenRenderer(tiny_tokenizer)
    ids = tiny_tokenizer("é€", add_special_tokens=False)["input_ids"]
    pieces = [render(token) for token in ids]
    assert any(text == "\ufffd" for text, _ in pieces), "the tiny tokenizer must split a character for this to mean anything"
    assert [byte for _, raw in pieces for byte in raw] == list("é€".encode())
    assert render(tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")) == ("<|im_end|>", list(b"<|im_end|>"))


def test_an_answer_ended_by_eos_keeps_that_token_in_the_legacy_shape(tiny_tokenizer):
    """lm-evaluation-harness sends echo with max_tokens 1 and drops the last token: an EOS answer must still be one
    token there (it was dropped, and the prompt's last token with it); chat's content leaves it out, as OpenAI."""
    import asyncio

    from tunelab.serve.engine import Job, SamplingParams, _Row
    from tunelab.serve.logprobs import TokenRenderer, chat_logprobs, completion_logprobs

    eos = tiny_tokenizer.eos_token_id
    word = tiny_tokenizer("Paris", add_special_tokens=False)["input_ids"][0]
    loop = asyncio.new_event_loop()
    try:
        job = Job("m", "generate", [1, 2], SamplingParams(max_tokens=4, logprobs=1), loop, asyncio.Queue())
        row = _Row(job, tiny_tokenizer, {eos})
        row.step = (-0.5, ((word, -0.5),))
        row.add(word)
        row.step = (-0.25, ((eos, -0.25),))
        row.add(eos)
    finally:
        loop.close()
    result = row.result()
    assert result.finish_reason == "stop" and result.completion_tokens == 2
    render = TokenRenderer(tiny_tokenizer)
    legacy = completion_logprobs(result.logprobs, render, offset=3)
    text = tiny_tokenizer.decode([word])
    assert legacy["tokens"] == [text, "<|im_end|>"] and legacy["token_logprobs"] == [-0.5, -0.25]
    assert legacy["text_offset"] == [3, 3 + len(text)]
    assert [item["token"] for item in chat_logprobs(result.logprobs, render)["content"]] == [text]


def test_echo_without_logprobs_returns_the_prompt_and_answer(api):
    body = {"model": "france", "prompt": PROMPT, "max_tokens": 3, "temperature": 0}
    plain = api.post("/v1/completions", json=body).json()["choices"][0]
    echoed = api.post("/v1/completions", json={**body, "echo": True}).json()["choices"][0]
    assert echoed["text"] == PROMPT + plain["text"] and echoed["logprobs"] is None
    scored = api.post("/v1/completions", json={**body, "echo": True, "max_tokens": 0}).json()
    assert scored["choices"][0]["text"] == PROMPT and scored["usage"]["completion_tokens"] == 0
