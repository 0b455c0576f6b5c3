"""Turn records into token ids and loss masks: exactly what the model will be trained on.

- sft: the conversation rendered with the model's chat template; labels are -100 everywhere except
  the assistant turns, whose content *and* end-of-turn token are trained (so the model learns to
  stop). A conversation longer than ``max_length`` loses the start of its context (TRL's "keep end",
  as evaluation and serving cut a long prompt), never a trained token while context is left to cut. The end of turn is the template's own (``<|im_end|>``, Gemma's ``<end_of_turn>``, Llama 3's
  ``<|eot_id|>``): EOS is added only after a turn the template ends with no special token. An
  assistant message with ``"weight": 0`` (OpenAI's fine-tuning format) is not trained; tool results
  are context, the assistant's tool calls are trained, the tool schemas reach the template.
- text: each document (after the tokenizer's own BOS where it adds one, as a served prompt has it;
  + EOS) becomes one example when it fits ``max_length``; a longer document becomes sliding windows
  of ``max_length`` tokens every ``stride`` tokens. Where windows overlap, the repeated tokens are
  masked in the later window, so every token is predicted exactly once (training and perplexity
  alike). Short examples are packed into full rows by the training collate, with attention isolated
  per example, instead of being padded.
- preference: the prompt with the chosen answer and, separately, with the rejected one, each as an
  sft conversation whose only trained turn is that last answer (earlier assistant turns of a
  dialogue are context). When a pair is too long, both sequences lose the same tokens from the
  start of the prompt (TRL's "keep end"), so chosen and rejected are scored on the same context.
- classify: the prompt (instruction + text, assistant turn opened) and the index of the label
  whose single token the model must answer. No label token is in the input: the last position
  predicts it.

Examples are cached under the user cache by a fingerprint of the tokenizer, the settings and the
records, so tokenizing the same data again costs a file read. The cache is plain JSON (data only:
reading it can never run code, as unpickling a crafted file did), and an entry that does not read
back as examples of the right shape is rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tunelab.data import templates
from tunelab.data.labels import LabelMap
from tunelab.data.records import ClassifyRecord, PreferenceRecord, SFTRecord, TextRecord
from tunelab.data.templates import classify_messages, render_chat, render_prompt_ids, with_system_prompt
from tunelab.errors import DataError
from tunelab.paths import cache_dir

IGNORE_INDEX = -100


@dataclass
class TokenizedExample:
    """A causal-LM example: ``labels[t]`` is the target of position t (-100: no loss).

    Labels are aligned with ``input_ids`` (transformers shifts them inside the loss).
    """

    input_ids: list[int]
    labels: list[int]
    source: str = ""
    truncated: bool = False

    @property
    def trained_tokens(self) -> int:
        """Tokens that carry loss (position 0 never does: nothing precedes it)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


@dataclass
class ClassifyExample:
    """A classify example: the prompt's ids and the index of its label in the LabelMap."""

    input_ids: list[int]
    label: int
    source: str = ""
    truncated: bool = False


