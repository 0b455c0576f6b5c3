"""Serving a classify run with an out-of-scope threshold: below it, /v1/classify and the chat answer say the out-of-scope label."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.unit.serve.conftest import write_fake_run

from tunelab.data.labels import OutOfScope
from tunelab.serve import ServeSettings, create_app
from tunelab.serve.adapters import load_registry

LOCAL = "http://127.0.0.1"  # the Host a loopback-bound server answers (its DNS-rebinding guard refuses others)

TEXTS = ["my card has not arrived", "login fails every time", "refund please", "What is the capital of France?"]


def test_below_the_threshold_the_answer_is_the_out_of_scope_label(tmp_path, tiny_model_dir, tiny_tokenizer):
    # Two copies of the same classify run; only the second gets out_of_scope.json.
    plain = write_fake_run(tmp_path / "plain", tiny_model_dir, tiny_tokenizer, seed=3, task="classify")
    guarded = Path(shutil.copytree(plain, tmp_path / "guarded"))
    registry = load_registry(str(tiny_model_dir), [("plain", str(plain)), ("guarded", str(guarded))])
    settings = ServeSettings(max_tokens_limit=24, log_path=tmp_path / "requests.db")
    with TestClient(create_app(registry, settings), base_url=LOCAL) as client:
        before = client.post("/v1/classify", json={"model": "plain", "input": TEXTS}).json()["data"]
    confidences = sorted(max(item["probabilities"].values()) for item in before)
    assert confidences[0] < confidences[-1]  # the threshold below separates them
    threshold = (confidences[1] + confidences[2]) / 2
    OutOfScope("out_of_scope", threshold).save(guarded / "out_of_scope.json")
    registry = load_registry(str(tiny_model_dir), [("plain", str(plain)), ("guarded", str(guarded))])
    with TestClient(create_app(registry, settings), base_url=LOCAL) as client:
        after = client.post("/v1/classify", json={"model": "guarded", "input": TEXTS}).json()["data"]
        for text, plain_item, item in zip(TEXTS, before, after, strict=True):
            confidence = max(plain_item["probabilities"].values())
            assert item["probabilities"] == pytest.approx(plain_item["probabilities"])
            assert item["top_label"] == plain_item["label"] and item["confidence"] == pytest.approx(confidence)
            assert item["out_of_scope_threshold"] == pytest.approx(threshold)
            expected = "out_of_scope" if confidence < threshold else plain_item["label"]
            assert item["label"] == expected and item["out_of_scope"] == (expected == "out_of_scope")
            # The chat answer of a classify model is the same label, with the reason beside it.
            answer = client.post(
                "/v1/chat/completions", json={"model": "guarded", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
            ).json()
            assert answer["choices"][0]["message"]["content"] == expected
            assert answer["classification"]["label"] == expected and answer["classification"]["out_of_scope"] == item["out_of_scope"]
        assert sum(item["out_of_scope"] for item in after) == 2
        # A run without the file answers as before, without the extra fields.
        unguarded = client.post("/v1/classify", json={"model": "plain", "input": TEXTS[:1]}).json()["data"][0]
        assert "out_of_scope" not in unguarded and unguarded["label"] == before[0]["label"]
