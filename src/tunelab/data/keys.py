"""What makes two records "the same example": normalized input text, used by the check and the split.

Normalization composes accents (Unicode NFC), casefolds, removes punctuation and symbols, and collapses
whitespace, so "Where is my card?" and "where is my  card" are one example, and so is "café" whether its é is
one character or an e and a combining accent. The input of a record is what the
model is given (the text, or the prompt's user/assistant turns; a shared system prompt is left
out); two records with the same input on both sides of a split would leak the answer.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from tunelab.data.records import ClassifyRecord, PreferenceRecord, Record, SFTRecord, TextRecord, message_text

_NOT_WORD = re.compile(r"[\W_]+")


def normalize_text(text: str) -> str:
    """Compose accents (NFC), casefold, drop punctuation/symbols, collapse whitespace.

    A text made only of punctuation, symbols or emoji (":)", "😡") keeps them (casefolded, whitespace
    collapsed): dropped, every such text would be the same empty example.
    """
    # NFC first: a combining accent is no word character, so "cafe\u0301" would become "cafe" and split words
    # apart. Text already composed (nearly all text) is unchanged, and so are its keys and its side of the split.
    folded = unicodedata.normalize("NFC", text).casefold()
    return " ".join(_NOT_WORD.sub(" ", folded).split()) or " ".join(folded.split())


def input_text(record: Record) -> str:
    """The text the model is given for ``record`` (system messages left out)."""
    if isinstance(record, TextRecord | ClassifyRecord):
        return record.text
    if isinstance(record, SFTRecord):
        messages = record.prompt_messages
    elif isinstance(record, PreferenceRecord):
        messages = list(record.prompt)
    else:  # pragma: no cover - Record is a closed union
        raise TypeError(type(record))
    return "\n".join(message_text(m) for m in messages if m["role"] != "system")


def target_text(record: Record) -> str | None:
    """What the model should answer (label, completion, chosen/rejected); None for raw text."""
    if isinstance(record, ClassifyRecord):
        return record.label
    if isinstance(record, SFTRecord):
        return record.completion
    if isinstance(record, PreferenceRecord):
        return f"{record.chosen}\n\0{record.rejected}"
    return None


def stable_hash(*parts: str) -> str:
    """A hex SHA-256 of the parts (never Python's per-process ``hash()``)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def input_key(record: Record) -> str:
    """A short hash of the normalized input: equal for exact and near duplicates."""
    return stable_hash(normalize_text(input_text(record)))[:20]


def lookalike_text(text: str) -> str:
    """``normalize_text`` after NFKC and without invisible format characters, for finding duplicates only.

    "ｒｅｆｕｎｄ" (full-width), "ref\u200bund" (a zero-width space, joiner or a BOM inside) and "refund" look the same
    to a reader, yet ``input_key`` keeps them apart: it cannot change, since every split is made with it. The data
    check and the overlap warnings compare this instead, so such copies are found and said.
    """
    return normalize_text(visible_text(text))


def visible_text(text: str) -> str:
    """``text`` as a reader sees it: compatibility characters as their plain ones (NFKC: full-width letters, ligatures)
    and no invisible format characters (zero-width spaces and joiners, a BOM, soft hyphens)."""
    if text.isascii():
        return text  # nearly all text: nothing to change, and no character-by-character pass over a large dataset
    return "".join(ch for ch in unicodedata.normalize("NFKC", text) if unicodedata.category(ch) != "Cf")


def lookalike_key(record: Record) -> str:
    """``input_key`` with ``lookalike_text``: equal for inputs that differ only by characters that look alike."""
    return stable_hash(lookalike_text(input_text(record)))[:20]
