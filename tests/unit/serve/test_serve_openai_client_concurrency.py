"""Several ``openai`` clients at once against a real uvicorn on 127.0.0.1, and one that leaves mid-stream: each
answer is the one it gets alone (base, adapters and a classify run mixed, streamed or not), a stream whose client
went away stops being computed, and the server answers the same afterwards."""

from __future__ import annotations

import asyncio
import gc
import threading

import openai
import pytest

from tunelab.serve import BackgroundServer, ServeSettings, create_app
from tunelab.serve import engine as engine_module


@pytest.fixture(scope="module")
def server(registry):
    app = create_app(registry, ServeSettings(max_tokens_limit=900, batch_window_ms=30))
    with BackgroundServer(app, "127.0.0.1", 0) as url:
        yield url


def ask(url: str, model: str, question: str, stream: bool) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 10, "temperature": 0}
    if not stream:
        return client.chat.completions.create(**body).choices[0].message.content
    chunks = list(client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_concurrent_clients_get_the_answers_they_get_alone(server, registry):
    cases = [(model, f"question number {i}") for model in (registry.base_name, "france", "germany", "router") for i in range(3)]
    alone = {case: ask(server, *case, stream=False) for case in cases}
    answers: dict[tuple, str] = {}
    failures: list[BaseException] = []

    def work(case, stream) -> None:
        try:
            answers[(*case, stream)] = ask(server, *case, stream=stream)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            failures.append(error)

    threads = [threading.Thread(target=work, args=(case, stream)) for case in cases for stream in (False, True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert {key: value for key, value in answers.items() if value != alone[key[:2]]} == {}


class SlowNetwork:
    """ASGI wrapper: each chunk of a streamed answer takes a while to send, so a client that leaves is noticed while the
    server sends, not while it waits for the next token."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        async def slow_send(message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and message.get("more_body"):
                await asyncio.sleep(0.05)

        await self.app(scope, receive, slow_send)


@pytest.fixture
def generated(monkeypatch) -> list[int]:
    """How many tokens each of the engine's generations computed, in order."""
    counts: list[int] = []
    original = engine_module.generate.generate_ids

    def counting(model, input_ids, *args, **kwargs):
        output = original(model, input_ids, *args, **kwargs)
        counts.append(output.shape[1] - input_ids.shape[1])
        return output

    monkeypatch.setattr(engine_module.generate, "generate_ids", counting)
    return counts


@pytest.fixture
def no_cyclic_gc():
    """The cyclic garbage collector held off for the test, as it may be for seconds on a busy server."""
    gc.disable()
    yield
    gc.enable()


@pytest.mark.parametrize("network", ["fast", "slow"])
def test_a_client_that_leaves_mid_stream_stops_its_generation(registry, generated, network, no_cyclic_gc):
    """Cancelled outside the answer's generator (while sending a chunk), the generator sits in a reference cycle and was
    closed, cancelling its job, only when the cyclic garbage collector came by: until then the engine went on computing
    all 900 tokens for nobody, its one worker busy for every other request meanwhile."""
    app = create_app(registry, ServeSettings(max_tokens_limit=900))
    with BackgroundServer(SlowNetwork(app) if network == "slow" else app, "127.0.0.1", 0) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        question = [{"role": "user", "content": "hi"}]
        before = client.chat.completions.create(model="france", messages=question, max_tokens=8, temperature=0).choices[0].message.content
        stream = client.chat.completions.create(model="france", messages=question, max_tokens=900, temperature=0, stream=True)
        chunks = iter(stream)
        next(chunks)
        next(chunks)
        stream.close()  # the client goes away after two chunks of a 900-token answer
        after = client.chat.completions.create(model="france", messages=question, max_tokens=8, temperature=0).choices[0].message.content
        assert after == before
    # The abandoned generation ended long before its 900 tokens.
    assert len(generated) == 3 and generated[1] < 900, generated


def test_a_client_that_gives_up_on_a_plain_answer_stops_its_generation(registry, generated, tmp_path):
    """The ``openai`` client's timeout (then, by default, its retries): the engine computed each abandoned answer to its
    last token, for nobody, the worker busy for every other request meanwhile."""
    from tunelab.serve import read_requests

    log = tmp_path / "requests.db"
    app = create_app(registry, ServeSettings(max_tokens_limit=900, log_path=log))
    question = [{"role": "user", "content": "hi"}]
    with BackgroundServer(app, "127.0.0.1", 0) as url:
        impatient = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=0.3)
        with pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(model="france", messages=question, max_tokens=900, temperature=0)
        with pytest.raises(openai.APITimeoutError):
            impatient.completions.create(model="france", prompt=["hi", "there"], max_tokens=900, temperature=0)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        answer = client.chat.completions.create(model="france", messages=question, max_tokens=8, temperature=0)
        assert answer.choices[0].finish_reason == "length"
    assert generated and max(generated) < 900, generated  # the abandoned answers stopped long before their 900 tokens
    rows = read_requests(log)
    assert [row["status"] for row in rows] == [499, 499, 200] and rows[0]["error"], [(r["status"], r["error"]) for r in rows]
