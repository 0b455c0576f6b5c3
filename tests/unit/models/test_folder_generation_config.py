"""A model folder that is no run (a merged export, a hub model) decodes as its ``generation_config.json`` says when a
request or a flag says nothing: ``tunelab serve FOLDER`` and ``tunelab generate --model FOLDER`` read it through
``models.generate.configured_decoding`` / ``configured_answer_length``, as ``model.generate(ids)`` and vLLM do.

A merged export writes there how its run was judged (``judged_generation_config``: greedy, the run's stop tokens, its
answer length); served, it sampled at OpenAI's 1.0 and answered up to the server's limit, and ``tunelab generate``
answered 256 tokens. What a request or a flag says still wins; what the file leaves unset keeps the old default.
"""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import GenerationConfig
from typer.testing import CliRunner

from tunelab.inference import chat_prompt
from tunelab.models.generate import (
    Decoding,
    configured_answer_length,
    configured_decoding,
    generate_ids,
    stop_token_ids,
)

LOCAL = "http://127.0.0.1"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER_TOKENS = 6  # the folder's max_new_tokens: fewer than the server's limit and generate's 256


def _model(**config):
    return SimpleNamespace(generation_config=GenerationConfig(**config))


def test_configured_decoding_follows_what_the_config_says_and_leaves_the_rest_to_the_caller():
    fallback = Decoding(temperature=1.0)
    assert configured_decoding(_model(), fallback) == fallback  # do_sample unset: the file says nothing of sampling
    assert configured_decoding(_model(do_sample=False), fallback) == Decoding()
    assert configured_decoding(_model(do_sample=True, temperature=0.6, top_p=0.9), Decoding()) == Decoding(0.6, 0.9)
    assert configured_decoding(_model(do_sample=True), Decoding()) == Decoding(1.0, 1.0)  # transformers' own values
    assert configured_decoding(SimpleNamespace(), fallback) == fallback  # no generation_config at all (a GGUF reader)
    assert configured_answer_length(_model(max_new_tokens=7)) == 7
    assert configured_answer_length(_model()) is None


@pytest.fixture(scope="module")
def judged_folder(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    """The tiny model as an export writes it: greedy, ANSWER_TOKENS long, and a stop id of its own: the token the
    tiny model answers QUESTION with greedily (so a greedy answer that honours the file's stop ids is empty)."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("judged") / "merged"
    shutil.copytree(tiny_model_dir, folder)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    ids = chat_prompt(tiny_tokenizer, QUESTION).ids
    stops = stop_token_ids(model, tiny_tokenizer)
    prompt = torch.tensor([ids])
    out = generate_ids(model, prompt, torch.ones_like(prompt), max_new_tokens=ANSWER_TOKENS, stops=stops, pad_id=stops[0])
    answer = out[0, len(ids) :].tolist()
    assert answer and answer[0] not in stops, answer
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(do_sample=False, max_new_tokens=ANSWER_TOKENS, eos_token_id=[*stops, answer[0]])
    (folder / "generation_config.json").write_text(json.dumps(config))
    return folder


def test_serving_a_judged_folder_decodes_as_its_generation_config_says(judged_folder, monkeypatch):
    from tunelab.serve import ServeSettings, create_app
    from tunelab.serve.adapters import load_registry
    from tunelab.serve.engine import Engine

    folder = judged_folder
    seen = []
    real = Engine.submit_all  # every endpoint's jobs go through it (Engine.submit too)

    def spy(self, model, kind, prompts):
        seen.extend((params.temperature, params.top_p, params.max_tokens) for _, params in prompts)
        return real(self, model, kind, prompts)

    monkeypatch.setattr(Engine, "submit_all", spy)
    registry = load_registry(str(folder), [], max_loaded=1)
    chat = {"model": registry.base_name, "messages": QUESTION}
    with TestClient(create_app(registry, ServeSettings()), base_url=LOCAL) as client:
        answers = [client.post("/v1/chat/completions", json={**chat, "seed": seed}).json() for seed in (0, 1)]
        for answer in answers:
            # Stopped at once by the file's own stop id (the engine's stops are the model's: the file's included).
            assert (answer["choices"][0]["message"]["content"], answer["choices"][0]["finish_reason"]) == ("", "stop"), answer
        assert client.post("/v1/completions", json={"model": registry.base_name, "prompt": "The capital of"}).status_code == 200
        # What the request says wins over the file.
        told = {**chat, "temperature": 0.8, "top_p": 0.5, "max_tokens": 3}
        assert client.post("/v1/chat/completions", json=told).status_code == 200
    assert seen == [(0.0, 1.0, ANSWER_TOKENS)] * 3 + [(0.8, 0.5, 3)]


def test_generate_from_a_folder_decodes_as_its_generation_config_says(judged_folder, tmp_path, monkeypatch):
    import tunelab.models.generate as generation
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    folder = judged_folder
    result = CliRunner().invoke(app, ["generate", QUESTION[0]["content"], "--model", str(folder)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "\n"  # greedy, stopped at once by the file's own stop id
    # The same folder exported from a run judged on samples.
    sampling = tmp_path / "sampling"
    shutil.copytree(folder, sampling)
    config = json.loads((sampling / "generation_config.json").read_text())
    (sampling / "generation_config.json").write_text(json.dumps({**config, "do_sample": True, "temperature": 0.7, "top_p": 0.9}))
    seen = []
    real = generation.stream_generate

    def spy(model, tokenizer, ids, **options):
        seen.append((options["temperature"], options["top_p"], options["max_new_tokens"]))
        yield from real(model, tokenizer, ids, **options)

    monkeypatch.setattr(generation, "stream_generate", spy)
    told = ["--temperature", "0.8", "--top-p", "0.5", "--max-new-tokens", "3"]
    for model, extra in ((folder, []), (sampling, []), (sampling, told)):
        result = CliRunner().invoke(app, ["generate", "hello", "--model", str(model), *extra])
        assert result.exit_code == 0, result.output
    assert seen == [(0.0, 1.0, ANSWER_TOKENS), (0.7, 0.9, ANSWER_TOKENS), (0.8, 0.5, 3)]
