"""`tunelab advise` with the current system's answers among eval.baselines: advice is given on the validation rows,
which a predictions file of test answers does not cover, so it is skipped with its reason instead of failing."""

import json

import pytest

from tunelab.config import parse_config
from tunelab.tasks.advise import advise


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_advise_skips_the_predictions_baseline_and_says_why(tmp_path, tiny_model_dir):
    rows = [{"text": f"{'apple pear' if i % 2 else 'billing card'} number {i}", "label": "AB"[i % 2]} for i in range(20)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    answers = tmp_path / "current.jsonl"
    answers.write_text(json.dumps({"text": "billing card number 0", "label": "B"}) + "\n")
    config = parse_config({
        "task": "classify", "model": str(tiny_model_dir), "name": "tiny",
        "data": {"train": str(train), "test_size": 0.2, "validation_size": 0.2, "max_length": 64},
        "train": {"method": "full", "epochs": 1, "batch_size": 8, "output_dir": str(tmp_path / "runs")},
        "eval": {"baselines": ["classical", {"predictions": str(answers)}]},
    })
    advice = advise(config, budget_minutes=None, calibrate=False, folder=tmp_path / "advice")
    assert [o.name for o in advice.opponents] == ["classical"]
    assert any(w.startswith("current skipped: its predictions file answers the test requests") for w in advice.warnings), advice.warnings
