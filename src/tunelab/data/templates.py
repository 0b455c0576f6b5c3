"""The prompts tunelab puts around examples, and the one way a conversation goes through a chat template.

``render_chat`` / ``render_prompt_ids`` are where a conversation (tool calls and tool schemas
included) becomes a chat template's input, for training, the data check, evaluation and serving.

The tuned model is trained on ``classify_messages`` (instruction + text, answer = one label token).
The base model, which has never seen the labels, is evaluated zero-shot on ``zero_shot_messages``,
which also lists every label with the token that stands for it, scored over the same label tokens:
the fairest question the base model can be asked.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Sequence
from typing import Any

from jinja2 import TemplateError

from tunelab.data.labels import LabelMap
from tunelab.data.records import Message, message_text
from tunelab.errors import DataError

# Opens the assistant's turn for a model with no chat template (a base model).
NO_TEMPLATE_ANSWER = "Answer: "
CLASSIFY_INSTRUCTION = "Classify the following text. Answer with the category only."
# Marks a solved example's answer in a few-shot prompt: a base model's example, never an answer the model was trained
# after, so a model without a chat template reads it inside the prompt's one text (``_plain_prompt_ids``).
FEW_SHOT_ANSWER = "few_shot_answer"


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
        messages.append({"role": "assistant", "content": label_map.token_strings[label_map.index(label)], FEW_SHOT_ANSWER: True})
    lead = "" if examples else f"{instruction}\n\n"
    messages.append({"role": "user", "content": f"{lead}Text: {text}"})
    return with_system_prompt(messages, system_prompt)


# Told to a model whose chat template knows no tools (SmolLM2's ChatML, ...): the Hermes-style block that
# tool-aware templates (Qwen2.5 and others) write, so the model sees the same schemas and answers in the
# same ``<tool_call>`` form (``records.tool_call_text``) either way.
TOOLS_INSTRUCTION = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def template_handles_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders ``tool_calls`` itself (Qwen2.5, Llama 3.1, Mistral v3, ...)."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "tool_calls" in template


def uses_tools(messages: Sequence[Message], tools: Sequence[dict[str, Any]] = ()) -> bool:
    return bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def chat_inputs(tokenizer: Any, messages: Sequence[Message], tools: Sequence[dict[str, Any]] = ()) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The messages and keyword arguments ``apply_chat_template`` is given for a conversation.

    A template that renders tool calls gets them as they are (and ``tools=``); any other template gets
    them as text: each call as a ``<tool_call>`` block in the assistant's turn, tool results as a user
    turn of ``<tool_response>`` blocks, and the schemas in the system message. Keys a template does not
    know (``weight``) are dropped.
    """
    if not uses_tools(messages, tools):
        return [{"role": m["role"], "content": m["content"]} for m in messages], {}
    if template_handles_tools(tokenizer):
        shown = []
        for m in messages:
            item: dict[str, Any] = {"role": m["role"], "content": m["content"]}
            for key in ("tool_calls", "tool_call_id", "name"):
                if key in m:
                    item[key] = m[key]
            shown.append(item)
        return shown, ({"tools": [dict(tool) for tool in tools]} if tools else {})
    shown = []
    for m in messages:
        if m["role"] == "tool":
            block = f"<tool_response>\n{m['content']}\n</tool_response>"
            if shown and shown[-1].get("tool_results"):
                shown[-1]["content"] += "\n" + block  # parallel calls' results: one turn, as tool-aware templates do
            else:
                shown.append({"role": "user", "content": block, "tool_results": True})
        else:
            shown.append({"role": m["role"], "content": message_text(m)})
    if tools:
        listed = TOOLS_INSTRUCTION.format(tools="\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools))
        if shown and shown[0]["role"] == "system":
            shown[0]["content"] = f"{shown[0]['content']}\n\n{listed}"
        else:
            shown.insert(0, {"role": "system", "content": listed})
    return [{"role": m["role"], "content": m["content"]} for m in shown], {}


def _model_name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or "the model"


def _fold_system(shown: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """``shown`` with a leading system message written at the start of the first user turn; None: nothing to fold.

    What Gemma's and Mistral's own documentation say to do with a system prompt (Gemma 3's template does it itself).
    """
    if len(shown) < 2 or shown[0]["role"] != "system" or shown[1]["role"] != "user":
        return None
    first = {**shown[1], "content": f"{shown[0]['content']}\n\n{shown[1]['content']}"}
    return [first, *shown[2:]]


def _apply_template(tokenizer: Any, shown: list[dict[str, Any]], extra: dict[str, Any], **options: Any) -> Any:
    """``apply_chat_template``; a template that refuses a system role gets it folded into the first user turn.

    Raises:
        DataError: when the template refuses the conversation (roles that do not alternate, an unknown role, ...).
    """
    try:
        return tokenizer.apply_chat_template(shown, **options, **extra)
    except TemplateError as error:
        folded = _fold_system(shown)
        if folded is not None:
            try:
                return tokenizer.apply_chat_template(folded, **options, **extra)
            except TemplateError:
                pass
        roles = "/".join(m["role"] for m in shown)
        raise DataError(
            f"the chat template of {_model_name(tokenizer)} refuses a conversation with roles {roles}: {error}",
            "give the records the turns this template accepts (e.g. user and assistant alternating, starting with user), or use another model",
        ) from None


def render_chat(
    tokenizer: Any, messages: Sequence[Message], *, tools: Sequence[dict[str, Any]] = (), add_generation_prompt: bool = False
) -> str:
    """A conversation as the text the model reads (its chat template; plain turns when it has none).

    Without a template the turns are paragraphs and each assistant turn starts with "Answer: ", the same words
    that open the assistant turn of a prompt, so a conversation renders its earlier turns the same way whatever
    follows them (``tokenize_sft`` finds each answer's tokens that way).

    Raises:
        DataError: when the chat template refuses the conversation (see ``_apply_template``).
    """
    shown, extra = chat_inputs(tokenizer, messages, tools)
    if getattr(tokenizer, "chat_template", None):
        return _apply_template(tokenizer, shown, extra, add_generation_prompt=add_generation_prompt, tokenize=False)
    turns = [f"{NO_TEMPLATE_ANSWER}{m['content']}" if m["role"] == "assistant" else m["content"] for m in shown]
    return "\n\n".join(turns) + (f"\n\n{NO_TEMPLATE_ANSWER}" if add_generation_prompt else "")


def plain_chat_template(tokenizer: Any, system_prompt: str | None = None) -> str | None:
    """The chat template an exported model without one carries: ``render_chat``'s plain turns as Jinja, after the
    tokenizer's BOS where its encode() puts one, with EOS after each answer (as ``tokenize_sft`` trains it and
    ``_plain_prompt_ids`` asks) and ``system_prompt`` as the default (as ``template_with_system_prompt`` gives a
    template). Without it, transformers and vLLM refuse to chat with the exported folder, llama.cpp falls back to
    ChatML and Ollama sends the raw text. None: the tokenizer has a template.

    A one-turn request renders to the run's own prompt ids (one text, as ``_plain_prompt_ids`` encodes it). A request
    with earlier answers renders to the run's text, but a template's text is encoded whole, and BPE may merge "Answer: "
    with the answer's first characters where training encoded each answer apart: no template can give those ids.

    Raises:
        DataError: when the template renders a probe otherwise than ``render_chat``.
    """
    if getattr(tokenizer, "chat_template", None):
        return None
    encoded = tokenizer("x")["input_ids"]
    bos = tokenizer.bos_token if encoded and tokenizer.bos_token_id is not None and encoded[0] == tokenizer.bos_token_id else ""
    answer = json.dumps(NO_TEMPLATE_ANSWER)
    default = ""
    if system_prompt:
        literal = json.dumps(system_prompt, ensure_ascii=False)  # a Jinja string literal (see template_with_system_prompt)
        default = (
            "{%- if not messages or messages[0]['role'] != 'system' %}"
            f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages %}}{{%- endif %}}"
        )
    result = (
        default + ("{{- bos_token }}" if bos else "")
        + "{%- for message in messages %}{%- if not loop.first %}{{- '\\n\\n' }}{%- endif %}"
        f"{{%- if message['role'] == 'assistant' %}}{{{{- {answer} ~ message['content'] ~ eos_token }}}}"
        "{%- else %}{{- message['content'] }}{%- endif %}{%- endfor %}"
        f"{{%- if add_generation_prompt %}}{{{{- '\\n\\n' ~ {answer} }}}}{{%- endif %}}"
    )
    probes = [[{"role": "user", "content": "x"}], [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]]
    answered = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"}]
    expected = [bos + render_chat(tokenizer, with_system_prompt(p, system_prompt), add_generation_prompt=True) for p in probes]
    earlier = render_chat(tokenizer, with_system_prompt(answered[:2], system_prompt))
    opened = render_chat(tokenizer, with_system_prompt(answered, system_prompt), add_generation_prompt=True)
    expected.append(bos + earlier + (tokenizer.eos_token or "") + opened[len(earlier) :])
    try:
        tokenizer.chat_template = result
        rendered = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in [*probes, answered]]
    except TemplateError:
        rendered = None
    finally:
        tokenizer.chat_template = None
    if rendered != expected:
        raise DataError(
            f"the plain prompt of {_model_name(tokenizer)} (no chat template) cannot be written as a chat template",
            "prompt the exported model as render_chat writes it (plain turns, 'Answer: ' before each answer)",
        )
    return result


