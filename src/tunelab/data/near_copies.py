"""Test requests that are near-copies of a training request: the same ask but for a word, a typo, a greeting or a number.

The exact leakage rule (``keys.lookalike_key``: the same normalized input on both sides) misses "I want to cancel order
1234" / "i want to cancel my order 5678 please". Such a pair across the split lets a model score on a request it has
as good as memorised, so every score, and the verdict, is optimistic. Each test request is compared with its most
similar training request by the cosine of TF-IDF character 3-5-gram vectors (``char_wb``: n-grams inside words, so a
typo or an inserted word changes only a few of them), after ``keys.lookalike_text`` and with every run of digits made
one "0" (an order number or an amount is not what a request asks).

What is compared: classify the text, sft and preference the request (the last user turn of the prompt); text runs
are documents, not requests, and are not compared. Test requests that the exact rule already counts are left to it.

``NEAR_COPY_THRESHOLD`` was measured on BANKING77's and HWU64's training files (no test split read): see its comment.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab.data.keys import input_text, lookalike_key, lookalike_text
from tunelab.data.records import ClassifyRecord, PreferenceRecord, Record, SFTRecord, message_text

# Measured on the training files of BANKING77 (3,000 requests against the other 7,003, a seeded shuffle) and HWU64
# (2,981 against 6,956); no test split was read. At >= 0.9, 14% and 16% of the requests have such a neighbour, 96% and
# 97% of those pairs share their label, and the pairs read are the same request reworded ("Where is my card PIN?" /
# "Where's my card PIN?", "Set an alarm for 8pm." / "set an alarm for 2pm"). Between 0.85 and 0.9 one pair in ten
# has another label and several read are other asks ("my card payment has been cancelled" / "my top-up has been
# cancelled"). Digits as one "0" add 25 pairs on HWU64 (alarm times, sums), 24 of them the same intent; none on BANKING77 at 0.9.
NEAR_COPY_THRESHOLD = 0.9
LISTED_PAIRS = 20
KEPT_PAIRS = 3  # in the run folder: enough to see what the pairs are, the data check lists them all
_BLOCK = 4_000_000  # similarities held at once (test rows x training requests): 16 MB, however large the training data
_DIGITS = re.compile(r"\d+")


@dataclass
class NearCopy:
    """One test request and its most similar training request (``file:line`` each), with their cosine similarity."""

    test: str
    train: str
    similarity: float
    test_text: str = ""
    train_text: str = ""


@dataclass
class NearCopies:
    """``count`` of ``compared`` test requests have a training request at ``similarity >= threshold``; the most similar
    first in ``pairs`` (at most ``LISTED_PAIRS``)."""

    threshold: float
    compared: int
    count: int = 0
    pairs: list[NearCopy] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.count / self.compared if self.compared else 0.0

    def caveat(self) -> str | None:
        """The one line a verdict is read with (report.md/html under the verdict, ``tunelab show``): the share of the
        test its scores are optimistic on; None when there is nothing to say."""
        if not self.count:
            return None
        return (f"{self.count} of {self.compared} test requests ({self.share:.0%}) are near-copies of training requests "
                f"(similarity ≥ {self.threshold:g}): every score on them is optimistic")

    def to_dict(self, pairs: int = KEPT_PAIRS) -> dict[str, Any]:
        """What a run folder keeps (split.json's ``near_copies``): the counts, the share and the first ``pairs`` pairs."""
        return {"threshold": self.threshold, "compared": self.compared, "count": self.count, "share": round(self.share, 4),
                "pairs": [asdict(pair) for pair in self.pairs[:pairs]]}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> NearCopies:
        """Read back :meth:`to_dict` (``share`` is derived, not read).

        Raises:
            KeyError, TypeError, ValueError: when ``saved`` is not such a record.
        """
        pairs = [NearCopy(str(pair["test"]), str(pair["train"]), float(pair["similarity"]), str(pair.get("test_text", "")),
                          str(pair.get("train_text", ""))) for pair in saved.get("pairs") or []]
        return cls(float(saved["threshold"]), int(saved["compared"]), int(saved["count"]), pairs)

    def warning(self, test_name: str = "test", train_name: str = "training", *, examples: bool = True) -> str | None:
        """The one line that says it, or None when there is nothing to say. ``examples=False``: without the first pairs,
        for a screen that lists them itself (``tunelab data check``)."""
        if not self.count:
            return None
        shown = ", e.g. " + ", ".join(f"{pair.test} ≈ {pair.train}" for pair in self.pairs[:3]) if examples else ""
        return (
            f"near-copies: {self.count} of {self.compared} {test_name} examples ({self.share:.0%}) have a "
            f"{train_name} example at similarity ≥ {self.threshold:g} (TF-IDF character n-grams, numbers aside)"
            f"{shown}: scores on them are optimistic (the exact copies are counted as leakage, not here)"
        )


def request_text(record: Record) -> str | None:
    """What is compared for ``record``: the text (classify), the last user turn (sft, preference); None for a document."""
    if isinstance(record, ClassifyRecord):
        return record.text
    if isinstance(record, SFTRecord | PreferenceRecord):
        messages = record.prompt_messages if isinstance(record, SFTRecord) else list(record.prompt)
        users = [m for m in messages if m["role"] == "user"]
        return message_text(users[-1]) if users else input_text(record)
    return None


def comparable_text(text: str) -> str:
    """``keys.lookalike_text`` with every run of digits one "0": "Order #1234!" and "order 56" compare as one."""
    return _DIGITS.sub("0", lookalike_text(text))


def find_near_copies(
    test: Sequence[Record], train: Sequence[Record], threshold: float = NEAR_COPY_THRESHOLD
) -> NearCopies | None:
    """Test records whose request has a training request at cosine similarity ``>= threshold``, leaving out those with
    the same normalized input as a training record (``keys.lookalike_key``: the exact leakage rule counts them).

    Returns None for documents (text records), which are not requests.
    """
    requests = [request_text(r) for r in test]
    if any(text is None for text in requests):
        return None
    result = NearCopies(threshold, len(test))
    exact = {lookalike_key(r) for r in train}
    compared = [(r, comparable_text(text or "")) for r, text in zip(test, requests, strict=True) if lookalike_key(r) not in exact]
    references = [(r, comparable_text(request_text(r) or "")) for r in train]
    found = _nearest([text for _, text in compared], [text for _, text in references])
    copies: list[NearCopy] = []
    for (record, _), (index, similarity) in zip(compared, found, strict=True):
        if index is not None and similarity >= threshold:
            other = references[index][0]
            copies.append(NearCopy(record.source or record.id, other.source or other.id, round(similarity, 4),
                                   request_text(record) or "", request_text(other) or ""))
    copies.sort(key=lambda pair: -pair.similarity)  # stable: equal similarities keep the test file's order
    result.count = len(copies)
    result.pairs = copies[:LISTED_PAIRS]
    return result


def _nearest(queries: Sequence[str], references: Sequence[str]) -> list[tuple[int | None, float]]:
    """For each query, the index of its most cosine-similar reference (ties: the first) and the similarity; (None, 0)
    for a query that shares no n-gram with any reference (an empty text included)."""
    if not queries or not references:
        return [(None, 0.0)] * len(queries)
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    # Fitted on both sides: an n-gram only the test has must still count against its similarity.
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, dtype=np.float32)
    try:
        # One tokenizing pass over both sides (fit, then transform, would tokenize every text twice).
        vectors = vectorizer.fit_transform([*references, *queries])
    except ValueError:  # no n-gram anywhere (every text empty or a single character): nothing is alike
        return [(None, 0.0)] * len(queries)
    query_vectors = vectors[len(references) :]
    # Row-major once: a column-major right operand would be converted again for every chunk.
    reference_vectors = vectors[: len(references)].T.tocsr()
    nearest: list[tuple[int | None, float]] = []
    rows = max(1, _BLOCK // len(references))
    for start in range(0, len(queries), rows):
        # Rows are L2-normalised, so the dot product is the cosine similarity.
        block = (query_vectors[start : start + rows] @ reference_vectors).toarray()
        best = block.argmax(axis=1)
        for row, column in enumerate(best):
            similarity = float(block[row, column])
            nearest.append((int(column), similarity) if similarity > 0 else (None, 0.0))
    return nearest
