"""What a hostile web page or a careless client can do to `tunelab serve`: DNS rebinding (the Host guard),
server paths in errors, requests OpenAI would refuse, the key's scheme, who can read the request log,
and a damaged adapter."""

from __future__ import annotations

import os
import stat

import httpx
import pytest
from fastapi.testclient import TestClient
from tests.unit.serve.conftest import assert_openai_error

from tunelab.errors import ModelError
from tunelab.serve import BackgroundServer, ServeSettings, create_app
from tunelab.serve.adapters import load_registry

LOCAL = "http://127.0.0.1"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_a_page_that_rebinds_its_name_to_loopback_gets_nothing(registry, tmp_path):
    """DNS rebinding: the browser sends the attacker's name as Host; a loopback server without a key refused nothing."""
    log_path = tmp_path / "requests.db"
    app = create_app(registry, ServeSettings(log_path=log_path))
    foreign = {"Host": "rebound.attacker.example:8000"}
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert_openai_error(client.get("/v1/models", headers=foreign), 421, code="host_not_allowed")
        chat = {"model": "france", "messages": QUESTION, "max_tokens": 2}
        assert_openai_error(client.post("/v1/chat/completions", json=chat, headers=foreign), 421)
        assert_openai_error(client.post("/v1/feedback", json={"id": "chatcmpl-x", "thumbs": "down"}, headers=foreign), 421)
        # The machine's own names still work (the test client's own Host is 127.0.0.1:PORT).
        assert client.get("/v1/models").status_code == 200
        assert client.get("/v1/models", headers={"Host": "localhost"}).status_code == 200
    # Bound beyond loopback (with a key or --insecure), the name is the user's choice.
    from tunelab.serve.settings import host_allowed

    assert host_allowed("models.example.com", "0.0.0.0") and not host_allowed("models.example.com", "127.0.0.1")
    assert host_allowed("[::1]:8000", "::1") and not host_allowed("evil", "localhost")


def test_an_unknown_feedback_id_does_not_show_the_servers_paths(registry, tmp_path):
    log_path = tmp_path / "secret-folder" / "requests.db"
    with TestClient(create_app(registry, ServeSettings(log_path=log_path)), base_url=LOCAL) as client:
        response = client.post("/v1/feedback", json={"id": "clf-nope", "label": "billing"})
        error = assert_openai_error(response, 404, param="id", code="response_not_found")
        assert "clf-nope" in error["message"]
        assert "secret-folder" not in response.text and "requests.db" not in response.text and str(tmp_path) not in response.text


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_completion_tokens": "5"}, "max_completion_tokens"),
        ({"temperature": "0"}, "temperature"),
        ({"top_p": "1"}, "top_p"),
        ({"stream": "true"}, "stream"),
        ({"n": "1"}, "n"),
        ({"seed": "7"}, "seed"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
    ],
    ids=lambda value: str(value),
)
def test_chat_requests_openai_refuses_are_refused_in_its_shape(registry, fields, param):
    with TestClient(create_app(registry, ServeSettings()), base_url=LOCAL) as client:
        body = {"model": "france", "messages": QUESTION, "max_tokens": 2, "temperature": 0, **fields}
        assert_openai_error(client.post("/v1/chat/completions", json=body), 400, param=param)


def test_completions_refuse_strings_for_numbers(registry):
    with TestClient(create_app(registry, ServeSettings()), base_url=LOCAL) as client:
        base = {"model": "france", "prompt": "hi", "max_tokens": 2, "temperature": 0}
        assert_openai_error(client.post("/v1/completions", json={**base, "max_tokens": "5"}), 400, param="max_tokens")
        assert_openai_error(client.post("/v1/completions", json={**base, "seed": "1"}), 400, param="seed")
        assert_openai_error(client.post("/v1/completions", json={**base, "echo": "yes"}), 400, param="echo")
        assert client.post("/v1/completions", json=base).status_code == 200
        # What is supported stays accepted: the plain text format, a float given as an integer.
        chat = {"model": "france", "messages": QUESTION, "max_tokens": 2, "temperature": 1, "response_format": {"type": "text"}}
        assert client.post("/v1/chat/completions", json=chat).status_code == 200


