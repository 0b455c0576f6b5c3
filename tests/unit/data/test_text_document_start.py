"""A text run's documents start as a served prompt starts: after the tokenizer's own BOS, where it adds one."""

import copy

import pytest

from tunelab.data.records import TextRecord
from tunelab.data.tokenize import tokenize_text
from tunelab.inference import completion_prompt


def _adding_bos(tokenizer):
    """The tiny tokenizer as a Llama/Gemma/Mistral one behaves: encode() puts its BOS before every text."""
    from tokenizers import processors

    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    bos = tokenizer.bos_token_id
    backend.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    adding = copy.deepcopy(tokenizer)
    adding._tokenizer = backend
    assert adding.encode("the keeper") [:1] == [bos] and adding.encode("the keeper", add_special_tokens=False)[:1] != [bos]
    return adding


@pytest.mark.parametrize("adds_bos", [False, True])
def test_a_document_is_trained_and_scored_from_the_start_a_served_prompt_has(tiny_tokenizer, adds_bos):
    # Text windows were encoded without special tokens while /v1/completions and `tunelab generate` prompt with the
    # tokenizer's BOS: a Llama-style model was trained and judged on documents without the token it is served after.
    tokenizer = _adding_bos(tiny_tokenizer) if adds_bos else tiny_tokenizer
    text = "Skerrow Rock. Wind SW, fresh, backing S by noon. Lamp lit at dusk."
    served = completion_prompt(tokenizer, text).ids
    (window,) = tokenize_text(TextRecord(text), tokenizer, max_length=512)
    assert window.input_ids[: len(served)] == served
    assert window.input_ids[len(served):] == [tokenizer.eos_token_id]
    # Longer than a window: only the first starts with the BOS; every token after it is a target exactly once.
    windows = tokenize_text(TextRecord(text * 4), tokenizer, max_length=16, stride=8)
    starts = completion_prompt(tokenizer, text * 4).ids
    assert windows[0].input_ids == starts[:16]
    assert sum(label != -100 for w in windows for label in w.labels) - 1 == len(starts)  # + EOS, less the unpredicted first
