"""Fixtures for the remote tests: `tunelab serve` itself on 127.0.0.1 (a free port) over the tiny model.

Every test here talks HTTP to a real server on the loopback through the official ``openai`` client;
nothing leaves the machine. The request cache is per test (TUNELAB_REMOTE_CACHE).
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tunelab.cli.main import _register_commands, app
from tunelab.config import EndpointConfig


@pytest.fixture(scope="module")
def cli():
    """The CLI with every command registered (`tunelab eval`, `review judge`), driven in-process."""
    if not any(c.name == "eval" for c in app.registered_commands):
        _register_commands()
    return CliRunner()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test its own request cache (the model cache stays shared: the default model is converted once)."""
    monkeypatch.setenv("TUNELAB_REMOTE_CACHE", str(tmp_path / "requests.db"))
    return tmp_path / "requests.db"


@pytest.fixture(scope="session")
def talkative_model_dir(tmp_path_factory, tiny_tokenizer, tiny_model_dir):
    """The tiny model with large random weights: it answers with text (the default tiny one answers only
    whitespace), so comparing answers across the HTTP path means something."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("talkative-model")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


class ChatCounter:
    """ASGI wrapper counting the chat requests that reach the server (counted on arrival, so exact
    once the client has its answer; the request log is written later, by a background thread)."""

    def __init__(self, app) -> None:
        self.app = app
        self.chat = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            self.chat += 1
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def served(talkative_model_dir, tmp_path_factory):
    """`tunelab serve --model TALKATIVE` running in this process: (url, served model name, chat request counter)."""
    from tunelab.serve import BackgroundServer, ServeSettings, create_app
    from tunelab.serve.adapters import load_registry

    log = tmp_path_factory.mktemp("serve") / "requests.db"
    registry = load_registry(str(talkative_model_dir), [], max_loaded=1)
    app = create_app(registry, ServeSettings(max_tokens_limit=64, log_path=log, max_batch_size=8))
    counter = ChatCounter(app)
    server = BackgroundServer(counter, "127.0.0.1", 0)
    url = server.start()
    try:
        yield f"{url}/v1", registry.base_name, counter
    finally:
        server.stop()


@pytest.fixture
def endpoint(served) -> EndpointConfig:
    url, name, _ = served
    return EndpointConfig(base_url=url, name=name, concurrency=4, timeout_s=60, max_retries=2)


@pytest.fixture
def cloud_provider(monkeypatch):
    """The loopback fake provider for fine-tuning jobs, polled fast; it lists a job once it exists (unless its list_lag
    says otherwise), so a resume need not wait a minute for it."""
    from fake_provider import FakeProvider

    monkeypatch.setenv("TUNELAB_CLOUD_POLL_S", "0.01")
    monkeypatch.setattr("tunelab.remote.finetune.LIST_LAG_S", 2.0)
    fake = FakeProvider()
    fake.url = fake.start()
    yield fake
    fake.stop()
