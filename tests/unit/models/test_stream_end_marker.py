"""An end-of-turn marker the tokenizer does not flag special (Phi-3's ``<|end|>`` in some tokenizer files, a model's
configured EOS id) ends an answer without being shown: ``tunelab generate``'s stream ends like evaluation's answer
(``generate_batch``) and the served stream, not with the marker's text.
"""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from tests.conftest import build_tiny_model, build_tiny_tokenizer

from tunelab.data.templates import render_prompt_ids

MARKER = "<|end|>"  # one of generate.END_OF_TURN_TOKENS
USER = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def marked():
    """(model, tokenizer): the marker an added token that is not special, and greedy answers start with it."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens([MARKER])  # added, not special: skip_special_tokens keeps its text
    marker = tokenizer.convert_tokens_to_ids(MARKER)
    assert marker not in tokenizer.all_special_ids
    model = build_tiny_model(len(tokenizer))
    with torch.no_grad():
        model.lm_head.weight[marker] += 50 * model.model.norm.weight.sign()
    return model, tokenizer


def test_generate_streaming_does_not_show_a_non_special_end_marker(marked):
    from tunelab.models.generate import generate_batch, stop_token_ids, stream_generate

    model, tokenizer = marked
    assert tokenizer.convert_tokens_to_ids(MARKER) in stop_token_ids(model, tokenizer)
    prompt = render_prompt_ids(tokenizer, USER)
    assert generate_batch(model, tokenizer, [prompt], max_new_tokens=6) == [""]
    assert "".join(stream_generate(model, tokenizer, prompt, max_new_tokens=6)) == ""


def test_the_served_stream_does_not_show_it_either(marked, tmp_path):
    from tunelab.serve import ServeSettings, create_app
    from tunelab.serve.adapters import load_registry

    model, tokenizer = marked
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    registry = load_registry(str(tmp_path / "model"))
    name = registry.names()[-1]
    body = {"model": name, "messages": USER, "max_tokens": 6, "temperature": 0}
    with TestClient(create_app(registry, ServeSettings()), base_url="http://127.0.0.1") as client:
        answer = client.post("/v1/chat/completions", json=body).json()["choices"][0]
        assert (answer["message"]["content"], answer["finish_reason"]) == ("", "stop")
        streamed = client.post("/v1/chat/completions", json={**body, "stream": True}).text
    assert MARKER not in streamed and '"finish_reason": "stop"' in streamed
