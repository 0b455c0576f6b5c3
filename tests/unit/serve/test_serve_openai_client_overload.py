"""A server with more requests waiting than it takes answers 429 with Retry-After, as OpenAI does when it is
overloaded, so the ``openai`` client backs off and asks again; the requests it took are still answered."""

from __future__ import annotations

import threading
import time

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
    release = threading.Event()
    generate = engine._generate

    def held(model, batch):  # the worker computes the first request only once the test lets it
        release.wait(60)
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
            release.set()
            first.join(60)
            second.join(60)
        assert [answer.choices[0].finish_reason in ("stop", "length") for answer in answers] == [True, True]
        # Room again: the next request is answered.
        assert client.chat.completions.create(model="france", messages=HI, max_tokens=2).choices
