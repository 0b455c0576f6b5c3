"""The real default model behind the server, asked through the official openai client."""

from __future__ import annotations

import openai
import pytest

from tunelab.serve import BackgroundServer, ServeSettings, create_app
from tunelab.serve.adapters import ModelRegistry

pytestmark = pytest.mark.slow


def test_default_model_answers_paris_through_openai_client(default_model):
    registry = ModelRegistry(default_model, "default")
    app = create_app(registry, ServeSettings(max_tokens_limit=32))
    with BackgroundServer(app, "127.0.0.1", 0) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        chat = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=20, temperature=0
        )
        assert chat.choices[0].message.content.strip() == "The capital of France is Paris."
        assert chat.choices[0].finish_reason == "stop"
        streamed = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=20, temperature=0, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == chat.choices[0].message.content
