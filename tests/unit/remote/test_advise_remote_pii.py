"""`tunelab advise` with a remote baseline asks that model every validation row: personal data in them is said with its
host before the first request, or refused with nothing asked (``data.pii``), as `tunelab run` does for its test split."""

from __future__ import annotations

import json

import pytest
from fake_provider import FakeProvider

from tunelab.config import parse_config
from tunelab.errors import DataError
from tunelab.tasks.advise import advise

EMAIL = "jane.roe@acme-mail.com"


class _Stop(Exception):
    pass


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def provider():
    provider = FakeProvider(base_models=("gpt-test",))
    provider.url = provider.start()
    yield provider
    provider.stop()


def _config(tmp_path, tiny_model_dir, provider, pii):
    rows = [{"text": f"{'apple pear' if i % 2 else 'billing card'} {i}, write to {EMAIL}", "label": "AB"[i % 2]} for i in range(20)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return parse_config({
        "task": "classify", "model": str(tiny_model_dir), "name": "tiny",
        "data": {"train": str(train), "test_size": 0.2, "validation_size": 0.2, "max_length": 64, "pii": pii},
        "train": {"method": "full", "epochs": 1, "batch_size": 8, "output_dir": str(tmp_path / "runs")},
        "eval": {"baselines": ["classical", {"endpoint": {"base_url": provider.url, "name": "gpt-test"}, "as": "gpt"}]},
    })


def _chats(provider) -> int:
    return provider.count("POST", "/v1/chat/completions")


def test_refuse_asks_the_remote_baseline_nothing(tmp_path, tiny_model_dir, provider):
    with pytest.raises(DataError, match=r"the validation split \(\d+ requests\) holds \d+ e-mail addresses \(e\.g\. \S+train\.jsonl:\d+ "
                                        r"text: j\*\*\*@acme-mail\.com\) and data\.pii is refuse"):
        advise(_config(tmp_path, tiny_model_dir, provider, "refuse"), budget_minutes=None, calibrate=False, folder=tmp_path / "advice")
    assert _chats(provider) == 0 and not (tmp_path / "advice").exists()


def test_warn_names_the_host_before_the_first_request(tmp_path, tiny_model_dir, provider, monkeypatch):
    def stop(*args, **kwargs):
        raise _Stop  # after the opponents, before any curve run

    monkeypatch.setattr("tunelab.estimate.estimate_inputs", stop)
    said = []

    def on_event(step, status, details):
        if "will be sent to" in str(details.get("message", "")):
            said.append((details["message"], _chats(provider)))

    with pytest.raises(_Stop):
        advise(_config(tmp_path, tiny_model_dir, provider, "warn"), budget_minutes=None, calibrate=False, folder=tmp_path / "advice",
               on_event=on_event)
    host = provider.url.split("//", 1)[1].split("/", 1)[0]
    assert len(said) == 1 and said[0][1] == 0, said
    assert said[0][0].startswith("the validation split (") and said[0][0].endswith(f"they will be sent to {host}")
    assert _chats(provider) > 0  # warned, not blocked
