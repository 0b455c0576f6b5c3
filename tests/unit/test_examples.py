"""Every example config parses, its data files exist with the expected fields, and tests are held out."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tunelab.config import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FIELDS = {"classify": {"text", "label"}, "sft": {"prompt", "completion"}, "text": {"text"}}
CONFIGS = sorted(EXAMPLES.glob("*/config.yaml"))


def _rows(path: str) -> list[dict]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_the_three_use_cases_are_there():
    assert {config.parent.name for config in CONFIGS} >= {"support-routing", "qa-assistant", "author-style"}


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda path: path.parent.name)
def test_example_config_and_data(config_path):
    config = load_config(config_path)
    assert (config_path.parent / "README.md").is_file()
    for key in ("train", "test"):
        path = getattr(config.data, key)
        assert path and Path(path).is_file(), f"{config_path}: data.{key} missing"
        rows = _rows(path)
        assert rows, f"{path} is empty"
        for row in rows:
            assert FIELDS[config.task] <= set(row), f"{path}: a row lacks {FIELDS[config.task] - set(row)}"
            assert all(isinstance(row[field], str) and row[field].strip() for field in FIELDS[config.task])
    train, test = _rows(config.data.train), _rows(config.data.test)
    key = "prompt" if config.task == "sft" else "text"
    assert not {row[key] for row in train} & {row[key] for row in test}, "test rows also appear in train"
    assert len({row[key] for row in train}) == len(train), "duplicate training rows"


def test_support_routing_is_balanced_and_held_out():
    config = load_config(EXAMPLES / "support-routing" / "config.yaml")
    train, test = _rows(config.data.train), _rows(config.data.test)
    train_labels, test_labels = Counter(row["label"] for row in train), Counter(row["label"] for row in test)
    assert len(train_labels) == 8 and set(train_labels) == set(test_labels)
    assert min(train_labels.values()) >= 30 and min(test_labels.values()) >= 8
    normalise = lambda text: " ".join(text.lower().split())  # noqa: E731
    assert not {normalise(row["text"]) for row in train} & {normalise(row["text"]) for row in test}
    assert all(5 <= len(row["text"].split()) <= 45 for row in train + test)


def test_support_routing_out_of_scope_file_and_config():
    from tunelab.data.split import make_split

    config = load_config(EXAMPLES / "support-routing" / "config-out-of-scope.yaml")
    assert config.data.out_of_scope_label == "out_of_scope"
    quickstart = load_config(EXAMPLES / "support-routing" / "config.yaml")
    assert (config.data.train, config.data.test) == (quickstart.data.train, quickstart.data.test)
    assert quickstart.data.out_of_scope_label is None  # the quickstart itself is unchanged
    outside = _rows(config.data.out_of_scope)
    assert 40 <= len(outside) <= 60 and {row["label"] for row in outside} == {"out_of_scope"}
    normalise = lambda text: " ".join(text.lower().split())  # noqa: E731
    texts = {normalise(row["text"]) for row in outside}
    assert len(texts) == len(outside)
    in_scope = _rows(config.data.train) + _rows(config.data.test)
    assert not texts & {normalise(row["text"]) for row in in_scope}
    split = make_split(config)
    assert "out_of_scope" not in {r.label for r in split.train}
    # Shared as the in-scope records (80 test, 32 validation): the same out-of-scope share on both sides.
    assert [r.label for r in split.test].count("out_of_scope") == 36 and [r.label for r in split.validation].count("out_of_scope") == 14
