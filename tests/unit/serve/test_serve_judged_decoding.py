"""A request that leaves the decoding out is answered with the run's own (what its evaluation judged)."""

from __future__ import annotations

import pytest
import yaml
from fastapi.testclient import TestClient
from tests.unit.serve.conftest import write_fake_run

from tunelab.serve import ServeSettings, create_app
from tunelab.serve.adapters import load_registry
from tunelab.serve.engine import Engine

LOCAL = "http://127.0.0.1"
QUESTION = [{"role": "user", "content": "How many days of leave?"}]


@pytest.fixture
def submitted(monkeypatch):
    """The sampling parameters of every generation the engine is given."""
    seen = []
    real = Engine.submit_all  # every endpoint's jobs go through it (Engine.submit too)

    def spy(self, model, kind, prompts):
        seen.extend((model, params) for _, params in prompts)
        return real(self, model, kind, prompts)

    monkeypatch.setattr(Engine, "submit_all", spy)
    return seen


def test_decoding_left_out_is_the_runs_own_and_a_plain_model_keeps_openais(tmp_path, tiny_model_dir, tiny_tokenizer, submitted):
    # A client that sends no temperature got OpenAI's 1.0: sampled answers from a run judged on greedy ones.
    greedy = write_fake_run(tmp_path / "greedy", tiny_model_dir, tiny_tokenizer, seed=1)
    warm = write_fake_run(tmp_path / "warm", tiny_model_dir, tiny_tokenizer, seed=2)
    config = yaml.safe_load((warm / "config.yaml").read_text())
    config["eval"] = {"temperature": 0.7, "top_p": 0.9}  # a run judged on sampled answers is served with its own
    (warm / "config.yaml").write_text(yaml.safe_dump(config))
    registry = load_registry(str(tiny_model_dir), [("greedy", str(greedy)), ("warm", str(warm))], max_loaded=2)
    base = registry.base_name
    with TestClient(create_app(registry, ServeSettings()), base_url=LOCAL) as client:
        for model in ("greedy", "warm", base):
            for path, body in (("/v1/chat/completions", {"messages": QUESTION}), ("/v1/completions", {"prompt": "Leave is"})):
                response = client.post(path, json={"model": model, "max_tokens": 2, **body})
                assert response.status_code == 200, response.text
        # What a request says always wins, null being "left out" as OpenAI reads it.
        client.post("/v1/chat/completions", json={"model": "greedy", "messages": QUESTION, "max_tokens": 2, "temperature": 1.2, "top_p": 0.5})
        client.post("/v1/chat/completions", json={"model": "warm", "messages": QUESTION, "max_tokens": 2, "temperature": None})
    decoding = [(model, params.temperature, params.top_p) for model, params in submitted]
    assert decoding == [("greedy", 0.0, 1.0)] * 2 + [("warm", 0.7, 0.9)] * 2 + [(base, 1.0, 1.0)] * 2 + [
        ("greedy", 1.2, 0.5), ("warm", 0.7, 0.9)]


def test_answer_length_left_out_is_the_runs_judged_one_capped_by_the_server(tmp_path, tiny_model_dir, tiny_tokenizer, submitted):
    # A run judged on 5-token answers was served up to the server's limit (512): longer than anything judged, and
    # longer than its merged export, whose generation_config says 5. /v1/completions too: a run's default is its own,
    # as an export's is, not OpenAI's 16.
    short = write_fake_run(tmp_path / "short", tiny_model_dir, tiny_tokenizer, seed=1)
    long = write_fake_run(tmp_path / "long", tiny_model_dir, tiny_tokenizer, seed=2)
    for run, judged in ((short, 5), (long, 40)):
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["eval"] = {"max_new_tokens": judged}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    registry = load_registry(str(tiny_model_dir), [("short", str(short)), ("long", str(long))], max_loaded=2)
    base = registry.base_name
    with TestClient(create_app(registry, ServeSettings(max_tokens_limit=30)), base_url=LOCAL) as client:
        for model in ("short", "long", base):
            for path, body in (("/v1/chat/completions", {"messages": QUESTION}), ("/v1/completions", {"prompt": "Leave is"})):
                response = client.post(path, json={"model": model, **body})
                assert response.status_code == 200, response.text
        # What a request says still wins.
        client.post("/v1/chat/completions", json={"model": "short", "messages": QUESTION, "max_tokens": 2})
        client.post("/v1/chat/completions", json={"model": "short", "messages": QUESTION, "max_completion_tokens": 3})
        client.post("/v1/completions", json={"model": "short", "prompt": "Leave is", "max_tokens": 7})
    lengths = [(model, params.max_tokens) for model, params in submitted]
    # The long run's 40 is capped by the server's limit, as any default; the base keeps the limit and OpenAI's 16.
    assert lengths == [("short", 5)] * 2 + [("long", 30)] * 2 + [(base, 30), (base, 16), ("short", 2), ("short", 3), ("short", 7)]
