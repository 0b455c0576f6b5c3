"""An exported run whose base model has no chat template is prompted as the run was trained, judged and served: the
merged folder and the GGUF carry a chat template that writes ``render_chat``'s plain turns ("Answer: " before each
answer, EOS after each earlier one, the run's system prompt as default), and the Ollama Modelfile a TEMPLATE for them.
Without it, llama-server fell back to ChatML, Ollama sent the raw text and transformers refused to chat.
"""

from __future__ import annotations

import copy
import re

import pytest
from tests.unit.models.test_gguf_export import gguf_string, write_lora_run
from tests.unit.models.test_gguf_stored_template import _render
from tests.unit.models.test_merged_folder_system_prompt import _answers

from tunelab.data.templates import (
    NO_TEMPLATE_ANSWER,
    plain_chat_template,
    render_chat,
    render_prompt_ids,
    with_system_prompt,
)
from tunelab.inference import chat_prompt
from tunelab.runs import export_folder, export_gguf

SYSTEM = 'Answer as the "parity" desk: {{ not jinja }} %} 100% sure, café 🙂.'  # quotes, Jinja syntax, non-ASCII
QUESTIONS = ["What is the capital of France?", "What is two plus two?", "my card has not arrived"]
CONVERSATION = [
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "four"},
    {"role": "user", "content": "and one plus one?"},
]


def _plain(tokenizer, adds_bos: bool = False):
    """The tiny tokenizer without a chat template (a base model's); with ``adds_bos``, one that puts its BOS before
    every text, as Llama's, Gemma's and Mistral's do."""
    from tokenizers import processors

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    plain.name_or_path = "a-base-model"
    if adds_bos:
        backend = copy.deepcopy(plain.backend_tokenizer)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{plain.bos_token} $A", special_tokens=[(plain.bos_token, plain.bos_token_id)]
        )
        plain._tokenizer = backend
        assert plain.encode("x")[:1] == [plain.bos_token_id]
    return plain


@pytest.mark.parametrize("system", [None, SYSTEM])
@pytest.mark.parametrize("adds_bos", [False, True])
def test_the_plain_template_prompts_a_request_with_the_runs_own_ids(tiny_tokenizer, adds_bos, system):
    plain = _plain(tiny_tokenizer, adds_bos)
    exported = copy.deepcopy(plain)
    exported.chat_template = plain_chat_template(plain, system)
    bos = plain.bos_token if adds_bos else ""
    for question in QUESTIONS:
        user = [{"role": "user", "content": question}]
        # What `tunelab serve` of the exported folder asks (its template) is what the run asks (no template).
        assert render_prompt_ids(exported, user) == chat_prompt(plain, user, system_prompt=system).ids, question
        assert exported.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == bos + render_chat(
            plain, with_system_prompt(user, system), add_generation_prompt=True
        )
        # A request's own system message replaces the default, as with_system_prompt does.
        own = [{"role": "system", "content": "Be brief."}, *user]
        assert render_prompt_ids(exported, own) == chat_prompt(plain, own, system_prompt=system).ids
    # An earlier answer ends with EOS, as training wrote it. Encoded as one text, "Answer: four" may merge across the
    # answer's start, which training never does (each answer is tokenized apart): the text is equal, not every id.
    head = "" if system is None else f"{system}\n\n"
    assert exported.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True) == (
        f"{bos}{head}What is two plus two?\n\n{NO_TEMPLATE_ANSWER}four{plain.eos_token}\n\nand one plus one?\n\n{NO_TEMPLATE_ANSWER}"
    )
    assert exported.decode(render_prompt_ids(exported, CONVERSATION)) == plain.decode(chat_prompt(plain, CONVERSATION, system_prompt=system).ids)


def test_a_tokenizer_with_a_template_gets_no_plain_one(tiny_tokenizer):
    assert plain_chat_template(tiny_tokenizer, SYSTEM) is None


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, tiny_tokenizer):
    from tests.conftest import build_tiny_model

    root = tmp_path_factory.mktemp("plain-export")
    plain = _plain(tiny_tokenizer)
    base = root / "base"
    build_tiny_model(len(plain)).save_pretrained(base)
    plain.save_pretrained(base)
    return root, write_lora_run(root / "sft-run", base, plain, seed=6, system=SYSTEM), plain


def test_the_merged_folder_of_a_plain_run_is_asked_and_answers_as_the_run(plain_run):
    from transformers import AutoTokenizer

    root, run, plain = plain_run
    merged = export_folder(run, root / "merged", merge=True)
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    assert tokenizer.chat_template is not None  # plain transformers and vLLM can chat with it
    for question in QUESTIONS:
        user = [{"role": "user", "content": question}]
        judged = chat_prompt(plain, user, system_prompt=SYSTEM).ids  # the run's own prompt
        assert render_prompt_ids(tokenizer, user) == judged, question
        assert list(tokenizer.apply_chat_template(user, add_generation_prompt=True, return_dict=True)["input_ids"]) == judged
    assert _answers(str(merged), QUESTIONS) == _answers(str(run), QUESTIONS)


def _go_render(template: str, messages: list[dict]) -> str:
    """The Modelfile's Go template rendered for ``messages`` (Ollama puts the Modelfile's SYSTEM first when they bring
    no system message): the few constructs it uses, translated into Jinja."""
    from jinja2 import Environment

    blocks: list[str] = []

    def translate(match: re.Match) -> str:
        action = match.group(1).strip()
        if action == "range $i, $m := .Messages":
            blocks.append("endfor")
            return "{% for m in messages %}{% set i = loop.index0 %}"
        if action == "end":
            return "{% " + blocks.pop() + " %}"
        if action == "else":
            return "{% else %}"
        if action == "if $i":
            blocks.append("endif")
            return "{% if i %}"
        if action == 'if eq $m.Role "assistant"':
            blocks.append("endif")
            return "{% if m.role == 'assistant' %}"
        assert action == "$m.Content", action
        return "{{ m.content }}"

    jinja = re.sub(r"\{\{-?\s*(.*?)\s*-?\}\}", translate, template)
    return Environment(keep_trailing_newline=True).from_string(jinja).render(messages=messages)


def test_the_gguf_and_modelfile_of_a_plain_run_prompt_as_the_run(plain_run):
    root, run, plain = plain_run
    result = export_gguf(run, root / "plain.gguf", quant="f16", ollama=True)
    stored = gguf_string(result.path, "tokenizer.chat_template")
    assert stored is not None  # llama-server used to fall back to ChatML
    text = result.modelfile.read_text()
    assert "No TEMPLATE" not in text
    go = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    assert f'SYSTEM """{SYSTEM}"""' in text
    for question in QUESTIONS:
        user = [{"role": "user", "content": question}]
        expected = render_chat(plain, with_system_prompt(user, SYSTEM), add_generation_prompt=True)
        assert _render(stored, user, plain) == expected  # llama.cpp's Jinja
        assert _go_render(go, with_system_prompt(user, SYSTEM)) == expected  # Ollama, with its SYSTEM first
    conversation = with_system_prompt(CONVERSATION, SYSTEM)
    assert _go_render(go, conversation) == _render(stored, conversation, plain) == plain.decode(
        chat_prompt(plain, CONVERSATION, system_prompt=SYSTEM).ids
    )
