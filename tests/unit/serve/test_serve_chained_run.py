"""A run trained on top of another LoRA run (DPO after SFT), served with ``--model RUN``: it must answer as it does
when loaded for evaluation and ``tunelab generate`` (``Run.load``: the parent run's adapter folded in first)."""

from __future__ import annotations

import yaml
from fastapi.testclient import TestClient
from tests.unit.serve.conftest import write_fake_run

from tunelab.inference import chat_prompt
from tunelab.models.generate import stream_generate
from tunelab.runs import load_model
from tunelab.serve import ServeSettings, create_app
from tunelab.serve.adapters import load_registry

LOCAL = "http://127.0.0.1"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def answered_outside_the_server(run_dir) -> str:
    """What `tunelab generate --model RUN` answers greedily (the run as Run.load gives it, its prompt and max_length)."""
    loaded = load_model(str(run_dir))
    ids = chat_prompt(loaded.tokenizer, QUESTION, system_prompt=loaded.run.system_prompt, max_length=loaded.run.max_length).ids
    return "".join(stream_generate(loaded.model, loaded.tokenizer, ids, max_new_tokens=8))


def test_a_run_on_top_of_another_run_answers_as_evaluated(fake_runs, tiny_model_dir, tiny_tokenizer, tmp_path):
    sft = fake_runs["france"]
    dpo = write_fake_run(tmp_path / "dpo", tiny_model_dir, tiny_tokenizer, seed=7)
    config = yaml.safe_load((dpo / "config.yaml").read_text())
    config.update(task="preference", model={"name": str(sft)})  # trained over the SFT run
    (dpo / "config.yaml").write_text(yaml.safe_dump(config))

    registry = load_registry(str(dpo))
    assert set(registry.names()) == {"legal-fr", "dpo"}
    with TestClient(create_app(registry, ServeSettings()), base_url=LOCAL) as client:
        for name, run_dir in (("dpo", dpo), ("legal-fr", sft)):
            body = {"model": name, "messages": QUESTION, "max_tokens": 8, "temperature": 0}
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == answered_outside_the_server(run_dir), name
