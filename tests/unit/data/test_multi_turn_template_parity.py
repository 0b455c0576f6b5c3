"""Multi-turn sft with real chat templates: the context each answer is trained after is the prompt inference sends
for that conversation (``render_prompt_ids``, what evaluation, serve and generate use), and each trained answer ends
with exactly one token generation stops on (``models.generate.stop_token_ids``), nothing after it.

The templates are the models' own Jinja text (SmolLM2's ChatML is the conftest tokenizer's), each on a tiny byte-level
BPE tokenizer trained in-process with the template's special tokens; the Mistral-style cases also run on a
SentencePiece-style tokenizer (a "▁" put before the text, as Mistral's and Llama 2's tokenizer.json do).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from tests.conftest import _CORPUS, build_tiny_tokenizer
from tests.unit.data.test_end_of_turn_not_eos import _tokenizer as _byte_level

from tunelab.data.records import SFTRecord
from tunelab.data.templates import render_prompt_ids
from tunelab.data.tokenize import IGNORE_INDEX, tokenize_sft
from tunelab.models.generate import stop_token_ids

# meta-llama/Meta-Llama-3-8B-Instruct
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# google/gemma-2-2b-it (no system role: tunelab folds a system message into the first user turn)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
# mistralai/Mistral-7B-Instruct-v0.1: the answer is closed by the EOS text the template writes
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
# meta-llama/Llama-2-7b-chat-hf
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
# microsoft/Phi-3-mini-4k-instruct: <|end|> closes a turn; EOS is written once, after the last message
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# A turn closed by a newline only (Phi-2's recommended format as a template): tunelab adds EOS after each answer
NEWLINE = (
    "{% for message in messages %}{{ (message['role'] | title) + ': ' + message['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# template, special tokens (the first is the pad token), BOS, EOS
STYLES = {
    "llama3": (LLAMA3, ["<|end_of_text|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|begin_of_text|>", "<|end_of_text|>"),
    "gemma": (GEMMA, ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>"),
    "mistral": (MISTRAL, ["<unk>", "<s>", "</s>"], "<s>", "</s>"),
    "llama2": (LLAMA2, ["<unk>", "<s>", "</s>"], "<s>", "</s>"),
    "phi3": (PHI3, ["<unk>", "<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], "<s>", "<|endoftext|>"),
    "newline": (NEWLINE, ["<|endoftext|>"], "<|endoftext|>", "<|endoftext|>"),
}


def _sentencepiece_style(template: str):
    """Mistral's and Llama 2's tokenizer.json in small: "▁" put before the text and for each space, no pre-tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    # The newline a template writes is a token (Llama 2's byte fallback has one), never <unk>.
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=["\n"], show_progress=False
    )
    backend.train_from_iterator([text.replace(" ", "▁") for text in _CORPUS], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = template
    return fast


_TOKENIZERS: dict[str, object] = {}


def _tokenizer(style: str):
    if style not in _TOKENIZERS:
        if style == "chatml":
            _TOKENIZERS[style] = build_tiny_tokenizer()  # SmolLM2's template (the default model's)
        elif style.endswith("-sentencepiece"):
            _TOKENIZERS[style] = _sentencepiece_style(STYLES[style.removesuffix("-sentencepiece")][0])
        else:
            template, special, bos, eos = STYLES[style]
            _TOKENIZERS[style] = _byte_level(special, bos, eos, template, style)
    return _TOKENIZERS[style]


TURNS = (("What is two plus two?", "four"), ("and Italy?", "Rome"), ("The capital of France?", "Paris"))


def _conversation(turns: int, system: bool) -> list[dict]:
    messages = [{"role": "system", "content": "Answer with the category only."}] if system else []
    for question, answer in TURNS[:turns]:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


def _answers(labels: list[int]) -> list[tuple[int, int]]:
    """The (start, end) of each run of trained labels: one per assistant answer."""
    spans: list[tuple[int, int]] = []
    start = None
    for index, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = index
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, index))
            start = None
    return spans


def _cases(styles, turns):
    return [pytest.param(style, n, system, id=f"{style}-{n}turns{'-system' if system else ''}")
            for style in styles for n in turns for system in (False, True)]


CASES = _cases(
    ("chatml", "llama3", "gemma", "mistral", "llama2", "newline", "phi3", "mistral-sentencepiece", "llama2-sentencepiece",
     "newline-sentencepiece"),
    (1, 2, 3),
)


@pytest.mark.parametrize(("style", "turns", "system"), CASES)
def test_each_answer_is_trained_after_the_served_prompt_and_ends_at_a_stop_token(style, turns, system):
    tokenizer = _tokenizer(style)
    messages = _conversation(turns, system)
    example = tokenize_sft(SFTRecord(tuple(messages)), tokenizer, max_length=4096)
    spans = _answers(example.labels)
    positions = [index for index, message in enumerate(messages) if message["role"] == "assistant"]
    assert len(spans) == len(positions)
    stops = set(stop_token_ids(SimpleNamespace(generation_config=None), tokenizer))
    for (start, end), position in zip(spans, positions, strict=True):
        # What evaluation, serve and generate send for the conversation up to this answer.
        assert example.input_ids[:start] == render_prompt_ids(tokenizer, messages[:position])
        answer = example.input_ids[start:end]
        assert answer[-1] in stops and not stops & set(answer[:-1]), tokenizer.convert_ids_to_tokens(answer)
