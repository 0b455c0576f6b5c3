"""A multi-turn chat request is served the ids its conversation was trained with: the context ``tokenize_sft`` puts
before the last answer (the run's system prompt first when the request brings none)."""

from __future__ import annotations

import pytest
import yaml
from fastapi.testclient import TestClient
from tests.unit.serve.conftest import write_fake_run

from tunelab.data.records import SFTRecord
from tunelab.data.tokenize import IGNORE_INDEX, tokenize_sft
from tunelab.models import generate
from tunelab.serve import ServeSettings, create_app
from tunelab.serve.adapters import load_registry

LOCAL = "http://127.0.0.1"  # the Host a loopback-bound server answers
SYSTEM = "Answer with the category only."
DIALOGUE = [
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "four"},
    {"role": "user", "content": "and Italy?"},
    {"role": "assistant", "content": "Rome"},
    {"role": "user", "content": "The capital of France?"},
]


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    root = tmp_path_factory.mktemp("multi-turn")
    run = write_fake_run(root / "run", tiny_model_dir, tiny_tokenizer, seed=4)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["system_prompt"] = SYSTEM
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    registry = load_registry(str(tiny_model_dir), [("dialogue", str(run))], max_loaded=1)
    return create_app(registry, ServeSettings(log_path=root / "requests.db"))


@pytest.mark.parametrize("own_system", [False, True], ids=["run-system-prompt", "request-system-prompt"])
def test_a_multi_turn_request_is_prompted_with_the_trained_context(app, tiny_tokenizer, monkeypatch, own_system):
    prompts: list[list[int]] = []
    real = generate.generate_ids

    def spy(model, input_ids, attention_mask, **options):
        prompts.extend([t for t, m in zip(row, mask, strict=True) if m] for row, mask in zip(
            input_ids.tolist(), attention_mask.tolist(), strict=True))
        return real(model, input_ids, attention_mask, **options)

    monkeypatch.setattr(generate, "generate_ids", spy)
    messages = ([{"role": "system", "content": "Be brief."}] if own_system else []) + DIALOGUE
    with TestClient(app, base_url=LOCAL) as client:
        body = {"model": "dialogue", "messages": messages, "max_tokens": 2, "temperature": 0}
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text

    record = SFTRecord((*messages, {"role": "assistant", "content": "Paris"}))
    trained = tokenize_sft(record, tiny_tokenizer, max_length=4096, system_prompt=SYSTEM)
    # The last answer's first trained token: what precedes it is the context the model learnt to answer after.
    start = max(i for i, label in enumerate(trained.labels) if label != IGNORE_INDEX)
    while trained.labels[start - 1] != IGNORE_INDEX:
        start -= 1
    assert prompts == [trained.input_ids[:start]]
