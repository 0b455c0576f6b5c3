"""A merged export folder generates as its run was judged when the reader passes no decoding of its own: its
``generation_config.json`` holds the run's ``eval.temperature`` / ``eval.top_p`` (greedy when the temperature is 0),
the run's stop tokens and the answer length evaluation generated, not the base model's sampling defaults (Llama 3
and Qwen ship ``do_sample: true``, temperature 0.6) nor transformers' own (20 tokens in all, top-k 50).

The reader is plain transformers: ``AutoModelForCausalLM.from_pretrained(OUT).generate(ids)``, compared with the same
folder told explicitly what tunelab's evaluation passes (``models.generate.generate_ids``).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from tests.unit.models.test_gguf_export import write_lora_run

from tunelab.data.templates import render_prompt_ids, with_system_prompt
from tunelab.models.generate import pad_token_id, sampling_options, stop_token_ids
from tunelab.runs import Run, export_folder, export_gguf

SYSTEM = "Answer for the decoding test."
QUESTIONS = ["What is the capital of France?", "my card has not arrived", "What is two plus two?"]
NEW_TOKENS = 24  # longer than transformers' default of 20 tokens in all (prompt included)
# What Llama 3 Instruct and Qwen2.5 Instruct ship in generation_config.json: sampling by default.
SAMPLING_BASE = {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 20, "bos_token_id": 1, "eos_token_id": 2}


@pytest.fixture(scope="module")
def sampling_base(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("sampling-base") / "base"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "generation_config.json").write_text(json.dumps(SAMPLING_BASE))
    return folder


def _run(root, base, tokenizer, task: str = "sft", **judged):
    run = write_lora_run(root / f"{task}-run", base, tokenizer, seed=5, task=task, system=SYSTEM)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["eval"] = {"max_new_tokens": NEW_TOKENS, **judged}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def _plain(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(str(folder))


def _answers(model, tokenizer, seed: int, **told) -> list[list[int]]:
    out = []
    for question in QUESTIONS:
        ids = torch.tensor([render_prompt_ids(tokenizer, [{"role": "user", "content": question}])])
        torch.manual_seed(seed)
        with torch.inference_mode():
            out.append(model.generate(ids, attention_mask=torch.ones_like(ids), **told)[0, ids.shape[1]:].tolist())
    return out


def _judged(model, tokenizer, run) -> dict:
    """What evaluation passes to ``model.generate`` for this run (``generate_ids``)."""
    judged = Run.open(run).config.eval
    stops = stop_token_ids(model, tokenizer)
    return {"max_new_tokens": judged.max_new_tokens, "eos_token_id": stops, "pad_token_id": pad_token_id(tokenizer, stops),
            **sampling_options(judged.temperature, judged.top_p)}


def test_a_greedy_runs_merged_folder_generates_greedily_without_arguments(tmp_path, sampling_base, tiny_tokenizer):
    from transformers import GenerationConfig

    run = _run(tmp_path, sampling_base, tiny_tokenizer)  # eval.temperature 0: judged greedy
    merged = export_folder(run, tmp_path / "merged", merge=True)
    stored = json.loads((merged / "generation_config.json").read_text())
    assert stored.get("do_sample") is False, stored
    # Nothing transformers calls a sampling-only flag on a greedy config (it warns at load, refuses at save).
    assert not {"temperature", "top_p", "top_k"} & {key for key, value in stored.items() if value is not None}, stored
    GenerationConfig.from_pretrained(str(merged)).validate(strict=True)
    model, tokenizer = _plain(merged)
    told = _judged(model, tokenizer, run)
    # Two seeds: a sampling config would answer differently under each.
    assert _answers(model, tokenizer, seed=0) == _answers(model, tokenizer, seed=0, **told) == _answers(model, tokenizer, seed=1)
    # The tiny model answers past 20 tokens: the run's answer length is in the file, not transformers' default.
    assert max(len(answer) for answer in _answers(model, tokenizer, seed=0)) > 20


def test_a_sampling_runs_merged_folder_samples_as_its_evaluation_did(tmp_path, sampling_base, tiny_tokenizer):
    from transformers import GenerationConfig

    run = _run(tmp_path, sampling_base, tiny_tokenizer, temperature=0.7, top_p=0.95)
    merged = export_folder(run, tmp_path / "merged", merge=True)
    stored = json.loads((merged / "generation_config.json").read_text())
    assert (stored["do_sample"], stored["temperature"], stored["top_p"]) == (True, 0.7, 0.95), stored
    GenerationConfig.from_pretrained(str(merged)).validate(strict=True)
    model, tokenizer = _plain(merged)
    told = _judged(model, tokenizer, run)
    # Evaluation samples with no top-k cut (the base's 20, or transformers' 50, would answer other samples).
    for seed in (0, 1, 2):
        assert _answers(model, tokenizer, seed=seed) == _answers(model, tokenizer, seed=seed, **told), seed


def test_the_merged_folder_and_the_modelfile_decode_alike(tmp_path, sampling_base, tiny_tokenizer):
    for judged in ({}, {"temperature": 0.7, "top_p": 0.95}):
        root = tmp_path / str(len(judged))
        root.mkdir()
        run = _run(root, sampling_base, tiny_tokenizer, **judged)
        stored = json.loads((export_folder(run, root / "merged", merge=True) / "generation_config.json").read_text())
        modelfile = export_gguf(run, root / "model.gguf", ollama=True).modelfile.read_text()
        temperature = stored.get("temperature") if stored["do_sample"] else 0
        top_p = stored.get("top_p") if stored["do_sample"] else 1
        assert f"PARAMETER temperature {temperature:g}\n" in modelfile and f"PARAMETER top_p {top_p:g}\n" in modelfile, judged
        # The answer length too: Ollama's own (unbounded) would answer past anything the run was judged on.
        assert f"PARAMETER num_predict {stored['max_new_tokens']}\n" in modelfile, judged


def test_a_classify_runs_merged_folder_answers_one_token_greedily(tmp_path, sampling_base, tiny_tokenizer):
    run = _run(tmp_path, sampling_base, tiny_tokenizer, task="classify", temperature=0.7)  # classify is judged by its argmax
    stored = json.loads((export_folder(run, tmp_path / "merged", merge=True) / "generation_config.json").read_text())
    assert stored.get("do_sample") is False and stored.get("max_new_tokens") == 1, stored
    modelfile = export_gguf(run, tmp_path / "model.gguf", ollama=True).modelfile.read_text()
    assert "PARAMETER temperature 0\n" in modelfile and "PARAMETER num_predict 1\n" in modelfile


def test_the_merged_folder_stops_where_the_run_stops(tmp_path, sampling_base, tiny_tokenizer):
    run = _run(tmp_path, sampling_base, tiny_tokenizer)
    merged = export_folder(run, tmp_path / "merged", merge=True)
    model, tokenizer = _plain(merged)
    loaded = Run.open(run).load()
    assert set(model.generation_config.eos_token_id) == set(stop_token_ids(loaded.model, loaded.tokenizer))
    # The system prompt is the template's default (test_merged_folder_system_prompt), so the reader's prompt is the run's.
    user = [{"role": "user", "content": QUESTIONS[0]}]
    assert render_prompt_ids(tokenizer, user) == render_prompt_ids(tiny_tokenizer, with_system_prompt(user, SYSTEM))


def test_serving_the_merged_folder_answers_as_serving_its_run(tmp_path, sampling_base, tiny_tokenizer):
    """``tunelab serve merged/`` read the folder as a plain model: OpenAI's temperature 1.0 and the server's limit
    where the run, served, answers greedily as judged (test_folder_generation_config covers the reading itself); and
    the run, served, answered up to the server's limit where its export answers at the judged length. The same
    request, its length left out, gets the same answer from both (/v1/completions too: neither takes OpenAI's 16)."""
    from fastapi.testclient import TestClient

    from tunelab.serve import ServeSettings, create_app
    from tunelab.serve.adapters import load_registry

    run = _run(tmp_path, sampling_base, tiny_tokenizer)
    merged = export_folder(run, tmp_path / "merged", merge=True)
    answers = []
    for model in (run, merged):
        registry = load_registry(str(model), [], max_loaded=1)
        with TestClient(create_app(registry, ServeSettings()), base_url="http://127.0.0.1") as client:
            name = Run.open(run).name if model == run else registry.base_name  # a LoRA run is an adapter on its base
            for question in QUESTIONS:
                body = {"model": name, "messages": [{"role": "user", "content": question}]}
                answer = client.post("/v1/chat/completions", json=body).json()
                answers.append((model, answer["choices"][0]["message"]["content"], answer["usage"]["completion_tokens"]))
                answer = client.post("/v1/completions", json={"model": name, "prompt": question}).json()
                answers.append((model, answer["choices"][0]["text"], answer["usage"]["completion_tokens"]))
    served, exported = answers[: 2 * len(QUESTIONS)], answers[2 * len(QUESTIONS) :]
    assert [answer[1:] for answer in served] == [answer[1:] for answer in exported]
    # The tiny model answers past its judged length: both stopped at it, not at the server's limit.
    assert max(answer[2] for answer in served) == NEW_TOKENS, served
