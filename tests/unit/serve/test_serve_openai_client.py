"""The official ``openai`` client against a real uvicorn on 127.0.0.1 (a free port): chat, streaming and
completions from the base and from an adapter in one server; auth errors; graceful shutdown."""

from __future__ import annotations

import openai
import pytest

from tunelab.serve import BackgroundServer, ServeSettings, create_app, read_requests


def test_openai_client_end_to_end_and_graceful_shutdown(registry, tmp_path):
    log_path = tmp_path / "requests.db"
    app = create_app(registry, ServeSettings(api_key="k-123", max_tokens_limit=64, log_path=log_path))
    server = BackgroundServer(app, "127.0.0.1", 0)
    url = server.start()
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k-123", max_retries=0, timeout=60)
        assert {m.id for m in client.models.list()} == {registry.base_name, "france", "germany", "router"}
        answers = {}
        for model in (registry.base_name, "france"):
            chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0)
            assert chat.choices[0].finish_reason in ("stop", "length") and chat.usage.completion_tokens >= 1
            answers[model] = chat.choices[0].message.content
            streamed = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0, stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == answers[model]
            completion = client.completions.create(model=model, prompt="The capital of", max_tokens=4, temperature=0)
            assert completion.choices[0].text is not None and completion.usage.prompt_tokens > 0
        assert answers[registry.base_name] != answers["france"]

        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="france", messages=[{"role": "user", "content": "hi"}], max_tokens=65)
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()

        # Shut down while a streamed answer is in flight: it must still finish, then the log is flushed.
        stream = client.chat.completions.create(model="germany", messages=[{"role": "user", "content": "hello"}], max_tokens=60, temperature=0, stream=True)
        chunks = iter(stream)
        first = next(chunks)
        server.server.should_exit = True
        rest = list(chunks)
        finish = [c.choices[0].finish_reason for c in [first, *rest] if c.choices and c.choices[0].finish_reason]
        assert finish and finish[-1] in ("stop", "length")
    finally:
        server.stop()
    assert not server.thread.is_alive()
    rows = read_requests(log_path)
    assert rows[-1]["model"] == "germany" and rows[-1]["status"] == 200 and rows[-1]["stream"] == 1
    assert rows[-1]["completion_tokens"] >= 1
    assert any(row["status"] == 401 for row in rows)
