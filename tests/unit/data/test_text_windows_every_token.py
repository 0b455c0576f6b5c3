"""A text document longer than one window is trained on every token once: each window's first token has no context in
its window and is never a target there, so without overlap the first token of every later window was never learnt."""

from __future__ import annotations

import random

import pytest

from tunelab.data.records import TextRecord
from tunelab.data.tokenize import IGNORE_INDEX, tokenize_text


@pytest.mark.parametrize("stride", [None, 16, 9, 4])
def test_every_token_after_the_first_is_a_target_exactly_once(tiny_tokenizer, stride):
    # Words in a seeded random order: no window's tokens occur twice in the document, so each is found where it is.
    words = "billing refund cancel shipping technical login account other".split()
    generator = random.Random(0)
    text = " ".join(generator.choice(words) for _ in range(96))
    record = TextRecord(text, source="doc.txt:1")
    windows = tokenize_text(record, tiny_tokenizer, max_length=16, stride=stride)
    assert len(windows) > 3
    # Where each window sits in the document: its ids are a slice of the whole (the last window may end early).
    whole = tokenize_text(record, tiny_tokenizer, max_length=10_000)[0].input_ids
    targets = []
    position = 0
    for window in windows:
        while whole[position : position + len(window.input_ids)] != window.input_ids:
            position += 1
        # A label at index i > 0 is predicted from the tokens before it in the window; index 0 never is.
        targets += [position + i for i, label in enumerate(window.labels) if i > 0 and label != IGNORE_INDEX]
        assert all(label == IGNORE_INDEX or label == window.input_ids[i] for i, label in enumerate(window.labels))
    assert sorted(targets) == list(range(1, len(whole)))
