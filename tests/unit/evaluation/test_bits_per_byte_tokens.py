"""Bits per byte is the NLL of exactly the tokens whose bytes are counted (lm-evaluation-harness's rolling loglikelihood:
every token of the document predicted after one document-start token, BOS or else EOS, and no EOS appended). With a
tokenizer that adds no BOS (SmolLM2, Qwen, GPT-2) the first token was never predicted though its bytes were counted,
and the appended EOS was predicted with no byte: bits per byte, there to compare tokenizers, was biased."""

import math

import pytest
import torch
from tests.conftest import build_tiny_model

from tunelab.config import DataConfig, EvalConfig
from tunelab.data.records import TextRecord
from tunelab.errors import DataError
from tunelab.evaluation.compare import compare_evaluations
from tunelab.evaluation.evaluate import evaluate
from tunelab.evaluation.result import EvalResult
from tunelab.models.loader import LoadedModel
from tunelab.models.resolve import ModelSource

TEXTS = ["Hello world.", "Größe ändern, bitte", "a longer English document about the weather and the sea " * 2]


@pytest.fixture(scope="module")
def loaded(tiny_tokenizer):
    return LoadedModel(build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, ModelSource("folder", "/tiny", "tiny"))


def _by_hand(model, tokenizer, text):
    # The document after one EOS (the tiny tokenizer adds no BOS), every text token a target, nothing after it.
    text_ids = tokenizer.encode(text, add_special_tokens=False)
    ids = torch.tensor([[tokenizer.eos_token_id, *text_ids]])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    return float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")), len(text_ids)


def test_bits_per_byte_is_the_nll_of_the_documents_own_tokens_over_its_bytes(loaded):
    assert loaded.tokenizer.encode("a")[:1] != [loaded.tokenizer.bos_token_id]  # a tokenizer without BOS, as SmolLM2's
    result = evaluate(loaded, [TextRecord(t, source=f"t.txt:{i}") for i, t in enumerate(TEXTS)], "text",
                      config=EvalConfig(), data_config=DataConfig(max_length=256))
    total_nll = total_bytes = total_tokens = 0
    for text, row in zip(TEXTS, result.rows, strict=True):
        nll, tokens = _by_hand(loaded.model, loaded.tokenizer, text)
        assert row["scores"]["tokens"] == tokens, text
        assert row["scores"]["nll"] == pytest.approx(nll, rel=1e-4), text
        assert row["scores"]["bytes"] == len(text.encode("utf-8"))
        total_nll, total_bytes, total_tokens = total_nll + nll, total_bytes + row["scores"]["bytes"], total_tokens + tokens
    assert result.metrics["bits_per_byte"] == pytest.approx(total_nll / (math.log(2) * total_bytes), rel=1e-4)
    assert result.metrics["perplexity"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-4)


def test_windows_predict_every_token_of_a_long_document_once_and_nothing_else(loaded, monkeypatch):
    import importlib

    module = importlib.import_module("tunelab.evaluation.evaluate")  # the package exports the function of that name
    seen = []
    real = module.window_nll

    def spy(model, windows, **options):
        seen.extend(windows)
        return real(model, windows, **options)

    monkeypatch.setattr(module, "window_nll", spy)
    text = TEXTS[2] * 4
    result = evaluate(loaded, [TextRecord(text)], "text", config=EvalConfig(), data_config=DataConfig(max_length=32))
    assert len(seen) > 1
    # A window's first token is context only (the model predicts each token from those before it).
    targets = [token for _, labels in seen for token in labels[1:] if token != -100]
    assert targets == loaded.tokenizer.encode(text, add_special_tokens=False)
    assert seen[0][0][0] == loaded.tokenizer.eos_token_id and result.rows[0]["scores"]["tokens"] == len(targets)


def _stored(name, settings):
    rows = [{"id": f"d{i}", "source": "", "prompt": "", "reference": "", "prediction": "",
             "scores": {"nll": 30.0 + i, "tokens": 10, "bytes": 40}} for i in range(40)]
    return EvalResult("text", name, 40, {}, rows, settings=settings)


def test_an_evaluation_scored_by_the_old_rule_is_never_compared_with_a_new_one(loaded):
    new = evaluate(loaded, [TextRecord(t) for t in TEXTS], "text", config=EvalConfig(), data_config=DataConfig(max_length=256))
    old = _stored("old", {"stride": 128})  # written before the rule was recorded: the first token unpredicted, EOS predicted
    with pytest.raises(DataError, match="scored by different rules"):
        compare_evaluations(old, _stored("new", {"text_scoring": new.settings["text_scoring"]}))
    compare_evaluations(_stored("a", dict(new.settings)), _stored("b", dict(new.settings)), samples=50)


def test_with_a_bos_the_document_is_scored_after_it_and_still_without_an_eos(tiny_tokenizer):
    # A Llama/Gemma/Mistral tokenizer puts its BOS before a text: that BOS is the context of the first token, as a
    # served prompt starts (``inference.completion_prompt``); the EOS is never a target of the scoring.
    import copy

    from tokenizers import processors

    from tunelab.data.tokenize import tokenize_text

    bos = tiny_tokenizer.bos_token_id
    adding = copy.deepcopy(tiny_tokenizer)
    backend = copy.deepcopy(tiny_tokenizer.backend_tokenizer)
    backend.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    adding._tokenizer = backend
    text_ids = adding.encode(TEXTS[2], add_special_tokens=False)
    for max_length in (256, 16):
        windows = tokenize_text(TextRecord(TEXTS[2]), adding, max_length, max_length // 2, scoring=True)
        assert windows[0].input_ids[0] == bos
        assert [token for w in windows for token in w.labels[1:] if token != -100] == text_ids, max_length