def test_the_bearer_scheme_is_case_insensitive(registry):
    with TestClient(create_app(registry, ServeSettings(api_key="s3cret")), base_url=LOCAL) as client:
        for header in ("Bearer s3cret", "bearer s3cret", "BEARER s3cret", "Bearer  s3cret "):
            assert client.get("/v1/models", headers={"Authorization": header}).status_code == 200, header
        for header in ("Bearers3cret", "Basic s3cret", "bearer wrong", "s3cret"):
            assert_openai_error(client.get("/v1/models", headers={"Authorization": header}), 401, code="invalid_api_key")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_request_log_and_the_registry_are_readable_by_their_owner_only(registry, tmp_path):
    """Every prompt and answer: they were created 0644 (world-readable) while run files were 0600."""
    from tunelab.registry.store import Registry

    previous = os.umask(0o022)  # the usual default, under which SQLite creates 0644
    try:
        log_path = tmp_path / "requests.db"
        with TestClient(create_app(registry, ServeSettings(log_path=log_path)), base_url=LOCAL) as client:
            assert client.post("/v1/chat/completions", json={"model": "france", "messages": QUESTION, "max_tokens": 2}).status_code == 200
        store = Registry(tmp_path / "runs" / "registry.db")
        store.create_run(name="r", task="sft", status="created")
    finally:
        os.umask(previous)
    for path in (log_path, tmp_path / "runs" / "registry.db"):
        assert _mode(path) == 0o600, (path, oct(_mode(path)))
        for companion in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if companion.exists():
                assert _mode(companion) == 0o600, companion


def test_a_damaged_adapter_stops_the_server_at_start_not_every_request(fake_runs, tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(fake_runs["france"], broken)
    weights = broken / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    with pytest.raises(ModelError, match="adapter_model.safetensors is damaged"):
        load_registry(str(tiny_model_dir), [("broken", str(broken))])


def test_a_model_name_json_allows_but_utf8_does_not_gets_a_404_not_a_500(registry):
    """A lone surrogate ("\\ud800") is valid JSON; echoed in the error message, it made the JSON response itself fail (500)."""
    with TestClient(create_app(registry, ServeSettings()), base_url=LOCAL, raise_server_exceptions=False) as client:
        for path, body in (
            ("/v1/chat/completions", '{"model": "gpt\\ud800", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'),
            ("/v1/completions", '{"model": "gpt\\ud800", "prompt": "hi", "max_tokens": 2}'),
            ("/v1/classify", '{"model": "gpt\\ud800", "input": "hi"}'),
        ):
            response = client.post(path, content=body.encode(), headers={"content-type": "application/json"})
            error = assert_openai_error(response, 404, param="model", code="model_not_found")
            assert "gpt" in error["message"], path


def test_null_for_an_optional_openai_field_means_its_default(registry):
    """OpenAI takes null for temperature, top_p, n, stream and echo (the official client sends it for ``temperature=None``):
    they were refused with a 400 here."""
    with TestClient(create_app(registry, ServeSettings()), base_url=LOCAL) as client:
        chat = {"model": "france", "messages": QUESTION, "max_tokens": 3, "temperature": 0}
        plain = client.post("/v1/chat/completions", json=chat)
        assert plain.status_code == 200, plain.text
        nulls = client.post("/v1/chat/completions", json={**chat, "top_p": None, "n": None, "stream": None})
        assert nulls.status_code == 200, nulls.text
        assert nulls.json()["choices"][0]["message"] == plain.json()["choices"][0]["message"]
        assert client.post("/v1/chat/completions", json={**chat, "temperature": None}).status_code == 200
        completion = {"model": "france", "prompt": "hi", "max_tokens": 3}
        for field in ("temperature", "top_p", "n", "stream", "echo"):
            response = client.post("/v1/completions", json={**completion, field: None})
            assert response.status_code == 200, (field, response.text)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_penalties_and_logit_bias_are_refused_not_silently_ignored(registry, path):
    """They change the answer and tunelab does not apply them: they were accepted and ignored (a 200 with an unpenalised answer)."""
    body = {"model": "france", "max_tokens": 2, "temperature": 0}
    body.update({"messages": QUESTION} if "chat" in path else {"prompt": "hi"})
    with TestClient(create_app(registry, ServeSettings()), base_url=LOCAL) as client:
        for field, value in (("frequency_penalty", 1.5), ("presence_penalty", -0.5), ("logit_bias", {"5": 100})):
            assert_openai_error(client.post(path, json={**body, field: value}), 400, param=field, code="unsupported_parameter")
        # Their no-op values (what some clients always send) stay accepted.
        neutral = {**body, "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}}
        assert client.post(path, json=neutral).status_code == 200
        assert client.post(path, json={**body, "frequency_penalty": None, "logit_bias": None}).status_code == 200
