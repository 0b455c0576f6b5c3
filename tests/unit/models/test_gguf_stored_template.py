"""A GGUF export's stored chat template (``tokenizer.chat_template``, what ``llama-server --jinja`` renders) prompts a
request without a system message as the run does: the run's system prompt (``data.system_prompt``) first, not the
template's own default. Read back with the ``gguf`` package's reader and rendered with Jinja2, as llama.cpp would.
"""

from __future__ import annotations

import pytest
from tests.unit.models.test_gguf_export import gguf_string, write_lora_run

from tunelab.data.templates import render_chat, with_system_prompt
from tunelab.inference import chat_prompt
from tunelab.runs import Run, export_gguf

SYSTEM = 'Answer as the "parity" desk: {{ not jinja }} %} 100% sure, café 🙂.'  # quotes, Jinja syntax, non-ASCII
QUESTIONS = ["What is the capital of France?", "my card has not arrived"]


def _render(template: str, messages: list[dict], tokenizer) -> str:
    """The stored template rendered outside transformers (the Jinja2 settings llama.cpp's and transformers' share)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise RuntimeError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.globals["raise_exception"] = raise_exception
    return environment.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or ""
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    root = tmp_path_factory.mktemp("gguf-system")
    run = write_lora_run(root / "sft-run", tiny_model_dir, tiny_tokenizer, seed=4, system=SYSTEM)
    return run, export_gguf(run, root / "run.gguf", quant="f16").path


def test_the_stored_template_puts_the_runs_system_prompt_first(exported, tiny_tokenizer):
    run, path = exported
    assert Run.open(run).system_prompt == SYSTEM
    stored = gguf_string(path, "tokenizer.chat_template")
    for question in QUESTIONS:
        user = [{"role": "user", "content": question}]
        rendered = _render(stored, user, tiny_tokenizer)
        # What the run was trained, judged and is served on.
        assert rendered == render_chat(tiny_tokenizer, with_system_prompt(user, SYSTEM), add_generation_prompt=True), question
        ids = chat_prompt(tiny_tokenizer, user, system_prompt=SYSTEM).ids
        assert tiny_tokenizer(rendered, add_special_tokens=False)["input_ids"] == ids
        # A request's own system message replaces it, as with_system_prompt does.
        own = [{"role": "system", "content": "Be brief."}, *user]
        assert _render(stored, own, tiny_tokenizer) == render_chat(tiny_tokenizer, own, add_generation_prompt=True)
    # The SYSTEM key tunelab writes beside it stays the run's prompt.
    assert gguf_string(path, "tunelab.system_prompt") == SYSTEM


def test_a_run_without_a_system_prompt_keeps_the_tokenizers_template(tmp_path, tiny_model_dir, tiny_tokenizer):
    run = write_lora_run(tmp_path / "plain-run", tiny_model_dir, tiny_tokenizer, seed=5)
    path = export_gguf(run, tmp_path / "plain.gguf", quant="f16").path
    assert gguf_string(path, "tokenizer.chat_template") == tiny_tokenizer.chat_template
