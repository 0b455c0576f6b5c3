"""One answer per input: the classify inference and the prompt preparation that every path uses.

Evaluation, ``tunelab generate``, ``tunelab serve`` and the web interface answer through these, so the
model that is judged answers exactly as the model that is served:

- :class:`Classifier` — a classify model's answer to a text: its prompt (the run's system prompt and
  instruction, or a baseline's zero-shot / few-shot prompt), the text shortened to the run's
  ``max_length`` as in training (and to the model's context: ``models.generate.context_length``), the prompt's fixed prefix computed once (its KV cache), the label tokens'
  rows of the head (with a run's trained label head), the probabilities, and the out-of-scope threshold.
  A server's engine batches requests from many clients and hands each batch to the same
  :meth:`Classifier.probabilities`.
- :func:`chat_prompt` — a chat request's token ids: the run's system prompt when the request brings
  none, the model's chat template with the assistant turn opened, and a prompt longer than the run's
  ``max_length`` keeping its end (where the answer starts), as evaluation always did.
  :func:`completion_prompt` is the same for raw text (a text run continues documents, no template).
- :func:`few_shot_budget`, :func:`few_shot_sft_examples` / :func:`few_shot_sft_chats` (sft) and
  :func:`few_shot_classify_examples` / :func:`zero_shot_extra_tokens` (classify) — the few-shot prompts: which
  solved training examples fit ``eval.few_shot_tokens``, and each request after them. The ``few_shot`` baseline
  sends these; the estimate counts their tokens and whether the baseline will be skipped.
- Decoding (stop ids, left padding, greedy or seeded sampling) is ``tunelab.models.generate``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tunelab.data.labels import LabelMap, OutOfScope
from tunelab.data.records import ClassifyRecord, Message, SFTRecord
from tunelab.data.templates import (
    classify_messages,
    few_shot_chat,
    few_shot_messages,
    render_prompt_ids,
    with_system_prompt,
    zero_shot_messages,
)
from tunelab.data.tokenize import MIN_SHARED_PREFIX, shared_prefix_length, tokenize_classify
from tunelab.models.generate import context_length
from tunelab.models.heads import causal_lm_of
from tunelab.models.heads import label_logits as head_label_logits
from tunelab.models.prefix import last_hidden_after_prefix, prefix_cache
from tunelab.runtime import following_free_cores

Progress = Callable[[int], None]
PROBES = ("a", "b")  # two texts whose prompts differ only in the text: what they share is the prompt's fixed prefix


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _by_length(sequences: Sequence[Sequence[int]], indices: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(indices, key=lambda i: len(sequences[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def state_buffer(model: Any, count: int) -> np.ndarray:
    """An array for ``count`` final hidden states of ``model`` (the ``features`` of :func:`label_logits`)."""
    return np.zeros((count, causal_lm_of(model).get_decoder().config.hidden_size), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def label_logits(
    model: Any, prompts: Sequence[Sequence[int]], label_token_ids: Sequence[int], *, batch_size: int = 16,
    progress: Progress | None = None, label_head: Any = None, indices: Sequence[int] | None = None, out: np.ndarray | None = None,
    follow_cores: bool = True, features: np.ndarray | None = None,
) -> np.ndarray:
    """Logits of the label tokens at each prompt's last position, shape (prompts, labels).

    One forward pass of the decoder per batch (prompts bucketed by length); the last hidden state is
    multiplied by the label tokens' rows of the head only, so no full-vocabulary logits are built.
    Prompts are right-padded: with causal attention the real tokens never see the padding, and each
    row's last real position is gathered. ``label_head``: a classify run's trained label rows. ``follow_cores``:
    torch's threads follow the free cores between batches (an evaluation beside other jobs; a server's engine,
    which answers one small batch at a time, leaves them as they are). ``features``: an array (prompts, hidden)
    filled with each prompt's final hidden state, the one the label rows read (an out-of-scope score uses it).
    """
    decoder = causal_lm_of(model).get_decoder()
    device = _device(model)
    label_ids = torch.tensor(list(label_token_ids), dtype=torch.long, device=device)
    result = out if out is not None else np.zeros((len(prompts), len(label_ids)), dtype=np.float32)
    batches = _by_length(prompts, range(len(prompts)) if indices is None else indices, batch_size)
    for batch in following_free_cores(batches, device.type) if follow_cores else batches:
        longest = max(len(prompts[i]) for i in batch)
        input_ids = torch.zeros((len(batch), longest), dtype=torch.long)
        attention = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, index in enumerate(batch):
            ids = list(prompts[index])
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, : len(ids)] = 1
        last = attention.sum(dim=1) - 1
        with torch.inference_mode():
            hidden = decoder(input_ids=input_ids.to(device), attention_mask=attention.to(device)).last_hidden_state
            final = hidden[torch.arange(len(batch), device=device), last.to(device)]
            logits = head_label_logits(model, final, label_ids, label_head)
        result[batch] = logits.float().cpu().numpy()
        if features is not None:
            features[batch] = final.float().cpu().numpy()
        if progress:
            progress(len(batch))
    return result


def prefix_label_logits(
    model: Any, prompts: Sequence[Sequence[int]], label_token_ids: Sequence[int], *, batch_size: int = 16,
    progress: Progress | None = None, min_prefix: int = MIN_SHARED_PREFIX, label_head: Any = None, prefix: Sequence[int] | None = None,
    cache: Any = None, follow_cores: bool = True, features: np.ndarray | None = None,
) -> np.ndarray:
    """``label_logits`` of prompts that share a long prefix, running the prefix through the model once.

    ``prefix``: the shared token prefix (default: the longest common prefix of all prompts), with its KV
    ``cache`` when the caller keeps one. Prompts that start with it run only their own tokens on top of the
    cache, right-padded, at positions that continue after the prefix; any other prompt (and every prompt
    when the prefix is shorter than ``min_prefix`` tokens) runs whole. Equal to ``label_logits`` on the full
    prompts up to float rounding.
    """
    if prefix is None:
        length = shared_prefix_length(prompts)
        prefix = list(prompts[0][:length]) if prompts and length >= min_prefix else []
    prefix = list(prefix)
    size = len(prefix)
    result = np.zeros((len(prompts), len(label_token_ids)), dtype=np.float32)
    if size < min_prefix:
        return label_logits(model, prompts, label_token_ids, batch_size=batch_size, progress=progress, label_head=label_head, out=result,
                            follow_cores=follow_cores, features=features)
    shared = [i for i, p in enumerate(prompts) if len(p) > size and list(p[:size]) == prefix]
    whole = sorted(set(range(len(prompts))) - set(shared))
    if shared:
        decoder = causal_lm_of(model).get_decoder()
        device = _device(model)
        label_ids = torch.tensor(list(label_token_ids), dtype=torch.long, device=device)
        with torch.inference_mode():
            if cache is None:
                cache = prefix_cache(decoder, torch.tensor(prefix, dtype=torch.long, device=device))
            suffixes = [list(p[size:]) for p in prompts]
            batches = _by_length(suffixes, shared, batch_size)
            for batch in following_free_cores(batches, device.type) if follow_cores else batches:
                final = last_hidden_after_prefix(decoder, cache, size, [suffixes[i] for i in batch])
                result[batch] = head_label_logits(model, final, label_ids, label_head).float().cpu().numpy()
                if features is not None:
                    features[batch] = final.float().cpu().numpy()
                if progress:
                    progress(len(batch))
    if whole:
        label_logits(model, prompts, label_token_ids, batch_size=batch_size, progress=progress, label_head=label_head, indices=whole, out=result,
                     follow_cores=follow_cores, features=features)
    return result


@dataclass
class ClassifyAnswer:
    """A classify model's answer to one text: ``label`` is the answer (the out-of-scope label when the run's
    out-of-scope score is below its threshold), ``top_label`` the most probable label, ``runner_up`` the second most
    probable (None with one label) and ``margin`` the top probability less the runner-up's: how sure the model is
    between its two best labels (``tunelab predict --label-next`` asks for the requests where it is least)."""

    label: str
    top_label: str
    confidence: float  # the top label's probability
    probabilities: dict[str, float]
    out_of_scope: bool = False
    prompt_tokens: int = 0
    truncated: bool = False
    out_of_scope_score: float | None = None  # what the run's out-of-scope threshold was compared with
    runner_up: str | None = None
    margin: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "top_label": self.top_label, "confidence": self.confidence, "probabilities": self.probabilities,
                "out_of_scope": self.out_of_scope, "out_of_scope_score": self.out_of_scope_score}


@dataclass
class Classifier:
    """The one classify inference (see the module docstring) of one model's weights.

    ``messages``: the prompt around a text (default: the trained prompt, ``classify_messages`` with
    ``system_prompt``; a baseline passes its zero-shot or few-shot prompt). ``max_length``: the text is shortened
    so the prompt fits it, as in training. ``context``: the model's context (``models.generate.context_length``); the
    prompt fits it too (a GPT-2-style model fails with an IndexError past its positions), so evaluation, the server
    and ``tunelab generate`` shorten a text alike. The prefix's KV cache is kept after the first call: a Classifier
    belongs to one model's weights (a server keeps one per served run).
    """

    tokenizer: Any
    label_map: LabelMap
    max_length: int
    system_prompt: str | None = None
    label_head: Any = None
    out_of_scope: OutOfScope | None = None
    messages: Callable[[str], list[Message]] | None = None
    follow_cores: bool = True  # a server's engine sets False (see label_logits)
    context: int | None = None
    _prefix: list[int] | None = field(default=None, init=False, repr=False)
    _cache: Any = field(default=None, init=False, repr=False)

    @classmethod
    def for_model(cls, loaded: Any, *, max_length: int | None = None) -> Classifier:
        """The classifier of a classify run as trained (``tunelab.models.LoadedModel`` loaded from a run): its label map,
        system prompt, ``max_length``, label head and out-of-scope rule.

        Raises:
            ValueError: when ``loaded`` is no classify run.
        """
        run = loaded.run
        if run is None or run.label_map is None:
            raise ValueError("not a classify run: it has no label map")
        return cls(loaded.tokenizer, run.label_map, max_length or run.max_length, run.system_prompt, loaded.label_head, run.out_of_scope,
                   context=context_length(loaded.model))

    def build(self, text: str) -> list[Message]:
        return self.messages(text) if self.messages is not None else classify_messages(text, self.system_prompt)

    @property
    def limit(self) -> int:
        """The most tokens a prompt keeps: ``max_length``, or the model's ``context`` when that is shorter."""
        return self.max_length if self.context is None else min(self.max_length, self.context)

    def prompt(self, text: str) -> tuple[list[int], bool]:
        """(token ids, whether the text was shortened to fit :attr:`limit`) of the prompt for ``text``."""
        probe = ClassifyRecord(text, self.label_map.labels[0])
        example = tokenize_classify(probe, self.tokenizer, self.label_map, self.limit, self.system_prompt, messages_fn=self.build)
        return example.input_ids, example.truncated

    @property
    def prefix(self) -> list[int]:
        """The prompt's fixed part (system message, instruction, a baseline's label list and examples)."""
        if self._prefix is None:
            probes = [render_prompt_ids(self.tokenizer, self.build(text)) for text in PROBES]
            length = shared_prefix_length(probes)
            self._prefix = probes[0][:length] if length >= MIN_SHARED_PREFIX else []
        return self._prefix

    def logits(self, model: Any, prompts: Sequence[Sequence[int]], *, batch_size: int = 16, progress: Progress | None = None,
               features: np.ndarray | None = None) -> np.ndarray:
        """Label logits (prompts, labels) of prompt ids made by :meth:`prompt`, the fixed prefix run once
        (``features``: filled with the final hidden states, see :func:`label_logits`)."""
        prefix = self.prefix
        if prefix and self._cache is None and any(len(p) > len(prefix) and list(p[: len(prefix)]) == prefix for p in prompts):
            with torch.inference_mode():
                decoder = causal_lm_of(model).get_decoder()
                self._cache = prefix_cache(decoder, torch.tensor(prefix, dtype=torch.long, device=_device(model)))
        return prefix_label_logits(model, prompts, self.label_map.token_ids, batch_size=batch_size, progress=progress,
                                   label_head=self.label_head, prefix=prefix, cache=self._cache, follow_cores=self.follow_cores,
                                   features=features)

    def probabilities(self, model: Any, prompts: Sequence[Sequence[int]], *, batch_size: int = 16, progress: Progress | None = None) -> np.ndarray:
        """P(label | prompt) for each prompt, (prompts, labels), in the label map's order."""
        return softmax(self.logits(model, prompts, batch_size=batch_size, progress=progress))

    def scored(self, model: Any, prompts: Sequence[Sequence[int]], *, batch_size: int = 16,
               progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(:meth:`probabilities`, each prompt's out-of-scope score or None without an out-of-scope rule), one forward pass."""
        rule = self.out_of_scope
        features = state_buffer(model, len(prompts)) if rule is not None and rule.needs_features else None
        probabilities = softmax(self.logits(model, prompts, batch_size=batch_size, progress=progress, features=features))
        return probabilities, rule.scores(probabilities, features) if rule is not None else None

    def answers(self, probabilities: np.ndarray, prompts: Sequence[Sequence[int]] = (), truncated: Sequence[bool] = (),
                scores: Sequence[float] | None = None) -> list[ClassifyAnswer]:
        """Each row's answer: the top label, its probability, and the out-of-scope label when the row's out-of-scope
        score (``scores``, from :meth:`scored`; the top probability when the rule is on it) is below the threshold."""
        labels = self.label_map.labels
        rule = self.out_of_scope
        if rule is not None and scores is None:
            scores = rule.scores(probabilities)  # raises for a rule that needs the hidden states
        result = []
        for index, row in enumerate(probabilities):
            # Stable: among equal probabilities the first label leads, as np.argmax chose it.
            order = np.argsort(-row, kind="stable")
            best = int(order[0])
            top, confidence = labels[best], float(row[best])
            second = int(order[1]) if len(order) > 1 else None
            score = float(scores[index]) if scores is not None else None
            rejected = rule is not None and score is not None and rule.rejects(score)
            result.append(ClassifyAnswer(
                rule.label if rejected else top, top, confidence, {label: float(p) for label, p in zip(labels, row, strict=True)},
                rejected, len(prompts[index]) if index < len(prompts) else 0, bool(truncated[index]) if index < len(truncated) else False,
                score, None if second is None else labels[second], confidence - (0.0 if second is None else float(row[second])),
            ))  # fmt: skip
        return result

    def classify(self, model: Any, texts: Sequence[str], *, batch_size: int = 16, progress: Progress | None = None) -> list[ClassifyAnswer]:
        """The answers to ``texts`` (prompt, probabilities, out-of-scope score and threshold), in order."""
        built = [self.prompt(text) for text in texts]
        prompts = [ids for ids, _ in built]
        probabilities, scores = self.scored(model, prompts, batch_size=batch_size, progress=progress)
        return self.answers(probabilities, prompts, [t for _, t in built], scores)


@dataclass
class ChatPrompt:
    """A request's prompt as token ids, and whether it was cut to ``max_length`` (keeping its end)."""

    ids: list[int]
    truncated: bool = False


def chat_prompt(
    tokenizer: Any, messages: Sequence[Message], *, system_prompt: str | None = None, max_length: int | None = None,
    tools: Sequence[dict[str, Any]] = (),
) -> ChatPrompt:
    """The one preparation of a chat request: ``system_prompt`` first when the messages bring no system message,
    the chat template with the assistant turn opened (``tools``: a tool-calling conversation's schemas), and at most
    ``max_length`` tokens (the end is kept: the opened assistant turn is where the answer starts)."""
    ids = render_prompt_ids(tokenizer, with_system_prompt([dict(m) for m in messages], system_prompt), tools)
    if max_length is not None and len(ids) > max_length:
        return ChatPrompt(ids[-max_length:], True)
    return ChatPrompt(ids)


def completion_prompt(tokenizer: Any, text: str, *, max_length: int | None = None) -> ChatPrompt:
    """A raw-text prompt (``/v1/completions``, a text run's continuation): the text's tokens (with the tokenizer's
    own special tokens, e.g. a BOS), the end kept when longer than ``max_length``; an empty text is its BOS."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if not ids and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id]
    if max_length is not None and len(ids) > max_length:
        return ChatPrompt(ids[-max_length:], True)
    return ChatPrompt(ids)


# A text run's continuation sample starts from a document's first tokens: enough for two or three sentences of the
# author (the voice and what the passage is about), few enough that the model's continuation, eval.max_new_tokens
# long, is most of what a reviewer reads.
TEXT_OPENING_TOKENS = 48
SENTENCE_ENDS = (".", "!", "?", "\u2026")
CLOSERS = "\"')]\u201d\u2019"


@dataclass(frozen=True)
class TextOpening:
    """A held-out document cut for a continuation sample: its opening (the prompt) and what the author wrote next."""

    record_id: str
    source: str | None
    opening: str
    reference: str


def seeded_subset(records: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    """At most ``limit`` records, a seeded sample chosen by id (so every model evaluated sees the same ones), in order."""
    if limit is None or len(records) <= limit:
        return list(records)
    ordered = sorted(records, key=lambda record: record.id)
    chosen = {record.id for record in random.Random(seed).sample(ordered, limit)}
    return [record for record in records if record.id in chosen]


def _token_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _word_ends(text: str, limit: int) -> list[int]:
    """Where a prefix of ``text`` of at most ``limit`` characters may end: before each run of whitespace (and at the
    end of the text when it is that short). A cut inside a word would tokenize differently from the document."""
    ends = [i for i in range(1, min(len(text), limit + 1)) if text[i].isspace() and not text[i - 1].isspace()]
    return [*ends, len(text)] if len(text) <= limit else ends


def _last_fitting(tokenizer: Any, text: str, ends: Sequence[int], budget: int) -> int | None:
    """The index in ``ends`` of the longest prefix of ``text`` within ``budget`` tokens (a prefix's tokens grow with its
    length), or None when even the first is longer."""
    low, high, found = 0, len(ends) - 1, None
    while low <= high:
        middle = (low + high) // 2
        if _token_count(tokenizer, text[: ends[middle]]) <= budget:
            found, low = middle, middle + 1
        else:
            high = middle - 1
    return found


def text_openings(records: Sequence[Any], tokenizer: Any, count: int, seed: int, reference_tokens: int) -> list[TextOpening]:
    """The continuation samples of a text evaluation (``eval.text_samples``): ``count`` documents of ``records`` (a seeded
    sample by id, the same for the base and the tuned model), each cut into an opening and the author's continuation.

    The opening is at most ``TEXT_OPENING_TOKENS`` tokens and half the document, ending at its last sentence end (else
    its last word): a model asked to go on after a whole sentence writes the author's next sentence, which is where a
    voice shows; cut mid-sentence, the first words only finish the grammar. The reference is the text after the opening,
    at most ``reference_tokens`` tokens (eval.max_new_tokens, the continuation's length) and whole words. A document
    with no word end in its first half (one long word) gives no sample.
    """
    openings = []
    for record in seeded_subset(records, count, seed):
        text = record.text
        ends = _word_ends(text, len(text) // 2)
        last = _last_fitting(tokenizer, text, ends, TEXT_OPENING_TOKENS)
        if last is None:
            continue
        sentences = [end for end in ends[: last + 1] if text[:end].rstrip(CLOSERS).endswith(SENTENCE_ENDS) or text[end] == "\n"]
        cut = sentences[-1] if sentences else ends[last]
        rest = text[cut:].strip()
        rest_ends = _word_ends(rest, len(rest))
        kept = _last_fitting(tokenizer, rest, rest_ends, reference_tokens) if rest_ends else None
        reference = rest[: rest_ends[kept if kept is not None else 0]] if rest_ends else rest
        openings.append(TextOpening(record.id, record.source, text[:cut], reference))
    return openings


def few_shot_budget(context: int, few_shot_tokens: int, room: int) -> int:
    """The tokens few-shot examples get: ``eval.few_shot_tokens``, lowered so that they and a prompt's own ``room``
    fit the model's ``context`` (``models.generate.context_length``)."""
    return max(0, min(few_shot_tokens, context - room))


def few_shot_sft_examples(train: Sequence[SFTRecord], tokenizer: Any, budget: int, *, seed: int = 0) -> list[tuple[list[Message], str]]:
    """(prompt messages, answer) training pairs in a seeded order, added while their tokens fit ``budget``."""
    order = sorted(train, key=lambda r: r.id)
    random.Random(seed).shuffle(order)
    chosen: list[tuple[list[Message], str]] = []
    for record in order:
        candidate = [*chosen, (record.prompt_messages, record.completion)]
        if len(render_prompt_ids(tokenizer, few_shot_chat([], candidate))) > budget:
            break  # stop at the first that does not fit: no bias toward the shortest examples
        chosen = candidate
    return chosen


def few_shot_sft_chats(
    records: Sequence[SFTRecord], examples: Sequence[tuple[Sequence[Message], str]], system_prompt: str | None
) -> list[list[Message]]:
    """Each record's prompt (with ``system_prompt``) after the solved ``examples``: what the few-shot baseline asks."""
    return [few_shot_chat(with_system_prompt(record.prompt_messages, system_prompt), examples) for record in records]


def zero_shot_extra_tokens(tokenizer: Any, label_map: LabelMap, system_prompt: str | None) -> int:
    """How many more tokens the zero-shot prompt's template (instruction + label list) has than the trained prompt's."""
    zero_shot = render_prompt_ids(tokenizer, zero_shot_messages("", label_map, system_prompt))
    trained = render_prompt_ids(tokenizer, classify_messages("", system_prompt))
    return max(0, len(zero_shot) - len(trained))


def few_shot_classify_examples(
    train: Sequence[ClassifyRecord], label_map: LabelMap, tokenizer: Any, budget: int, *, seed: int = 0, system_prompt: str | None = None
) -> tuple[list[tuple[str, str]], int]:
    """Solved examples for the few-shot prompt and k, the examples per label: whole rounds of one per label.

    Each label's training records are shuffled (seeded); round r holds the r-th of each label, in a
    seeded label order. Rounds are added while the examples' tokens fit ``budget``; when not even one
    round fits, the first round's examples that fit are used (k = 0 then: not every label is shown).
    """
    rng = random.Random(seed)
    pools: dict[str, list[str]] = {}
    for label in label_map.labels:
        texts = sorted({r.text for r in train if r.label == label})
        rng.shuffle(texts)
        pools[label] = texts
    empty = render_prompt_ids(tokenizer, zero_shot_messages("", label_map, system_prompt))

    def cost(examples: list[tuple[str, str]]) -> int:
        return len(render_prompt_ids(tokenizer, few_shot_messages("", label_map, examples, system_prompt))) - len(empty)

    chosen: list[tuple[str, str]] = []
    rounds = max((len(p) for p in pools.values()), default=0)
    k = 0
    for index in range(rounds):
        order = [label for label in label_map.labels if index < len(pools[label])]
        rng.shuffle(order)
        candidate = chosen + [(pools[label][index], label) for label in order]
        if cost(candidate) > budget:
            if index == 0:
                for example in candidate:
                    if cost([*chosen, example]) > budget:
                        break
                    chosen.append(example)
            break
        chosen = candidate
        if len(order) == len(label_map.labels):
            k = index + 1  # a whole round: every label shown once more
    return chosen, k
