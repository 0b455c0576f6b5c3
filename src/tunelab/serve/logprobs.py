"""Token log-probabilities in OpenAI's two shapes, from the engine's :class:`~tunelab.serve.engine.TokenLogprob` lists.

- chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}, ...]}, ...]}``;
- completions (legacy): ``{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}, ...], "text_offset"}``.

A token's text is what the tokenizer decodes of that one token (special tokens included). Its ``bytes`` are the token's
own UTF-8 bytes: for a token that holds only part of a multi-byte character (it decodes alone to U+FFFD), the raw
bytes the tokenizer's vocabulary gives it — a byte-level BPE piece (GPT-2, Llama 3, Qwen) mapped back to its bytes, a
SentencePiece byte-fallback piece (``<0xE2>``) read as its byte — as OpenAI returns them; else the UTF-8 of its text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from tunelab.serve.engine import TokenLogprob, token_text

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the printable character each byte is written as in the vocabulary, to its byte
    (transformers' own table, which its byte-level tokenizers are converted with)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


class TokenRenderer:
    """Each token id's text and bytes (cached: a vocabulary's tokens recur)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        if token not in self._cache:
            text = token_text(self.tokenizer, token)
            self._cache[token] = (text, self._raw_bytes(token) if "\ufffd" in text else list(text.encode("utf-8")))
        return self._cache[token]

    def _raw_bytes(self, token: int) -> list[int]:
        piece = self.tokenizer.convert_ids_to_tokens(token)
        text = token_text(self.tokenizer, token)
        if isinstance(piece, str):
            match = _BYTE_PIECE.match(piece)
            if match:
                return [int(match.group(1), 16)]
            alphabet = _byte_level_alphabet()
            if piece and all(char in alphabet for char in piece):
                return [alphabet[char] for char in piece]
        return list(text.encode("utf-8"))  # no raw bytes exposed: the replacement character's own


def chat_logprobs(items: Sequence[TokenLogprob], render: TokenRenderer) -> dict[str, Any]:
    """The chat shape (``choices[i].logprobs`` of a chat completion or of one streamed chunk): the tokens of the
    message's content, so without the end-of-turn token (as OpenAI's), which the legacy shape keeps."""

    def entry(token: int, logprob: float) -> dict[str, Any]:
        text, raw = render(token)
        return {"token": text, "logprob": logprob, "bytes": raw}

    return {
        "content": [
            {**entry(item.token, item.logprob if item.logprob is not None else 0.0),
             "top_logprobs": [entry(token, value) for token, value in item.top or ()]}
            for item in items
            if not item.end
        ]
    }


def label_logprobs(label: str, probabilities: dict[str, float], top: int) -> dict[str, Any]:
    """A classify run's chat answer (its label) in the chat shape: the label's calibrated log-probability (the classify
    answer's own probabilities), its ``top`` most probable labels as the alternatives."""

    def entry(name: str) -> dict[str, Any]:
        probability = probabilities[name]
        return {"token": name, "logprob": _log(probability), "bytes": list(name.encode("utf-8"))}

    ranked = sorted(probabilities, key=probabilities.__getitem__, reverse=True)[:top]
    return {"content": [{**entry(label), "top_logprobs": [entry(name) for name in ranked]}]}


def _log(probability: float) -> float:
    return math.log(probability) if probability > 0 else -9999.0  # OpenAI's floor for a token of no probability


def completion_logprobs(items: Sequence[TokenLogprob], render: TokenRenderer, offset: int = 0) -> dict[str, Any]:
    """The legacy completions shape; ``offset``: characters before these tokens' text in ``choices[i].text`` (an echoed
    prompt's, for the answer's tokens). An answer that ended at EOS ends with that token (its text the special token's,
    its offset the text's end), as vLLM's. The alternatives are of distinct texts (``SamplingParams.distinct_texts``: the
engine filled them to k from the next candidates, as OpenAI's dict holds k); one of a text already there is dropped."""
    tokens, values, tops, offsets = [], [], [], []
    for item in items:
        tokens.append(render(item.token)[0])
        values.append(item.logprob)
        if item.top is None:
            tops.append(None)
        else:
            alternatives: dict[str, float] = {}
            for token, value in item.top:
                alternatives.setdefault(render(token)[0], value)
            tops.append(alternatives)
        offsets.append(offset + item.offset)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def join_completion_logprobs(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Legacy logprobs of consecutive pieces of text (an echoed prompt, then its answer) as one."""
    return {key: [value for part in parts for value in part[key]] for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
