"""A model without a chat template is asked (evaluation, serving, generate, few-shot) with the very token ids it was
trained on before each answer of a multi-turn conversation: EOS after each earlier answer, each turn tokenized as
training tokenizes it."""

import copy

import pytest

from tunelab.data.records import SFTRecord
from tunelab.data.templates import render_prompt_ids
from tunelab.data.tokenize import IGNORE_INDEX, tokenize_sft
from tunelab.inference import chat_prompt


@pytest.fixture
def plain(tiny_tokenizer):
    base = copy.deepcopy(tiny_tokenizer)
    base.chat_template = None
    base.name_or_path = "a-base-model"
    return base


def _conversation(turns: int, system: bool) -> list[dict]:
    # The tiny tokenizer merges " four" and " two" when "Answer: four" is encoded whole; the answers are trained apart.
    pairs = [("What is two plus two?", "four"), ("and one plus one?", "two"), ("and then?", "a new nation.")]
    messages = [{"role": "system", "content": "You answer briefly."}] if system else []
    for question, answer in pairs[:turns]:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


def _answer_starts(example) -> list[int]:
    """Positions where a trained answer starts (the prompt side is everything before)."""
    labels = example.labels
    return [i for i, label in enumerate(labels) if label != IGNORE_INDEX and (i == 0 or labels[i - 1] == IGNORE_INDEX)]


@pytest.mark.parametrize("system", [False, True])
@pytest.mark.parametrize("turns", [1, 2, 3])
def test_each_answers_training_prompt_is_the_inference_prompt(plain, turns, system):
    messages = _conversation(turns, system)
    example = tokenize_sft(SFTRecord(tuple(messages)), plain, max_length=10**6)
    starts = _answer_starts(example)
    assistant_at = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    assert len(starts) == len(assistant_at) == turns
    for start, index in zip(starts, assistant_at, strict=True):
        prompt = messages[:index]
        assert render_prompt_ids(plain, prompt) == example.input_ids[:start]
        assert chat_prompt(plain, prompt).ids == example.input_ids[:start]


def test_an_earlier_answer_ends_with_eos_in_the_inference_prompt(plain):
    messages = _conversation(2, system=False)
    ids = render_prompt_ids(plain, messages[:3])
    assert ids.count(plain.eos_token_id) == 1
    assert plain.decode(ids) == "What is two plus two?\n\nAnswer: four<|im_end|>\n\nand one plus one?\n\nAnswer: "
    # "four" as the answer was trained, not the " four" token the whole text would make.
    opened = plain.encode("What is two plus two?\n\nAnswer: ", add_special_tokens=True)
    four = plain.encode("four", add_special_tokens=False)
    assert ids[: len(opened) + len(four)] == [*opened, *four]


def test_a_single_turn_prompt_is_the_whole_text_encoded_as_before(plain):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "capital of France?"}]
    assert render_prompt_ids(plain, messages) == plain.encode("Be brief.\n\ncapital of France?\n\nAnswer: ", add_special_tokens=True)


def test_a_few_shot_prompt_stays_one_text_for_the_base_model(plain):
    from tunelab.data.labels import build_label_map
    from tunelab.data.templates import few_shot_chat, few_shot_messages, render_chat

    examples = [([{"role": "user", "content": "What is two plus two?"}], "four"), ([{"role": "user", "content": "one plus one?"}], "two")]
    chat = few_shot_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "three?"}], examples)
    labels = build_label_map(["billing", "refund"], plain)
    classify = few_shot_messages("a refund please", labels, [("my bill", "billing"), ("money back", "refund")])
    for messages in (chat, classify):
        ids = render_prompt_ids(plain, messages)
        assert ids == plain.encode(render_chat(plain, messages, add_generation_prompt=True), add_special_tokens=True)
        assert plain.eos_token_id not in ids


def test_a_tool_calling_dialogues_training_prompt_is_the_inference_prompt(plain):
    tools = ({"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}},)
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}
    messages = [
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
        {"role": "assistant", "content": "four"},
    ]
    example = tokenize_sft(SFTRecord(tuple(messages), tools=tools), plain, max_length=10**6)
    starts = _answer_starts(example)
    assert len(starts) == 2
    for start, index in zip(starts, (1, 3), strict=True):
        assert chat_prompt(plain, messages[:index], tools=tools).ids == example.input_ids[:start]
