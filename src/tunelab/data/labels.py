"""Encode each classification label as exactly one token of the model's vocabulary.

The model answers a classify prompt with one token; prediction is one forward pass and an argmax
over the label tokens only. A label that already is one token (as the first thing the assistant
says) keeps it: "billing" stays "billing". Other labels get distinct single-token codes: A-Z, then
0-9, then a-z, then other short alphabetic vocabulary tokens. The mapping is saved with the run.
"""

from __future__ import annotations

import io
import json
import string
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
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
        label is never one of them: it is answered by the out-of-scope rule (``OutOfScope``), not by a token.

        Raises:
            DataError: see :func:`build_label_map`.
        """
        labels = {record.label for record in records} - {out_of_scope_label}
        return build_label_map(sorted(labels), tokenizer)

    @classmethod
    def load(cls, path: Path) -> LabelMap:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


OUT_OF_SCOPE_RULE = (
    "the threshold t among the lowest score, the midpoints between consecutive distinct validation scores and the highest "
    "that maximises accuracy over all validation queries (in-scope answered correctly and not rejected, out-of-scope "
    "rejected); ties go to the lowest t; a query is out of scope when its score is below t"
)
# The scores a threshold can be put on (``OutOfScope.score``), measured in bench/README.md ("Out-of-scope requests"):
OUT_OF_SCOPE_SCORES = {
    "probability": "the top label's (calibrated) probability",
    # Sun et al. 2022 (deep nearest neighbours); on the quickstart's out-of-scope run it separated known from
    # unknown requests with AUROC 0.907 where the top probability reached 0.709.
    "nearest": "the highest cosine similarity between the request's final hidden state (what the label head reads) "
    "and those of the training requests",
}


@dataclass(frozen=True)
class OutOfScope:
    """A classify model's out-of-scope rule: when the request's ``score`` is below ``threshold``, answer ``label``.

    Saved as ``out_of_scope.json`` next to ``labels.json``: evaluation, serving and monitoring read it there.
    ``score`` names what the threshold applies to (``OUT_OF_SCOPE_SCORES``); for ``nearest``, ``reference``
    holds the training requests' final hidden states, unit length (saved beside the json as a float32 array).
    ``validation`` holds how it was chosen (queries, out-of-scope queries, accuracy at the threshold, each score's).
    """

    label: str
    threshold: float
    rule: str = OUT_OF_SCOPE_RULE
    validation: dict[str, Any] | None = None
    score: str = "probability"
    reference: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.score not in OUT_OF_SCOPE_SCORES:
            raise DataError(f"unknown out-of-scope score '{self.score}'; expected one of {', '.join(OUT_OF_SCOPE_SCORES)}")
        if self.score == "nearest" and self.reference is None:
            raise DataError("the 'nearest' out-of-scope score needs the training requests' representations")

    @property
    def needs_features(self) -> bool:
        """Whether the score reads the requests' final hidden states (not only their label probabilities)."""
        return self.score == "nearest"

    def scores(self, probabilities: Any, features: Any = None) -> Any:
        """Each request's out-of-scope score: ``probabilities`` (requests, labels); ``features`` (requests, hidden)
        the final hidden states when :attr:`needs_features`."""
        import numpy as np

        if self.score == "probability":
            return np.asarray(probabilities, dtype=np.float64).max(axis=1)
        if features is None:
            raise ValueError("the 'nearest' out-of-scope score needs the requests' final hidden states")
        return nearest_similarity(features, self.reference)

    def rejects(self, score: float) -> bool:
        """Whether a query whose out-of-scope score is ``score`` is out of scope."""
        return score < self.threshold

    def answer(self, top_label: str, score: float) -> str:
        return self.label if self.rejects(score) else top_label

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "threshold": self.threshold, "score": self.score, "rule": self.rule,
                "score_is": OUT_OF_SCOPE_SCORES[self.score], "validation": self.validation}

    @classmethod
    def from_dict(cls, data: dict[str, Any], reference: Any = None) -> OutOfScope:
        return cls(str(data["label"]), float(data["threshold"]), str(data.get("rule", OUT_OF_SCOPE_RULE)), data.get("validation"),
                   str(data.get("score", "probability")), reference)

    def save(self, path: Path, reference_path: Path | None = None) -> None:
        """Write the rule to ``path`` and, for the ``nearest`` score, its representations to ``reference_path``."""
        import numpy as np

        from tunelab.paths import atomic_write_bytes, atomic_write_text

        if self.reference is not None:
            if reference_path is None:
                raise ValueError("the 'nearest' out-of-scope score is saved with its representations: pass reference_path")
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(self.reference, dtype=np.float32), allow_pickle=False)
            atomic_write_bytes(Path(reference_path), buffer.getvalue())  # before the json that needs it
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, path: Path, reference_path: Path | None = None) -> OutOfScope:
        """Read a saved rule (and the representations its ``nearest`` score needs).

        Raises:
            DataError: when the rule needs representations that are missing or damaged.
        """
        import numpy as np

        data = json.loads(Path(path).read_text(encoding="utf-8"))
        reference = None
        if data.get("score") == "nearest":
            if reference_path is None or not Path(reference_path).is_file():
                raise DataError(f"{path}: its 'nearest' out-of-scope score needs {reference_path or 'the representations file'}, which is missing")
            try:
                reference = np.load(reference_path, allow_pickle=False)
            except (OSError, ValueError) as error:
                raise DataError(f"{reference_path}: cannot read the out-of-scope representations ({error})") from None
        return cls.from_dict(data, reference)


def nearest_similarity(features: Any, reference: Any) -> Any:
    """The highest cosine similarity of each row of ``features`` to the unit-length rows of ``reference``."""
    import numpy as np

    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = features / np.maximum(norms, 1e-12)
    return (unit @ np.asarray(reference, dtype=np.float32).T).max(axis=1).astype(np.float64)


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
