"""Chat templates whose end-of-turn token is not the tokenizer's EOS (Gemma, Llama 3, Phi-3).

The answer and the template's own end-of-turn token are trained; nothing the template does not write
(an EOS after ``<end_of_turn>\\n``) is added, so the ids trained on are exactly the ids the chat runtime
reads, and generation stops at the end-of-turn token.
"""

import pytest
import torch
from tests.conftest import _CORPUS, build_tiny_model, build_tiny_tokenizer

from tunelab.data.records import PreferenceRecord, SFTRecord
from tunelab.data.templates import render_chat, render_prompt_ids
from tunelab.data.tokenize import IGNORE_INDEX, tokenize_preference, tokenize_sft

# Gemma 2's template in spirit: BOS first, no system role, "model" for the assistant, content trimmed.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# Llama 3's: the turn ends with <|eot_id|> and nothing after it; EOS is <|end_of_text|>.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def _tokenizer(special, bos, eos, template, name):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(_CORPUS, trainer=trainer)
    named = {bos, eos, special[0]}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=special[0],
        additional_special_tokens=[t for t in special if t not in named],
    )
    fast.chat_template = template
    fast.name_or_path = name
    return fast


@pytest.fixture(scope="module")
def gemma():
    return _tokenizer(["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", GEMMA_TEMPLATE, "google/gemma-2-2b-it")


@pytest.fixture(scope="module")
def llama3():
    special = ["<|end_of_text|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    return _tokenizer(special, "<|begin_of_text|>", "<|end_of_text|>", LLAMA3_TEMPLATE, "meta-llama/Meta-Llama-3-8B-Instruct")


def _trained(tokenizer, example):
    return [tokenizer.decode([t]) for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]


CONVERSATION = (
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "four"},
    {"role": "user", "content": "and Italy?"},
    {"role": "assistant", "content": "Rome"},
)


@pytest.mark.parametrize("name", ["gemma", "llama3"])
def test_an_sft_example_is_the_template_text_and_trains_through_its_end_of_turn_only(name, request):
    tokenizer = request.getfixturevalue(name)
    end = {"gemma": "<end_of_turn>", "llama3": "<|eot_id|>"}[name]
    example = tokenize_sft(SFTRecord(CONVERSATION), tokenizer, max_length=512)
    # No EOS the template does not write: the context of the second turn is what a chat runtime sends.
    assert tokenizer.eos_token_id not in example.input_ids
    assert example.input_ids == tokenizer.encode(render_chat(tokenizer, list(CONVERSATION)), add_special_tokens=False)
    assert "".join(_trained(tokenizer, example)) == f"four{end}Rome{end}"
    # The prompt trained on is the prompt served.
    prompt = render_prompt_ids(tokenizer, list(CONVERSATION[:1]))
    assert example.input_ids[: len(prompt)] == prompt


def test_a_preference_pair_trains_each_answer_through_the_end_of_turn(gemma):
    pair = tokenize_preference(PreferenceRecord(CONVERSATION[:1], "four", "five"), gemma, max_length=256)
    chosen = [gemma.decode([t]) for t in pair.chosen_labels if t != IGNORE_INDEX]
    assert "".join(chosen) == "four<end_of_turn>"
    assert gemma.eos_token_id not in pair.rejected_ids


def test_chatml_whose_end_of_turn_is_eos_keeps_its_ids():
    # SmolLM2's case (<|im_end|> is EOS): the ids and labels pinned before the end-of-turn change.
    tokenizer = build_tiny_tokenizer()
    example = tokenize_sft(SFTRecord(CONVERSATION[:2]), tokenizer, max_length=256)
    whole = tokenizer.encode(tokenizer.apply_chat_template(list(CONVERSATION[:2]), tokenize=False), add_special_tokens=False)
    assert example.input_ids == whole
    answer = tokenizer.encode("four<|im_end|>", add_special_tokens=False)
    start = len(render_prompt_ids(tokenizer, list(CONVERSATION[:1])))
    assert example.labels == [IGNORE_INDEX] * start + answer + [IGNORE_INDEX] * (len(whole) - start - len(answer))


def test_generation_stops_at_the_end_of_turn_and_never_shows_it(gemma):
    from tunelab.models.generate import generate_batch, stop_token_ids, stream_generate

    model = build_tiny_model(len(gemma))
    end = gemma.convert_tokens_to_ids("<end_of_turn>")
    model.generation_config.eos_token_id = [gemma.eos_token_id, end]  # Gemma's [1, 107]
    assert {gemma.eos_token_id, end} <= set(stop_token_ids(model, gemma))
    with torch.no_grad():
        model.lm_head.weight[end] += 50 * model.model.norm.weight.sign()
    prompt = render_prompt_ids(gemma, list(CONVERSATION[:1]))
    assert generate_batch(model, gemma, [prompt], max_new_tokens=6) == [""]
    assert "".join(stream_generate(model, gemma, prompt, max_new_tokens=6)) == ""


@pytest.mark.parametrize("name", ["gemma", "llama3", "chatml"])
def test_the_data_check_counts_the_ids_tokenize_sft_builds(name, request, tmp_path):
    # The check's lengths (and its count over max_length) are those of the examples trained on: no EOS counted
    # after a turn the template closes with its own end-of-turn token.
    import json

    from tunelab.config import DataConfig
    from tunelab.data.check import check_data

    tokenizer = build_tiny_tokenizer() if name == "chatml" else request.getfixturevalue(name)
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"messages": list(CONVERSATION)}) + "\n", encoding="utf-8")
    report = check_data(str(path), "sft", DataConfig(), tokenizer=tokenizer)
    assert report.lengths.max == len(tokenize_sft(SFTRecord(CONVERSATION), tokenizer, max_length=512).input_ids)


def test_the_eos_rule_of_a_template_that_refuses_the_probe_does_not_stop_the_check():
    # A template that wants a system turn first refused the one-user-turn probe: the whole data check failed.
    from tunelab.data.templates import appends_eos

    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = (
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('a system message must come first') }}{% endif %}"
        + tokenizer.chat_template
    )
    assert appends_eos(tokenizer) is True
