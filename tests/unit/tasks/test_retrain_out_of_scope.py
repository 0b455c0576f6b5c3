"""A retrain of a run with an out-of-scope file (``data.out_of_scope``): the champion's split already holds those
requests in its validation and test records, so the challenger's fresh test set must be old test + recent slice,
each out-of-scope request once, none of them also in validation."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tunelab.config import parse_config
from tunelab.data.split import load_split
from tunelab.runs import Run
from tunelab.tasks.pipeline import run_pipeline

WORDS = {"A": ["billing", "refund", "cancel", "shipping"], "B": ["technical", "login", "account", "other"]}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _rows(label: str, start: int, count: int) -> list[dict]:
    words, index = WORDS[label], "AB".index(label)
    return [{"text": f"{words[i % 4]} {words[(i // 4) % 4]} number {1000 + 3 * i + index}", "label": label} for i in range(start, start + count)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_retrain_keeps_the_champions_out_of_scope_requests_once_and_apart(tmp_path, tiny_model_dir):
    """The challenger read data.out_of_scope again and shared its requests over the fresh validation and test sets a
    second time: out-of-scope rows twice in the test set both models are judged on (20 + 16 recent became 45), and one
    in validation and test at once (the challenger's threshold chosen on a test request)."""
    from tunelab.tasks.retrain import retrain

    runs = tmp_path / "runs"
    registry_path = runs / "registry.db"
    train = _write(tmp_path / "train.jsonl", _rows("A", 0, 24) + _rows("B", 0, 24))
    outside = _write(tmp_path / "outside.jsonl", [{"text": f"paris capital number {5000 + i}", "label": "none"} for i in range(12)])
    config = parse_config({
        "task": "classify", "model": str(tiny_model_dir), "name": "router-v1", "registry": str(registry_path),
        "data": {"train": str(train), "test_size": 0.25, "validation_size": 0.1, "max_length": 64,
                 "out_of_scope": str(outside), "out_of_scope_label": "none"},
        "train": {"method": "lora", "lr": 5e-3, "epochs": 1, "batch_size": 8, "output_dir": str(runs)},
        "eval": {"bootstrap_samples": 100, "baselines": []},
    })
    champion = run_pipeline(config, calibrate=False)
    opened = Run.open(champion.run_dir)
    old = load_split(opened.folder.split, opened.config)
    new = _write(tmp_path / "new.jsonl", _rows("A", 100, 16) + _rows("B", 100, 16))
    outcome = retrain(champion.registry_id, [new], registry_path=registry_path, promote=False)

    challenger = Run.open(outcome.challenger["run_dir"])
    fresh = load_split(challenger.folder.split, challenger.config)
    test, validation = [r.text for r in fresh.test], [r.text for r in fresh.validation]
    assert len(test) == len(set(test)) and len(validation) == len(set(validation))
    assert not set(test) & set(validation)
    assert outcome.sizes["test"] == len(old.test) + outcome.sizes["recent_test"] == outcome.overall["n"]
    assert Counter(r.label for r in fresh.test)["none"] == Counter(r.label for r in old.test)["none"] > 0
    assert Counter(r.label for r in fresh.validation)["none"] == Counter(r.label for r in old.validation)["none"] > 0


def test_new_out_of_scope_labels_are_not_a_new_label_nor_trained_on(tmp_path, tiny_model_dir):
    """Feedback confirming requests as out of scope (the run's out-of-scope label) was reported as a new label, counted as
    new training records (the split step then moved them over validation and test), and the test set grew past old
    test + recent slice."""
    from tunelab.tasks.retrain import retrain

    runs = tmp_path / "runs"
    registry_path = runs / "registry.db"
    train = _write(tmp_path / "train.jsonl", _rows("A", 0, 24) + _rows("B", 0, 24))
    outside = _write(tmp_path / "outside.jsonl", [{"text": f"paris capital number {5000 + i}", "label": "none"} for i in range(12)])
    config = parse_config({
        "task": "classify", "model": str(tiny_model_dir), "name": "router-v1", "registry": str(registry_path),
        "data": {"train": str(train), "test_size": 0.25, "validation_size": 0.1, "max_length": 64,
                 "out_of_scope": str(outside), "out_of_scope_label": "none"},
        "train": {"method": "lora", "lr": 5e-3, "epochs": 1, "batch_size": 8, "output_dir": str(runs)},
        "eval": {"bootstrap_samples": 100, "baselines": []},
    })
    champion = run_pipeline(config, calibrate=False)
    old = load_split(Run.open(champion.run_dir).folder.split, Run.open(champion.run_dir).config)
    confirmed = [{"text": f"paris paris number {7000 + i}", "label": "none"} for i in range(8)]
    new = _write(tmp_path / "new.jsonl", _rows("A", 100, 16) + _rows("B", 100, 16) + confirmed)
    outcome = retrain(champion.registry_id, [new], registry_path=registry_path, promote=False)

    assert outcome.new_labels == []
    challenger = Run.open(outcome.challenger["run_dir"])
    fresh = load_split(challenger.folder.split, challenger.config)
    assert outcome.sizes["test"] == len(fresh.test) == len(old.test) + outcome.sizes["recent_test"]
    assert outcome.sizes["old_train"] + outcome.sizes["new_train"] == len(fresh.train)
    assert "none" not in {r.label for r in fresh.train}
    confirmed_texts = {row["text"] for row in confirmed}
    assert confirmed_texts <= {r.text for r in fresh.test} | {r.text for r in fresh.validation}
