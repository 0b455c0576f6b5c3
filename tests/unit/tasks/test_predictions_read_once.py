"""`tunelab run` with the current system's answers ({predictions: PATH} in eval.baselines) reads and parses the file
once: before the base model loads (its unreadable rows), at the split (matched to the test requests) and when the
baseline is scored, the same parse serves, kept on the run by the file's content."""

import json

import pytest

from tunelab.config import parse_config
from tunelab.tasks.pipeline import run_pipeline

WORDS = {"A": ["apple", "pear", "plum", "fruit"], "B": ["billing", "account", "card", "refund"]}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _write(path, n, offset=0):
    rows = [{"text": f"{WORDS['AB'[i % 2]][i % 4]} {WORDS['AB'[i % 2]][(i // 2) % 4]} number {i + offset}", "label": "AB"[i % 2]}
            for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_run_reads_its_predictions_file_once(tmp_path, tiny_model_dir, monkeypatch):
    from tunelab.data import predictions

    reads = []
    real = predictions.read_predictions

    def counted(entry, task, data):
        reads.append(entry.path)
        return real(entry, task, data)

    monkeypatch.setattr(predictions, "read_predictions", counted)
    answers = _write(tmp_path / "current.jsonl", 12, offset=100)
    config = parse_config({
        "task": "classify", "model": str(tiny_model_dir), "name": "once",
        "data": {"train": str(_write(tmp_path / "train.jsonl", 32)), "test": str(_write(tmp_path / "test.jsonl", 12, offset=100)),
                 "validation_size": 0.2, "max_length": 64},
        "train": {"method": "full", "epochs": 1, "batch_size": 8, "output_dir": str(tmp_path / "runs")},
        "eval": {"bootstrap_samples": 100, "baselines": [{"predictions": str(answers), "name": "current"}]},
    })
    outcome = run_pipeline(config)
    assert reads == [str(answers)]
    assert json.loads((outcome.run_dir / "eval" / "current.json").read_text())["n"] == 12  # scored all the same
