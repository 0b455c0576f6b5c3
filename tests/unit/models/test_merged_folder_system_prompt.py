"""A merged export folder answers like its run for a chat request without a system message: the run's system prompt
(``data.system_prompt``: applied in training, evaluation and serving) is its chat template's default, as the Modelfile's
SYSTEM line is Ollama's. Read by plain transformers (``apply_chat_template``) and by ``tunelab serve OUT``.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from tests.unit.models.test_gguf_export import write_lora_run

from tunelab.data.templates import render_prompt_ids, with_system_prompt
from tunelab.runs import export_folder
from tunelab.serve import ServeSettings, create_app
from tunelab.serve.adapters import load_registry

LOCAL = "http://127.0.0.1"
SYSTEM = 'Answer as the "parity" desk: {{ not jinja }} %} 100% sure, café 🙂.'  # quotes, Jinja syntax, non-ASCII
QUESTIONS = ["What is the capital of France?", "What is two plus two?", "my card has not arrived"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    root = tmp_path_factory.mktemp("merged-system")
    run = write_lora_run(root / "sft-run", tiny_model_dir, tiny_tokenizer, seed=3, system=SYSTEM)
    return run, export_folder(run, root / "merged", merge=True)


def _answers(model: str, questions: list[str], system: str | None = None) -> list[str]:
    registry = load_registry(model)
    name = registry.names()[-1]
    answers = []
    with TestClient(create_app(registry, ServeSettings()), base_url=LOCAL) as client:
        for question in questions:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
            response = client.post("/v1/chat/completions", json={"model": name, "messages": messages, "max_tokens": 8, "temperature": 0})
            assert response.status_code == 200, response.text
            answers.append(response.json()["choices"][0]["message"]["content"])
    return answers


def test_plain_transformers_gets_the_runs_system_prompt_from_the_merged_folders_template(exported, tiny_tokenizer):
    from transformers import AutoTokenizer

    _, merged = exported
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    for question in QUESTIONS:
        user = [{"role": "user", "content": question}]
        # What the run was trained, judged and is served on: the run's system prompt first.
        assert render_prompt_ids(tokenizer, user) == render_prompt_ids(tiny_tokenizer, with_system_prompt(user, SYSTEM)), question
        # A request's own system message replaces it, as with_system_prompt does.
        own = [{"role": "system", "content": "Be brief."}, *user]
        assert render_prompt_ids(tokenizer, own) == render_prompt_ids(tiny_tokenizer, own)


def test_serving_the_merged_folder_answers_like_serving_the_run(exported):
    run, merged = exported
    from_run = _answers(str(run), QUESTIONS)
    assert _answers(str(merged), QUESTIONS) == from_run
    # The system prompt changes the tiny model's answers: the comparison above could tell a folder without it.
    assert _answers(str(run), QUESTIONS, system="Be brief.") != from_run


def _without_system_role(tiny_tokenizer):
    """(a tokenizer whose template has no system role, as Gemma's; its export with the run's SYSTEM as default)."""
    import copy

    from tunelab.data.templates import template_with_system_prompt

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    exported = copy.deepcopy(tokenizer)
    exported.chat_template = template_with_system_prompt(tokenizer, SYSTEM)
    return tokenizer, exported


def test_a_template_without_a_system_role_gets_the_prompt_folded_into_the_first_user_turn(tiny_tokenizer):
    from tunelab.data.templates import template_with_system_prompt

    tokenizer, exported = _without_system_role(tiny_tokenizer)
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Again"}]
    for messages in ([{"role": "user", "content": QUESTIONS[0]}], conversation):
        assert render_prompt_ids(exported, messages) == render_prompt_ids(tokenizer, with_system_prompt(messages, SYSTEM))
    assert template_with_system_prompt(tokenizer, None) is None


def test_a_requests_own_system_message_replaces_the_default_in_a_template_without_a_system_role(tiny_tokenizer):
    # tunelab (serve, eval, generate of the exported folder) folds a request's system message into the first user
    # turn before the template sees it; the default must not then put the run's system prompt in front of it as well:
    # the run answers such a request with the request's system message only (with_system_prompt).
    from tunelab.data.templates import render_chat

    tokenizer, exported = _without_system_role(tiny_tokenizer)
    own = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTIONS[0]}]
    assert render_prompt_ids(exported, own) == render_prompt_ids(tokenizer, with_system_prompt(own, SYSTEM))
    # Plain transformers gets the same prompt (the template folds the request's system message itself).
    assert exported.apply_chat_template(own, tokenize=False, add_generation_prompt=True) == render_chat(tokenizer, own, add_generation_prompt=True)
