"""``seed`` through the official ``openai`` client against a real uvicorn on 127.0.0.1: OpenAI's reproducible
sampling. Greedy answers are the same with or without one; a sampled answer with a seed is the same each time it is
asked, whatever else the server is computing at that moment; a seed past OpenAI's 64-bit range is refused."""

from __future__ import annotations

import threading

import openai
import pytest

from tunelab.serve import BackgroundServer, ServeSettings, create_app

HI = [{"role": "user", "content": "Four score and seven"}]


@pytest.fixture(scope="module")
def client(registry):
    app = create_app(registry, ServeSettings(max_tokens_limit=32, batch_window_ms=50))
    with BackgroundServer(app, "127.0.0.1", 0) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def chat(client, **fields) -> str:
    return client.chat.completions.create(model="france", messages=HI, max_tokens=12, **fields).choices[0].message.content


def test_a_greedy_answer_takes_a_seed_and_is_unchanged(client):
    assert chat(client, temperature=0, seed=7) == chat(client, temperature=0)
    assert chat(client, seed=3) == chat(client)  # a run's own decoding: greedy (eval.temperature 0)
    assert client.chat.completions.create(model="router", messages=HI, seed=1).choices[0].message.content in ("billing", "technical", "account")


def test_a_seeded_sample_is_the_same_each_time_even_beside_other_requests(client):
    first = chat(client, temperature=1.0, seed=11)
    answers: dict[int, str] = {}

    def ask(index: int) -> None:
        # Unseeded samples and greedy answers in flight at the same time: batched with each other, never with the seeded one.
        answers[index] = chat(client, temperature=1.0, seed=11) if index == 0 else chat(client, temperature=1.0 if index % 2 else 0)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers[0] == first
    streamed = client.chat.completions.create(model="france", messages=HI, max_tokens=12, temperature=1.0, seed=11, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == first
    assert len({chat(client, temperature=1.0, seed=seed) for seed in range(4)}) > 1  # the seed picks the sample
    completion = [client.completions.create(model="france", prompt="The capital of", max_tokens=8, temperature=1.0, seed=5).choices[0].text for _ in range(2)]
    assert completion[0] == completion[1]


def test_a_seed_outside_64_bits_is_refused(client):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, temperature=1.0, seed=2**63)
    assert caught.value.body["param"] == "seed"
