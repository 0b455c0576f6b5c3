"""The prompts tunelab puts around classify examples, shared by training, evaluation and serving.

The tuned model is trained on ``classify_messages`` (instruction + text, answer = one label token).
The base model, which has never seen the labels, is evaluated zero-shot on ``zero_shot_messages``,
which also lists every label with the token that stands for it, scored over the same label tokens:
the fairest question the base model can be asked.
"""

from __future__ import annotations

from collections.abc import Sequence

from tunelab.data.labels import LabelMap
from tunelab.data.records import Message

CLASSIFY_INSTRUCTION = "Classify the following text. Answer with the category only."


def with_system_prompt(messages: list[Message], system_prompt: str | None) -> list[Message]:
    """``messages`` with ``data.system_prompt`` first, unless they bring their own system message.

    The one place the system prompt is applied, at tokenization (and at inference), for every task:
    it is never part of a record, so it never changes record ids or the split.
    """
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return list(messages)


def classify_messages(text: str, system_prompt: str | None = None) -> list[Message]:
    """The prompt a classify model is trained and served on (the assistant answers one token)."""
    return with_system_prompt([{"role": "user", "content": f"{CLASSIFY_INSTRUCTION}\n\nText: {text}"}], system_prompt)


def _label_instruction(label_map: LabelMap) -> str:
    if label_map.codes_differ:
        options = "\n".join(f"{code}: {label}" for label, code in zip(label_map.labels, label_map.token_strings, strict=True))
        ask = "Answer with the code of the category only."
    else:
        options = "\n".join(label_map.labels)
        ask = "Answer with the category only."
    return f"Classify the following text.\n\nCategories:\n{options}\n\n{ask}"


def zero_shot_messages(text: str, label_map: LabelMap, system_prompt: str | None = None) -> list[Message]:
    """The base model's prompt: the same instruction plus the list of categories and their answers."""
    question = f"{_label_instruction(label_map)}\n\nText: {text}"
    return with_system_prompt([{"role": "user", "content": question}], system_prompt)


def few_shot_messages(
    text: str, label_map: LabelMap, examples: Sequence[tuple[str, str]], system_prompt: str | None = None
) -> list[Message]:
    """The zero-shot prompt with solved examples first, as earlier chat turns answered with the label's token.

    Every prompt built from the same ``examples`` starts with the same turns, so their tokens share a
    long prefix that is computed once (``tunelab.evaluation.predict.prefix_label_logits``).
    """
    messages: list[Message] = []
    instruction = _label_instruction(label_map)
    for number, (example, label) in enumerate(examples):
        lead = f"{instruction}\n\n" if number == 0 else ""
        messages.append({"role": "user", "content": f"{lead}Text: {example}"})
        messages.append({"role": "assistant", "content": label_map.token_strings[label_map.index(label)]})
    lead = "" if examples else f"{instruction}\n\n"
    messages.append({"role": "user", "content": f"{lead}Text: {text}"})
    return with_system_prompt(messages, system_prompt)


def render_prompt_ids(tokenizer, messages: list[Message]) -> list[int]:
    """Token ids of ``messages`` with the assistant turn opened, ready for the answer's first token."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    text = "\n\n".join(m["content"] for m in messages) + "\n\nAnswer: "
    return tokenizer.encode(text, add_special_tokens=True)


def few_shot_chat(prompt_messages: Sequence[Message], examples: Sequence[tuple[Sequence[Message], str]]) -> list[Message]:
    """An sft prompt with solved (prompt messages, answer) examples first, as earlier turns of the chat.

    System messages stay first (the prompt's own); the examples' system messages are dropped.
    """
    system = [dict(m) for m in prompt_messages if m["role"] == "system"]
    turns: list[Message] = []
    for messages, answer in examples:
        turns += [dict(m) for m in messages if m["role"] != "system"]
        turns.append({"role": "assistant", "content": answer})
    return system + turns + [dict(m) for m in prompt_messages if m["role"] != "system"]