@dataclass
class PreferenceExample:
    """A preference pair: prompt + chosen and prompt + rejected, labels on the answer tokens only.

    ``reference_chosen`` / ``reference_rejected``: the reference model's summed log-probabilities of
    the two answers, filled in once before training (``tunelab.tasks.preference``).
    """

    chosen_ids: list[int]
    chosen_labels: list[int]
    rejected_ids: list[int]
    rejected_labels: list[int]
    source: str = ""
    truncated: bool = False
    reference_chosen: float | None = None
    reference_rejected: float | None = None

    @property
    def chosen_tokens(self) -> int:
        return sum(1 for label in self.chosen_labels[1:] if label != IGNORE_INDEX)

    @property
    def rejected_tokens(self) -> int:
        return sum(1 for label in self.rejected_labels[1:] if label != IGNORE_INDEX)

    @property
    def differs(self) -> bool:
        """Whether the two answers, as cut to max_length, are different tokens (else neither can be preferred: training
        and evaluation both leave such a pair out)."""
        return self.chosen_ids != self.rejected_ids

    @property
    def trainable(self) -> bool:
        """Both answers keep at least one token within max_length (else the pair teaches nothing)."""
        return self.chosen_tokens > 0 and self.rejected_tokens > 0


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0
    untrainable: list[str] = field(default_factory=list)  # sources whose every target token was cut


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def _document_start(tokenizer: Any) -> list[int]:
    """``[BOS]`` when the tokenizer's ``encode`` puts its BOS before a text, else ``[]``."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    added = tokenizer.encode("a", add_special_tokens=True)
    return [bos] if added[:1] == [bos] and tokenizer.encode("a", add_special_tokens=False)[:1] != [bos] else []


def _eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; tunelab needs one to teach the model to stop")
    return tokenizer.eos_token_id


def _conversation_end(tokenizer: Any) -> str:
    """The text a chat template writes after a conversation's last message only ("" for most): Phi-3's writes EOS when
    no assistant turn is opened, so an answer rendered last ends with it and the same answer before the next turn does
    not. It is no part of the answer's turn: training leaves it out, as every later turn's context does."""
    eos = tokenizer.eos_token or ""
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    try:
        closed = render_chat(tokenizer, probe)
        followed = render_chat(tokenizer, [*probe, {"role": "user", "content": "hi"}], add_generation_prompt=True)
    except DataError:
        return ""
    if eos and not followed.startswith(closed) and closed.endswith(eos) and followed.startswith(closed[: -len(eos)]):
        return eos
    return ""


def tokenize_sft(record: SFTRecord, tokenizer: Any, max_length: int, system_prompt: str | None = None) -> TokenizedExample:
    """Render ``record`` (after ``system_prompt``) with the chat template and mask everything but the trained assistant turns.

    The context before each assistant turn is the prompt inference sends for the conversation up to it
    (``render_prompt_ids``; user, system and tool turns are context, never trained), and the answer is
    the ids the whole text has after that prompt's text. Tool calls and the record's tool schemas go
    through ``templates.render_chat``.

    Raises:
        DataError: when the chat template refuses the conversation, or does not render (or the tokenizer
            encode) a conversation's beginning the same way as the whole conversation (the trained tokens
            could not be found).
    """
    eos = _eos_id(tokenizer)
    input_ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    messages = with_system_prompt(list(record.messages), system_prompt)
    templated = bool(getattr(tokenizer, "chat_template", None))
    closing: str | None = None  # _conversation_end, probed only for an answer whose text ends with EOS

    def render(upto: int, *, opened: bool) -> str:
        try:
            text = render_chat(tokenizer, messages[:upto], tools=record.tools, add_generation_prompt=opened)
        except DataError as error:
            raise DataError(f"{record.source}: {error.message}", error.hint) from None
        if not text.startswith(rendered):
            # Masking by position here would train on the wrong tokens (Qwen3's template, for one, drops an earlier
            # turn's reasoning once a user turn follows it).
            raise DataError(
                f"{record.source}: the chat template of {getattr(tokenizer, 'name_or_path', '') or 'the model'} renders "
                f"an earlier turn differently once turn {upto} follows it, so the assistant's tokens cannot be told apart",
                "give each record one assistant turn to learn (the earlier turns as context in it), or use a model whose "
                "template renders each turn the same way whatever follows",
            )
        return text

    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        # The generation prompt (e.g. "<|im_start|>assistant\n") belongs to the prompt side.
        with_prompt = render(index, opened=True)
        # The context before each answer is the inference prompt itself (``render_prompt_ids``: a template's text
        # encoded whole, as evaluation, serve and any chat runtime send it; the plain turns and a template that closes
        # an answer with no token of its own get each earlier answer closed by the EOS added after it below).
        opened_ids = None
        if templated and not templates.pieced_prompt(tokenizer, messages[:index]):
            # What render_prompt_ids gives, the text just rendered encoded whole (not rendered a third time).
            prompt = opened_ids = _encode(tokenizer, with_prompt)
        else:
            prompt = render_prompt_ids(tokenizer, messages[:index], record.tools)
        if prompt[: len(input_ids)] != input_ids:
            raise DataError(
                f"{record.source}: the tokenizer of {getattr(tokenizer, 'name_or_path', '') or 'the model'} encodes the "
                f"conversation before turn {index} otherwise than its beginning, so the context trained is not the prompt served",
                "give each record one assistant turn to learn (the earlier turns as context in it)",
            )
        piece = prompt[len(input_ids) :]
        input_ids += piece
        labels += [IGNORE_INDEX] * len(piece)
        full = render(index + 1, opened=False)
        if templated and tokenizer.eos_token and full.endswith(tokenizer.eos_token):
            closing = _conversation_end(tokenizer) if closing is None else closing
            full = full[: len(full) - len(closing)]
        answer = templates.answer_ids(tokenizer, with_prompt, full, opened_ids)
        rendered = full
        train = float(message.get("weight", 1)) != 0
        end = templates.end_of_turn(tokenizer, answer, eos)
        if end is None:
            answer = answer + [eos]
            end = len(answer)
        input_ids += answer
        labels += [(t if train and i < end else IGNORE_INDEX) for i, t in enumerate(answer)]
    truncated = len(input_ids) > max_length
    if truncated:
        # The prompt loses its start, never the answer (TRL's "keep end", as for a preference pair): keeping the start
        # dropped every row with a long prompt, and the model is asked with a long prompt's end (``inference.chat_prompt``).
        cut = _prompt_cut([labels], max_length)
        input_ids, labels = input_ids[cut : cut + max_length], labels[cut : cut + max_length]
    return TokenizedExample(input_ids, labels, record.source, truncated)


def tokenize_preference(record: PreferenceRecord, tokenizer: Any, max_length: int, system_prompt: str | None = None) -> PreferenceExample:
    """Tokenize a pair as two sft conversations trained on their last answer only (see the module docstring)."""
    # weight 0: earlier assistant turns of a dialogue are context, never trained on.
    context = [dict(m, weight=0) if m["role"] == "assistant" else dict(m) for m in record.prompt]
    sides = []
    for answer in (record.chosen, record.rejected):
        conversation = SFTRecord(tuple([*context, {"role": "assistant", "content": answer}]), source=record.source)
        sides.append(tokenize_sft(conversation, tokenizer, max_length=10**9, system_prompt=system_prompt))
    (chosen, rejected) = sides
    truncated = max(len(chosen.input_ids), len(rejected.input_ids)) > max_length
    if truncated:
        cut = _prompt_cut([chosen.labels, rejected.labels], max_length)
        for side in sides:
            side.input_ids, side.labels = side.input_ids[cut : cut + max_length], side.labels[cut : cut + max_length]
    return PreferenceExample(
        chosen.input_ids, chosen.labels, rejected.input_ids, rejected.labels, record.source, truncated
    )


def _first_target(labels: Sequence[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))


def _prompt_cut(sequences: Sequence[Sequence[int]], max_length: int) -> int:
    """How many tokens the sequences (labels of one prompt's answers) lose from their start to fit ``max_length``:
    only untrained context before the first trained token, of which one token stays so the first answer token still
    has a position predicting it; what is still too long then loses the answer's end."""
    longest = max(len(labels) for labels in sequences)
    prompt_length = min(_first_target(labels) for labels in sequences)
    return max(0, min(longest - max_length, prompt_length - 1))


def perplexity_stride(data_config: Any) -> int:
    """The stride of perplexity's windows over a held-out document (``data_config``: the run's ``data`` section): they
    overlap by at least half a window, so every token after a document's first has context."""
    half = max(1, data_config.max_length // 2)
    return min(data_config.stride or half, half)


def window_step(max_length: int, stride: int | None = None) -> int:
    """How many tokens each training window of a text document starts after the one before: ``stride`` (default
    ``max_length``), at most ``max_length - 1``. A window's first token is context only (nothing before it in the window
    predicts it), so the next window starts at the latest on this one's last token, and every token is learnt."""
    return min(stride or max_length, max_length - 1)


def tokenize_text(
    record: TextRecord, tokenizer: Any, max_length: int, stride: int | None = None, *, scoring: bool = False,
) -> list[TokenizedExample]:
    """Split one document (after the tokenizer's own BOS where it adds one, + EOS) into windows of ``max_length`` tokens
    every ``stride`` tokens (at most ``max_length - 1``: windows share at least one token), each token after the
    document's first a training target in exactly one window.

    ``scoring`` (perplexity and bits per byte): the document's own tokens are the targets, each in exactly one window,
    after one token of context (the BOS, else the EOS: lm-evaluation-harness's rolling loglikelihood), and no EOS is
    appended: the NLL is of exactly the tokens whose bytes bits per byte counts."""
    stride = stride or max_length
    if not 0 < stride <= max_length:
        raise ValueError(f"stride must be in 1..max_length ({max_length}), got {stride}")
    # A document starts as a served prompt does (``inference.completion_prompt``): after the BOS the tokenizer puts
    # before a text of its own accord (Llama, Gemma, Mistral; none for SmolLM2, Qwen, GPT-2). The first token is never
    # a target, so the BOS is context, never predicted.
    context = _document_start(tokenizer)
    if scoring:
        context = context or [_eos_id(tokenizer)]
        ids = context + _encode(tokenizer, record.text)
    else:
        ids = context + _encode(tokenizer, record.text) + [_eos_id(tokenizer)]
    context_only = len(context) if scoring else 0
    if len(ids) <= max_length:
        return [TokenizedExample(ids, [IGNORE_INDEX] * context_only + ids[context_only:], record.source)]
    windows = []
    start = 0
    predicted_until = context_only  # tokens before this index were already targets in an earlier window, or are context
    while True:
        window = ids[start : start + max_length]
        labels = [token if start + i >= predicted_until else IGNORE_INDEX for i, token in enumerate(window)]
        windows.append(TokenizedExample(window, labels, f"{record.source}#window{len(windows)}"))
        predicted_until = start + len(window)
        if start + max_length >= len(ids):
            break
        start += window_step(max_length, stride)
    return windows


def tokenize_classify(
    record: ClassifyRecord,
    tokenizer: Any,
    label_map: LabelMap,
    max_length: int,
    system_prompt: str | None = None,
    *,
    messages_fn: Any = None,
) -> ClassifyExample:
    """The classify prompt's ids (text shortened to fit ``max_length``) and the label's index.

    ``messages_fn(text) -> messages`` replaces the training prompt (the baseline uses the zero-shot one).

    Raises:
        KeyError: when the record's label is not in ``label_map``.
    """
    build = messages_fn or (lambda text: classify_messages(text, system_prompt))
    ids = render_prompt_ids(tokenizer, build(record.text))
    truncated = False
    if len(ids) > max_length:
        # Shorten the text, never the template: the opened assistant turn is where the label goes.
        truncated = True
        text_ids = _encode(tokenizer, record.text)
        keep = len(text_ids) - (len(ids) - max_length)
        while keep > 0:
            ids = render_prompt_ids(tokenizer, build(tokenizer.decode(text_ids[:keep])))
            if len(ids) <= max_length:
                break
            keep -= max(1, len(ids) - max_length)
        if len(ids) > max_length:
            # Even the bare template is longer than max_length: keep its end, where the answer starts.
            ids = ids[-max_length:]
    label = label_map.index(record.label) if record.label in label_map.labels else -1
    if label < 0:
        raise KeyError(record.label)
    return ClassifyExample(ids, label, record.source, truncated)


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix of ``sequences``, short enough that each keeps one own token.

    Every sequence must keep at least one token after the prefix: the last position's hidden state is
    what gets scored (classify).
    """
    if not sequences:
        return 0
    first = list(sequences[0])
    length = min(len(p) for p in sequences) - 1
    for sequence in sequences[1:]:
        same = 0
        limit = min(length, len(sequence))
        while same < limit and sequence[same] == first[same]:
            same += 1
        length = same
        if length == 0:
            break
    return max(length, 0)


# Below this many shared tokens a prefix cache saves less than its extra forward pass costs.
MIN_SHARED_PREFIX = 16


def training_prefix(prompts: Sequence[Sequence[int]], *, enabled: bool = True) -> tuple[int, ...] | None:
    """The token prefix classify training runs once per micro-batch (``train.prefix_reuse``); None: full prompts.

    The longest prefix all ``prompts`` (training and validation) share, when it is at least
    ``MIN_SHARED_PREFIX`` tokens long.
    """
    if not enabled or not prompts:
        return None
    length = shared_prefix_length(prompts)
    return tuple(prompts[0][:length]) if length >= MIN_SHARED_PREFIX else None


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything about a tokenizer that changes its output."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
    digest.update(str(getattr(tokenizer, "chat_template", "")).encode())
    digest.update(str(tokenizer.eos_token_id).encode())
    return digest.hexdigest()[:16]


@functools.cache
def code_fingerprint() -> str:
    """A hash of the code that turns records into tokens (this module and the prompt templates).

    Part of the cache key: a tunelab version that masks, windows or prompts differently never reads examples
    cached by another (an edit to either file costs one re-tokenization, a few seconds).
    """
    digest = hashlib.sha256()
    for module in (__file__, templates.__file__):
        try:
            digest.update(Path(module).read_bytes())
        except OSError:  # installed without its sources (bytecode only): the package version stands in
            from tunelab import __version__

            digest.update(__version__.encode())
    return digest.hexdigest()[:16]


def _cache_key(kind: str, tokenizer: Any, settings: dict, records: Sequence[Any]) -> str:
    digest = hashlib.sha256()
    digest.update(kind.encode())
    digest.update(code_fingerprint().encode())
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for record in records:
        digest.update(record.id.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


CACHE_FORMAT = "tunelab-tokenized/1"
_EXAMPLE_TYPES = {"sft": TokenizedExample, "text": TokenizedExample, "classify": ClassifyExample, "preference": PreferenceExample}


def _encode_cache(kind: str, examples: list, stats: TokenizeStats) -> str:
    return json.dumps(
        {"format": CACHE_FORMAT, "kind": kind, "examples": [asdict(e) for e in examples], "stats": asdict(stats)},
        separators=(",", ":"),
    )


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(type(item) is int for item in value)


def _decode_cache(kind: str, text: str) -> tuple[list, TokenizeStats]:
    """The examples and stats of a cache entry.

    Raises:
        ValueError: for anything but examples of ``kind`` in the shape this version writes.
    """
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("kind") != kind:
        raise ValueError("not a tokenization cache entry of this kind")
    cls = _EXAMPLE_TYPES[kind]
    names = {f.name for f in fields(cls)}
    examples = []
    for item in data["examples"]:
        if not isinstance(item, dict) or set(item) != names:
            raise ValueError("an example of another shape")
        example = cls(**item)
        ids = [v for k, v in item.items() if k.endswith(("_ids", "labels"))]
        if not all(_int_list(v) for v in ids) or not isinstance(item.get("source"), str) or type(item.get("label", 0)) is not int:
            raise ValueError("an example with ids that are not integers")
        examples.append(example)
    stats = data["stats"]
    if not isinstance(stats, dict) or set(stats) != {f.name for f in fields(TokenizeStats)}:
        raise ValueError("no stats")
    return examples, TokenizeStats(**stats)


def _cached(key: str, kind: str, build: Any, use_cache: bool) -> Any:
    path: Path = cache_dir() / "tokenized" / f"{key}.json"
    if use_cache and path.is_file():
        try:
            return _decode_cache(kind, path.read_text(encoding="utf-8"))
        except Exception:  # noqa: BLE001 - whatever is wrong with an entry, it is rebuilt, never trusted
            path.unlink(missing_ok=True)
    result = build()
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                tmp.write_text(_encode_cache(kind, *result), encoding="utf-8")
                tmp.replace(path)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError:
            pass  # caching is an optimisation; an unwritable (or full) cache must not fail a run
    return result


def tokenize_records(
    records: Sequence[Any],
    task: str,
    tokenizer: Any,
    *,
    max_length: int,
    stride: int | None = None,
    label_map: LabelMap | None = None,
    system_prompt: str | None = None,
    use_cache: bool = True,
) -> tuple[list[TokenizedExample] | list[ClassifyExample] | list[PreferenceExample], TokenizeStats]:
    """Tokenize a list of records of one task (cached by content fingerprint).

    Raises:
        ValueError: for an unknown task, or classify without a label map.
    """
    settings = {"max_length": max_length, "stride": stride, "system_prompt": system_prompt}
    if task == "classify":
        if label_map is None:
            raise ValueError("classify needs a label map")
        settings["labels"] = label_map.to_dict()
        # The prompt written around each text is part of the key, besides the code's fingerprint: a prompt
        # replaced at run time (a prototype patching classify_messages) must never train on the old prompt's tokens.
        settings["prompt"] = classify_messages("{text}", system_prompt)

    def build() -> tuple[list, TokenizeStats]:
        stats = TokenizeStats()
        examples: list = []
        for record in records:
            if task == "sft":
                example = tokenize_sft(record, tokenizer, max_length, system_prompt)
                if example.trained_tokens == 0:
                    stats.untrainable.append(record.source)
                examples.append(example)
            elif task == "text":
                examples.extend(tokenize_text(record, tokenizer, max_length, stride))
            elif task == "classify":
                examples.append(tokenize_classify(record, tokenizer, label_map, max_length, system_prompt))
            elif task == "preference":
                example = tokenize_preference(record, tokenizer, max_length, system_prompt)
                if not example.trainable:
                    stats.untrainable.append(record.source)
                examples.append(example)
            else:
                raise ValueError(f"task {task!r} has no tokenization here")
        stats.examples = len(examples)
        stats.truncated = sum(1 for e in examples if e.truncated)
        return examples, stats

    return _cached(_cache_key(task, tokenizer, settings, records), task, build, use_cache)
