"""A server with more requests waiting than it takes answers 429 with Retry-After, as OpenAI does when it is
overloaded, so the ``openai`` client backs off and asks again; the requests it took are still answered."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tunelab.serve import BackgroundServer, ServeSettings, create_app

HI = [{"role": "user", "content": "hi"}]


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def test_more_waiting_requests_than_the_server_takes_get_a_429_with_retry_after(registry):
    app = create_app(registry, ServeSettings(max_waiting_requests=1, max_batch_size=1, batch_window_ms=0))
    engine = app.state.engine
    gate = [threading.Event()]
    generate = engine._generate

    def held(model, batch):  # the worker computes a batch only once the test lets it
        gate[0].wait(60)
        generate(model, batch)

    engine._generate = held
    with BackgroundServer(app, "127.0.0.1", 0) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        answers: list = []

        def ask() -> None:
            answers.append(client.chat.completions.create(model="france", messages=HI, max_tokens=2, temperature=0))

        first = threading.Thread(target=ask)
        first.start()
        _wait_for(lambda: engine.batches == 1, "the first request is being computed")
        second = threading.Thread(target=ask)
        second.start()
        _wait_for(lambda: engine.waiting == 1, "the second request waits")
        try:
            for call in (
                lambda: client.chat.completions.create(model="france", messages=HI, max_tokens=2),
                lambda: client.chat.completions.create(model="france", messages=HI, max_tokens=2, stream=True),
                lambda: client.completions.create(model="france", prompt="hi", max_tokens=2),
                lambda: client.post("/classify", body={"model": "router", "input": "my bill"}, cast_to=object),
            ):
                with pytest.raises(openai.RateLimitError) as caught:
                    call()
                assert set(caught.value.body) == {"message", "type", "param", "code"}
                assert caught.value.code == "server_overloaded"
                assert int(caught.value.response.headers["retry-after"]) >= 1
        finally:
            gate[0].set()
            first.join(60)
            second.join(60)
        assert [answer.choices[0].finish_reason in ("stop", "length") for answer in answers] == [True, True]

        # A waiting request whose client left (its timeout: the openai client then asks again) takes no room.
        gate[0] = threading.Event()
        computed = engine.batches
        first = threading.Thread(target=ask)
        first.start()
        _wait_for(lambda: engine.batches == computed + 1, "a request is being computed")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/chat/completions", json={"model": "france", "messages": HI, "max_tokens": 2}, timeout=httpx.Timeout(60, read=2))

        def left() -> bool:
            with engine._queue.mutex:
                queued = list(engine._queue.queue)
            return len(queued) == 1 and queued[0].cancelled.is_set()

        _wait_for(left, "the request whose client left is still queued, cancelled")
        second = threading.Thread(target=ask)
        second.start()
        _wait_for(lambda: engine.waiting == 1, "the retried request waits")
        gate[0].set()
        first.join(60)
        second.join(60)
        assert len(answers) == 4
