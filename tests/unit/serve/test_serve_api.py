"""The HTTP API on the tiny model: answers, batching, adapter isolation, classify, errors, auth, log."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient
from tests.unit.serve.conftest import assert_openai_error

from tunelab.data.labels import LabelMap
from tunelab.data.templates import classify_messages, render_prompt_ids
from tunelab.serve import ServeError, ServeSettings, create_app, read_requests
from tunelab.serve.engine import Engine, SamplingParams
from tunelab.serve.server import check_bind, is_loopback, parse_adapter

LOCAL = "http://127.0.0.1"  # the Host a loopback-bound server answers (its DNS-rebinding guard refuses others)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(registry, tmp_path):
    app = create_app(registry, ServeSettings(max_tokens_limit=24, max_body_bytes=20_000, log_path=tmp_path / "requests.db"))
    with TestClient(app, base_url=LOCAL) as test_client:
        yield test_client


def chat(client, model, messages=QUESTION, **fields):
    body = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0, **fields}
    return client.post("/v1/chat/completions", json=body)


def reference_answer(base_dir, run_dir, tokenizer, messages=QUESTION, max_new_tokens=8) -> str:
    """What a standalone copy of the model (with only this adapter, or none) answers greedily."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    if run_dir is not None:
        model = PeftModel.from_pretrained(model, str(run_dir / "adapter"))
    model.eval()
    ids = torch.tensor([render_prompt_ids(tokenizer, messages)])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    new = [t for t in out[0, ids.shape[1]:].tolist() if t != tokenizer.eos_token_id]
    return tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_models_lists_base_and_adapters(client, registry):
    response = client.get("/v1/models")
    assert response.status_code == 200
    cards = {card["id"]: card for card in response.json()["data"]}
    assert set(cards) == {registry.base_name, "france", "germany", "router"}
    adapters = [card for card in cards.values() if card["kind"] == "adapter"]
    assert sorted(card["id"] for card in adapters) == ["france", "germany", "router"]
    assert cards[registry.base_name]["kind"] == "base"
    assert all(card["parent"] == registry.base_name for card in adapters)
    assert client.get("/v1/models/france").json()["task"] == "sft"
    assert client.get("/v1/models/nope").status_code == 404


def test_adapters_answer_like_standalone_models_even_when_mixed(client, registry, fake_runs, tiny_model_dir, tiny_tokenizer):
    base_name = registry.base_name
    expected = {
        base_name: reference_answer(tiny_model_dir, None, tiny_tokenizer),
        "france": reference_answer(tiny_model_dir, fake_runs["france"], tiny_tokenizer),
        "germany": reference_answer(tiny_model_dir, fake_runs["germany"], tiny_tokenizer),
    }
    assert len(set(expected.values())) == 3, "the fake adapters must change the answers for this test to mean anything"
    order = ["france", base_name, "germany", "france", "germany", base_name] * 2
    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(lambda name: chat(client, name), order))
    for name, response in zip(order, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == expected[name], name
    # at most two adapters in memory: the LRU evicted and reloaded them along the way
    assert len(registry.loaded_adapters()) <= 2


def test_usage_counts_and_finish_reason(client, registry, tiny_tokenizer):
    body = chat(client, registry.base_name, max_tokens=5).json()
    assert body["object"] == "chat.completion"
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(render_prompt_ids(tiny_tokenizer, QUESTION))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    choice = body["choices"][0]
    assert (choice["finish_reason"], usage["completion_tokens"]) in {("length", 5)} | {("stop", n) for n in range(1, 6)}


def test_batched_generation_equals_one_at_a_time(registry, tiny_tokenizer):
    engine = Engine(registry, max_batch_size=8, batch_window_ms=200)
    prompts = [render_prompt_ids(tiny_tokenizer, [{"role": "user", "content": text}]) for text in ("hi", "What is two plus two?", "my card has not arrived yet, I need help")]
    params = SamplingParams(max_tokens=7)

    async def run_all(together: bool):
        if together:
            jobs = [engine.submit("france", "generate", ids, params) for ids in prompts]
            return [await engine.result(job) for job in jobs]
        return [await engine.result(engine.submit("france", "generate", ids, params)) for ids in prompts]

    try:
        batches_before = engine.batches
        together = asyncio.run(run_all(True))
        assert engine.batches == batches_before + 1 and engine.largest_batch == 3
        alone = asyncio.run(run_all(False))
    finally:
        engine.stop()
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.completion_tokens for r in together] == [r.completion_tokens for r in alone]


