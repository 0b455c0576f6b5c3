"""A retrain's challenger name taken already (`--name` of an existing run, or two retrains of one champion started in
the same second: the default name has a one-second stamp) wrote its data files first and was refused after: files of
a retrain that never ran were left behind, or the data files of the retrain that owns the name were replaced under it
(its recorded training data changed). The name is checked, and its data folder claimed, before anything is written."""

from __future__ import annotations

import json

import pytest

from tunelab.config import parse_config
from tunelab.errors import ConfigError
from tunelab.tasks.pipeline import run_pipeline
from tunelab.tasks.retrain import retrain


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _rows(label, start, count):
    words = {"A": ["billing", "refund", "cancel", "shipping"], "B": ["technical", "login", "account", "other"]}[label]
    return [{"text": f"{words[i % 4]} {words[(i // 4) % 4]} number {1000 + 2 * i + 'AB'.index(label)}", "label": label} for i in range(start, start + count)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_taken_challenger_name_writes_nothing(tmp_path, tiny_model_dir):
    runs = tmp_path / "runs"
    registry_path = runs / "registry.db"
    train = _write(tmp_path / "train.jsonl", _rows("A", 0, 24) + _rows("B", 0, 24))
    config = parse_config({
        "task": "classify", "model": str(tiny_model_dir), "name": "router-v1", "registry": str(registry_path),
        "data": {"train": str(train), "test_size": 0.25, "validation_size": 0.1, "max_length": 64},
        "train": {"method": "lora", "lr": 5e-3, "epochs": 1, "batch_size": 8, "output_dir": str(runs)},
        "eval": {"bootstrap_samples": 100, "baselines": []},
    })
    champion = run_pipeline(config, calibrate=False)
    new = _write(tmp_path / "new.jsonl", _rows("A", 100, 10) + _rows("B", 100, 10))

    with pytest.raises(ConfigError, match="router-v1") as refused:
        retrain(champion.registry_id, [new], registry_path=registry_path, name="router-v1", promote=False)
    assert "\n" not in refused.value.message
    assert not (runs / "retrain-data" / "router-v1").exists()

    # Another retrain's data folder under the same name: left as it is.
    owned = runs / "retrain-data" / "router-v2" / "train.jsonl"
    owned.parent.mkdir(parents=True)
    owned.write_text("the other retrain's data\n")
    with pytest.raises(ConfigError, match="router-v2"):
        retrain(champion.registry_id, [new], registry_path=registry_path, name="router-v2", promote=False)
    assert owned.read_text() == "the other retrain's data\n" and sorted(p.name for p in owned.parent.iterdir()) == ["train.jsonl"]