def template_with_system_prompt(tokenizer: Any, system_prompt: str | None) -> str | None:
    """``tokenizer``'s chat template with ``system_prompt`` as its default: put first when a conversation brings no
    system message (``with_system_prompt``), or folded into the first user turn for a template without a system role
    (``_apply_template``). What an exported model folder carries, so plain transformers, vLLM and ``tunelab serve`` of
    that folder prompt the model as its run was trained, judged and served. None: no template, or no system prompt.

    Raises:
        DataError: when the template given the default renders a request otherwise than the run's prompt.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not system_prompt or not isinstance(template, str):
        return None
    # A JSON string is a Jinja string literal (escapes included); Jinja syntax inside it stays text.
    literal = json.dumps(system_prompt, ensure_ascii=False)
    probe = [{"role": "user", "content": "x"}]
    try:
        tokenizer.apply_chat_template([{"role": "system", "content": "x"}, *probe], tokenize=False)
        default = (
            "{%- if not messages or messages[0]['role'] != 'system' %}"
            f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages %}}{{%- endif %}}"
        )
    except TemplateError:
        # A request's own system message is folded here too (as _fold_system does): tunelab folds it before the
        # template sees it, so a default that only looked for a system message would put the run's in front of it.
        default = (
            "{%- if messages | length > 1 and messages[0]['role'] == 'system' and messages[1]['role'] == 'user'"
            " and messages[0]['content'] is string and messages[1]['content'] is string %}"
            "{%- set messages = [{'role': 'user', 'content': messages[0]['content'] ~ '\\n\\n' ~ messages[1]['content']}] + messages[2:] %}"
            "{%- elif messages and messages[0]['role'] == 'user' and messages[0]['content'] is string %}"
            f"{{%- set messages = [{{'role': 'user', 'content': {literal} ~ '\\n\\n' ~ messages[0]['content']}}] + messages[1:] %}}"
            "{%- endif %}"
        )
    result = default + template
    original = tokenizer.chat_template
    try:
        expected = render_chat(tokenizer, with_system_prompt(probe, system_prompt), add_generation_prompt=True)
        tokenizer.chat_template = result
        rendered = render_chat(tokenizer, probe, add_generation_prompt=True)
    finally:
        tokenizer.chat_template = original
    if rendered != expected:
        raise DataError(
            f"the chat template of {_model_name(tokenizer)} cannot carry the system prompt as its default",
            "pass the system prompt in every request (data.system_prompt in the run's config.yaml)",
        )
    return result


def end_of_turn(tokenizer: Any, answer: list[int], eos: int | None) -> int | None:
    """How many of an assistant turn's ids are trained: through its end-of-turn token; None: the template wrote none.

    What the template adds after that token (Gemma's and ChatML's newline) is not the answer. A turn that ends
    with a special token other than EOS (Gemma's ``<end_of_turn>``, Llama 3's ``<|eot_id|>``, Phi-3's ``<|end|>``)
    gets no EOS after it: the model would learn tokens no chat runtime sends, and in a dialogue an EOS
    in the middle of every later turn's context (generation stops at these tokens: ``models.generate``).
    """
    if eos is not None and eos in answer:
        return len(answer) - answer[::-1].index(eos)
    if not getattr(tokenizer, "chat_template", None):
        return None  # the plain "Answer: " turns have no end-of-turn token of their own
    # Turn markers are special without being named (Llama 3's <|eot_id|>): the added tokens flagged special count too.
    special = set(tokenizer.all_special_ids)
    special |= {i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(token, "special", False)}
    end = len(answer)
    while end and answer[end - 1] not in special and not tokenizer.decode([answer[end - 1]]).strip():
        end -= 1
    return end if end and answer[end - 1] in special else None


def answer_ids(tokenizer: Any, opened: str, full: str, opened_ids: list[int] | None = None) -> list[int]:
    """The ids of the answer ``full`` adds to ``opened`` (a prompt's text with the assistant turn opened; ``opened_ids``:
    its ids encoded whole, where the caller has them).

    With a chat template: the ids the whole text has after the prompt's, as a runtime encodes the template's text (a
    SentencePiece tokenizer puts "▁" before a text encoded on its own); the answer's text alone where the whole text
    merges a token across the answer's start. The plain turns' answers are always encoded alone (``_plain_prompt_ids``).
    """
    if getattr(tokenizer, "chat_template", None):
        whole = tokenizer.encode(full, add_special_tokens=False)
        start = tokenizer.encode(opened, add_special_tokens=False) if opened_ids is None else opened_ids
        if whole[: len(start)] == start:
            return whole[len(start) :]
    answer = full[len(opened) :]
    return tokenizer.encode(answer, add_special_tokens=False) if answer else []


# appends_eos of a tokenizer, by what its answer depends on: it is asked for every later turn of every dialogue.
_APPENDS_EOS: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], bool]] = weakref.WeakKeyDictionary()


def appends_eos(tokenizer: Any) -> bool:
    """Whether ``tokenize_sft`` adds EOS after this tokenizer's assistant turns (the data check's lengths count it, and
    ``render_prompt_ids`` then puts it after each earlier answer, as training has it)."""
    key = (getattr(tokenizer, "chat_template", None), tokenizer.eos_token_id, len(tokenizer))
    try:
        cached = _APPENDS_EOS.get(tokenizer)
    except TypeError:  # a tokenizer that cannot be weakly referenced is probed each time
        return _probe_appends_eos(tokenizer)
    if cached is None or cached[0] != key:
        cached = (key, _probe_appends_eos(tokenizer))
        _APPENDS_EOS[tokenizer] = cached
    return cached[1]


def _probe_appends_eos(tokenizer: Any) -> bool:
    probe = [{"role": "user", "content": "hi"}]
    try:
        prompt = render_chat(tokenizer, probe, add_generation_prompt=True)
        full = render_chat(tokenizer, [*probe, {"role": "assistant", "content": "ok"}], add_generation_prompt=False)
    except DataError:
        # A template that refuses this conversation (one wanting a system turn first): the check counts an EOS per
        # turn, as it did before this rule; the records themselves are rendered (and refused) as they are.
        return True
    return end_of_turn(tokenizer, answer_ids(tokenizer, prompt, full), tokenizer.eos_token_id) is None


def pieced_prompt(tokenizer: Any, messages: Sequence[Message]) -> bool:
    """Whether ``render_prompt_ids`` gives a templated ``messages`` in pieces (``_plain_prompt_ids``), not as the
    template's text encoded whole: an earlier answer the template closes with no token of its own is closed by the
    EOS trained after it, which that text lacks."""
    answered = any(m["role"] == "assistant" and not m.get(FEW_SHOT_ANSWER) for m in messages)
    return answered and appends_eos(tokenizer)


def render_prompt_ids(tokenizer: Any, messages: list[Message], tools: Sequence[dict[str, Any]] = ()) -> list[int]:
    """Token ids of ``messages`` with the assistant turn opened, ready for the answer's first token.

    With a chat template: its text encoded whole, as any chat runtime sends it. Without one, or with one that closes
    an answer with no token of its own (a newline only): the ids ``tokenize_sft`` trains before an answer
    (``_plain_prompt_ids``, each earlier answer closed by the EOS trained after it).

    Raises:
        DataError: when the chat template refuses the conversation (see ``_apply_template``).
    """
    if getattr(tokenizer, "chat_template", None) and not pieced_prompt(tokenizer, messages):
        shown, extra = chat_inputs(tokenizer, messages, tools)
        ids = _apply_template(tokenizer, shown, extra, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    return _plain_prompt_ids(tokenizer, messages, tools)


def _plain_prompt_ids(tokenizer: Any, messages: Sequence[Message], tools: Sequence[dict[str, Any]]) -> list[int]:
    """The prompt ids of a model without a chat template, or with one that closes an answer with no token of its own:
    ``render_chat``'s text cut at each assistant answer, each piece tokenized on its own (only the first with the
    tokenizer's special tokens, e.g. a BOS, where no template writes its own), each earlier answer (``answer_ids``)
    closed by EOS. ``tokenize_sft`` takes the context before every answer it trains from here.

    The inference side follows training, not the reverse: the model must learn to stop, so each trained answer ends
    with EOS, and that EOS stays in the context of the later turns; a runtime that let the model answer the earlier
    turn has it there too (generation ended on it). The pieces are tokenized apart because the answers are: encoded
    whole, "Answer: four" merges " four" into a token the model never saw before an answer it learnt. A prompt with
    no earlier answer is one piece, the whole text, as it always was; so is a few-shot prompt (``FEW_SHOT_ANSWER``):
    the base model it asks was trained on none of this, and reads its examples best as one document (to a base model
    an EOS ends a document, and the examples before it would count for little).
    """
    ids: list[int] = []
    rendered = ""
    # A chat template writes its own BOS (and encode()'s would double it); the plain turns get the tokenizer's.
    own_specials = not getattr(tokenizer, "chat_template", None)
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or message.get(FEW_SHOT_ANSWER):
            continue
        opened = render_chat(tokenizer, messages[:index], tools=tools, add_generation_prompt=True)
        ids += tokenizer.encode(opened[len(rendered) :], add_special_tokens=own_specials and not rendered)
        rendered = render_chat(tokenizer, messages[: index + 1], tools=tools)
        answer = answer_ids(tokenizer, opened, rendered)
        # As tokenize_sft trains it: EOS after the answer, unless the answer's text already wrote an end of turn.
        closed = end_of_turn(tokenizer, answer, tokenizer.eos_token_id) is not None
        ids += answer if closed else [*answer, tokenizer.eos_token_id]
    opened = render_chat(tokenizer, messages, tools=tools, add_generation_prompt=True)
    return ids + tokenizer.encode(opened[len(rendered) :], add_special_tokens=own_specials and not rendered)


def few_shot_chat(prompt_messages: Sequence[Message], examples: Sequence[tuple[Sequence[Message], str]]) -> list[Message]:
    """An sft prompt with solved (prompt messages, answer) examples first, as earlier turns of the chat.

    System messages stay first (the prompt's own); the examples' system messages are dropped.
    """
    system = [dict(m) for m in prompt_messages if m["role"] == "system"]
    turns: list[Message] = []
    for messages, answer in examples:
        turns += [dict(m) for m in messages if m["role"] != "system"]
        turns.append({"role": "assistant", "content": answer, FEW_SHOT_ANSWER: True})
    return system + turns + [dict(m) for m in prompt_messages if m["role"] != "system"]