def test_streaming_matches_plain_answer(client, registry):
    plain = chat(client, "germany").json()["choices"][0]["message"]["content"]
    pieces, finish, usage, done = [], None, None, False
    with client.stream("POST", "/v1/chat/completions", json={"model": "germany", "messages": QUESTION, "max_tokens": 8, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            if event.get("usage"):
                usage = event["usage"]
            for choice in event["choices"]:
                pieces.append(choice["delta"].get("content") or "")
                finish = choice["finish_reason"] or finish
    assert done and finish in ("stop", "length") and usage["completion_tokens"] >= 1
    assert "".join(pieces) == plain


def test_stop_sequence_cuts_the_answer(client):
    full = chat(client, "france", max_tokens=12).json()["choices"][0]["message"]["content"]
    stop = full[3:5]
    assert stop, full
    body = chat(client, "france", max_tokens=12, stop=[stop]).json()
    assert body["choices"][0]["message"]["content"] == full[: full.find(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"


def test_completions_single_and_several_prompts(client):
    one = client.post("/v1/completions", json={"model": "france", "prompt": "The capital of", "max_tokens": 4, "temperature": 0}).json()
    assert one["object"] == "text_completion" and one["choices"][0]["finish_reason"] in ("stop", "length")
    several = client.post("/v1/completions", json={"model": "france", "prompt": ["The capital of", "Four score"], "max_tokens": 4, "temperature": 0}).json()
    assert [c["index"] for c in several["choices"]] == [0, 1]
    assert several["choices"][0]["text"] == one["choices"][0]["text"]


def test_classify_returns_label_and_probabilities(client, fake_runs, tiny_model_dir, tiny_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    texts = ["my card has not arrived", "login fails every time", "refund please"]
    body = client.post("/v1/classify", json={"model": "router", "input": texts}).json()
    label_map = LabelMap.load(fake_runs["router"] / "labels.json")
    # Plain PEFT, no tunelab: the adapter carries the trained label rows as PEFT trainable tokens on the head.
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(fake_runs["router"] / "adapter")).eval()
    for text, item in zip(texts, body["data"], strict=True):
        ids = torch.tensor([render_prompt_ids(tiny_tokenizer, classify_messages(text, "Route support requests."))])
        with torch.inference_mode():
            expected = torch.softmax(model(input_ids=ids).logits[0, -1, label_map.token_ids], dim=-1).tolist()
        got = [item["probabilities"][label] for label in label_map.labels]
        assert got == pytest.approx(expected, abs=1e-4)
        assert item["label"] == label_map.labels[max(range(3), key=expected.__getitem__)]
    # `tunelab generate --model RUN` on a classify run answers the same label, through the library, not the server.
    from typer.testing import CliRunner

    from tunelab.cli import main as cli_main

    if not cli_main.app.registered_commands:
        cli_main._register_commands()  # the CLI registers its commands lazily (start-up time)
    for text, item in zip(texts, body["data"], strict=True):
        printed = CliRunner().invoke(cli_main.app, ["generate", text, "--model", str(fake_runs["router"])])
        assert printed.exit_code == 0, printed.output
        assert printed.stdout.strip().splitlines()[-1] == item["label"]
    # ... although the server ran the prompts' shared prefix once and only each request's own tokens on top.
    classifier = client.app.state.engine.registry.classifier(client.app.state.engine.registry.get("router"))
    assert len(classifier.prefix) >= 16 and classifier._cache is not None
    # chat completions on a classify model answer with the label
    answer = chat(client, "router", messages=[{"role": "user", "content": texts[0]}]).json()
    assert answer["choices"][0]["message"]["content"] == body["data"][0]["label"]
    # and /v1/classify refuses a model that is no classifier
    refused = client.post("/v1/classify", json={"model": "france", "input": "x"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(client, registry):
    url = "/v1/chat/completions"
    base = registry.base_name
    assert_openai_error(client.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert_openai_error(client.post(url, content=b"[1, 2]", headers={"content-type": "application/json"}), 400)
    assert_openai_error(client.post(url, json={"model": base}), 400, param="messages")
    assert_openai_error(client.post(url, json={"model": base, "messages": "hi"}), 400, param="messages")
    assert_openai_error(client.post(url, json={"model": base, "messages": QUESTION, "temperature": "hot"}), 400, param="temperature")
    assert_openai_error(client.post(url, json={"model": base, "messages": [{"role": "wizard", "content": "x"}]}), 400)
    assert_openai_error(chat(client, "gpt-17"), 404, param="model", code="model_not_found")
    assert_openai_error(chat(client, base, max_tokens=25), 400, param="max_tokens")
    assert_openai_error(chat(client, base, n=2), 400, param="n")
    long_text = "Four score and seven years ago " * 150  # far above the tiny model's 1024-token context
    assert_openai_error(chat(client, base, messages=[{"role": "user", "content": long_text}]), 400, code="context_length_exceeded")
    assert_openai_error(client.post(url, content=b"x" * 30_000, headers={"content-type": "application/json"}), 413, code="request_too_large")
    assert_openai_error(client.post("/v1/completions", json={"model": base, "prompt": "hi", "max_tokens": 0}), 400, param="max_tokens")
    assert_openai_error(client.post("/v1/completions", json={"model": base, "prompt": []}), 400, param="prompt")
    assert_openai_error(client.get("/v1/nothing-here"), 404)
    assert_openai_error(client.get(url), 405)
    assert chat(client, base).status_code == 200


def test_auth_requires_the_bearer_key(registry):
    app = create_app(registry, ServeSettings(api_key="s3cret"))
    with TestClient(app, base_url=LOCAL) as client:
        assert_openai_error(client.get("/v1/models"), 401, code="invalid_api_key")
        assert_openai_error(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert_openai_error(client.get("/v1/models", headers={"Authorization": "s3cret"}), 401)
        assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_bind_rules():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    check_bind("127.0.0.1", None, insecure=False)
    check_bind("0.0.0.0", "key", insecure=False)
    check_bind("0.0.0.0", None, insecure=True)
    with pytest.raises(ServeError, match="without an API key"):
        check_bind("0.0.0.0", None, insecure=False)
    assert parse_adapter("france=runs/legal-fr") == ("france", "runs/legal-fr")
    assert parse_adapter("runs/legal-de/") == ("legal-de", "runs/legal-de/")
    with pytest.raises(ServeError):
        parse_adapter("=runs/x")


def test_request_log_records_requests_and_errors(registry, tmp_path):
    path = tmp_path / "log" / "requests.db"
    with TestClient(create_app(registry, ServeSettings(log_path=path)), base_url=LOCAL) as client:
        ok = chat(client, "france", max_tokens=4).json()
        chat(client, "nope")
    # leaving the client ran the shutdown: the log is flushed
    rows = read_requests(path)
    assert [(r["model"], r["status"]) for r in rows] == [("france", 200), ("nope", 404)]
    first = rows[0]
    assert first["output"] == ok["choices"][0]["message"]["content"]
    assert first["prompt_tokens"] == ok["usage"]["prompt_tokens"] and first["completion_tokens"] == ok["usage"]["completion_tokens"]
    assert "capital of France" in first["prompt"] and first["latency_ms"] > 0 and first["endpoint"] == "/v1/chat/completions"
    assert "does not exist" in rows[1]["error"]
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_no_log_writes_nothing(registry, tmp_path):
    with TestClient(create_app(registry, ServeSettings(log_path=None)), base_url=LOCAL) as client:
        assert chat(client, "france", max_tokens=2).status_code == 200
        assert client.app.state.request_log is None
    assert not any(tmp_path.iterdir())


def test_the_engine_sizes_its_threads_to_the_free_cores_on_its_worker_thread(registry, tiny_tokenizer, monkeypatch):
    import threading

    from tunelab import runtime

    # OpenMP's thread count belongs to the thread that sets it: the engine's worker, which runs the model.
    seen = []
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "cpu_state", lambda **kwargs: runtime.CpuState(cpus=2, physical_cores=2, others_busy=1.0))
    real = runtime.follow_free_cores
    monkeypatch.setattr(runtime, "follow_free_cores", lambda *a, **k: seen.append(threading.current_thread().name) or real(*a, **k))
    engine = Engine(registry, max_batch_size=8, batch_window_ms=0)
    prompt = render_prompt_ids(tiny_tokenizer, [{"role": "user", "content": "hi"}])

    async def twice():
        for _ in range(2):
            await engine.result(engine.submit("france", "generate", prompt, SamplingParams(max_tokens=2)))

    try:
        asyncio.run(twice())
    finally:
        engine.stop()
    assert seen == ["tunelab-serve-engine"]  # before the first batch; the next is within the minute
    assert engine._threads.last.threads == 1 and engine._threads.last.reason == "free cores"
