"""Encode each classification label as exactly one token of the model's vocabulary.

The model answers a classify prompt with one token; prediction is one forward pass and an argmax
over the label tokens only. A label that already is one token (as the first thing the assistant
says) keeps it: "billing" stays "billing". Other labels get distinct single-token codes: A-Z, then
0-9, then a-z, then other short alphabetic vocabulary tokens. The mapping is saved with the run.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import DataError


@dataclass(frozen=True)
class LabelMap:
    """labels[i] is answered with the token ``token_ids[i]``, whose text is ``token_strings[i]``."""

    labels: list[str]
    token_ids: list[int]
    token_strings: list[str]

    def __post_init__(self) -> None:
        if not (len(self.labels) == len(self.token_ids) == len(self.token_strings)):
            raise ValueError("labels, token_ids and token_strings must have the same length")
        if len(set(self.token_ids)) != len(self.token_ids):
            raise ValueError("label tokens must be distinct")

    def index(self, label: str) -> int:
        return self.labels.index(label)

    @property
    def codes_differ(self) -> bool:
        """True when some label is answered with a code rather than its own name."""
        return any(label != code for label, code in zip(self.labels, self.token_strings, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelMap:
        return cls(list(data["labels"]), [int(t) for t in data["token_ids"]], list(data["token_strings"]))

    def save(self, path: Path) -> None:
        from tunelab.paths import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False))

    @classmethod
    def for_records(cls, records: Iterable[Any], tokenizer: Any, out_of_scope_label: str | None = None) -> LabelMap:
        """The map a run uses for these (training) records: their distinct labels, sorted, one token each.

        The one rule for which labels a model answers and in which order: training, evaluation, the
        estimate, the pipeline and ``tunelab data show`` all build the map here. The out-of-scope
        label is never one of them: it is answered by the confidence threshold, not by a token.

        Raises:
            DataError: see :func:`build_label_map`.
        """
        labels = {record.label for record in records} - {out_of_scope_label}
        return build_label_map(sorted(labels), tokenizer)

    @classmethod
    def load(cls, path: Path) -> LabelMap:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


OUT_OF_SCOPE_RULE = (
    "the threshold t among 0, the midpoints between consecutive distinct validation confidences and 1 "
    "that maximises accuracy over all validation queries (in-scope answered correctly and not rejected, "
    "out-of-scope rejected); ties go to the lowest t; a query is out of scope when its top label's probability is below t"
)


@dataclass(frozen=True)
class OutOfScope:
    """A classify model's out-of-scope rule: below ``threshold`` (top label probability), answer ``label``.

    Saved as ``out_of_scope.json`` next to ``labels.json``: evaluation, serving and monitoring read it there.
    ``validation`` holds how it was chosen (queries, out-of-scope queries, accuracy at the threshold).
    """

    label: str
    threshold: float
    rule: str = OUT_OF_SCOPE_RULE
    validation: dict[str, Any] | None = None

    def rejects(self, confidence: float) -> bool:
        """Whether a query whose top label has probability ``confidence`` is out of scope."""
        return confidence < self.threshold

    def answer(self, top_label: str, confidence: float) -> str:
        return self.label if self.rejects(confidence) else top_label

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutOfScope:
        return cls(str(data["label"]), float(data["threshold"]), str(data.get("rule", OUT_OF_SCOPE_RULE)), data.get("validation"))

    def save(self, path: Path) -> None:
        from tunelab.paths import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> OutOfScope:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def single_token_id(tokenizer: Any, text: str) -> int | None:
    """The id if ``text`` encodes to exactly one token that decodes back to ``text``, else None."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        return None
    if tokenizer.decode(ids) != text:
        return None
    if ids[0] in set(tokenizer.all_special_ids):
        return None
    return ids[0]


def _candidate_codes(tokenizer: Any) -> list[str]:
    fixed = list(string.ascii_uppercase) + list(string.digits) + list(string.ascii_lowercase)
    vocab = tokenizer.get_vocab()
    # Beyond 62 labels: short alphabetic vocabulary tokens, in id order (BPE puts common merges first).
    words = []
    for token, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        text = tokenizer.convert_tokens_to_string([token])
        if text.isascii() and text.isalpha() and 2 <= len(text) <= 8:
            words.append(text)
    return fixed + words


def build_label_map(labels: list[str], tokenizer: Any) -> LabelMap:
    """Assign each label one distinct token (see the module docstring).

    Raises:
        DataError: when there are more labels than usable single tokens, or a label is empty.
    """
    ordered = list(dict.fromkeys(labels))
    if any(not label.strip() for label in ordered):
        raise DataError("a classification label is empty")
    assigned: dict[str, int] = {}
    used: set[int] = set()
    own_tokens = [single_token_id(tokenizer, label) for label in ordered]
    if None not in own_tokens and len(set(own_tokens)) == len(own_tokens):
        assigned = dict(zip(ordered, own_tokens, strict=True))
    remaining = [label for label in ordered if label not in assigned]
    if remaining:
        for code in _candidate_codes(tokenizer):
            if not remaining:
                break
            token_id = single_token_id(tokenizer, code)
            if token_id is None or token_id in used:
                continue
            assigned[remaining.pop(0)] = token_id
            used.add(token_id)
    if remaining:
        raise DataError(
            f"{len(ordered)} labels, but only {len(ordered) - len(remaining)} distinct single tokens are usable "
            f"with this tokenizer",
            "merge rare labels, or use a model with a larger vocabulary",
        )
    token_ids = [assigned[label] for label in ordered]
    return LabelMap(ordered, token_ids, [tokenizer.decode([t]) for t in token_ids])


def label_name_token_ids(labels: list[str], tokenizer: Any) -> list[list[int]]:
    """The token ids of each label's name as words ("card_arrival" -> " card arrival"), for starting
    the label's head row at the name's meaning. A name with no word characters keeps its raw text."""
    result = []
    for label in labels:
        words = " ".join(label.replace("_", " ").replace("-", " ").split()) or label
        ids = tokenizer.encode(" " + words, add_special_tokens=False) or tokenizer.encode(label, add_special_tokens=False)
        result.append(list(ids))
    return result
