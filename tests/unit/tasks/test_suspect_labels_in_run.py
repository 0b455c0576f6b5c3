"""`tunelab run` says, before training, which training rows the embedding baseline's cross-validation doubts: one
warning and a file in the run folder (and the report), from the baseline it scores anyway; nothing without it."""

import json

import numpy as np
import pytest

from tunelab.config import parse_config
from tunelab.tasks.pipeline import run_pipeline

WORDS = {"A": ["apple", "pear", "plum", "fruit"], "B": ["billing", "account", "card", "refund"]}
FLIPPED_LINE = 7  # an A request filed under B


@pytest.fixture(autouse=True)
def _private_cache_and_fake_embedder(tmp_path_factory, monkeypatch):
    """A fake sentence embedding (how many words of each label a text has, a little seeded noise): no model to load."""
    from tunelab.evaluation import baselines
    from tunelab.models import embedding

    def embed(model, texts, progress=None):
        vectors = np.asarray([[sum(w in WORDS[label] for w in text.split()) for label in "AB"]
                              + list(np.random.default_rng(sum(map(ord, text))).normal(scale=0.1, size=2)) for text in texts])
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setattr(baselines, "load_embedder", lambda config, allow_network: (None, type("Source", (), {"display_name": "fake"})()))
    monkeypatch.setattr(embedding, "embed_texts", embed)


def _write(path, count, flipped=None):
    rows = []
    for i in range(count):
        label = "AB"[i % 2]
        words = WORDS[label]
        written = ("B" if label == "A" else "A") if i + 1 == flipped else label
        rows.append({"text": f"{words[i % 4]} {words[(i // 2) % 4]} number {i}", "label": written})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(tmp_path, tiny_model_dir, name, baselines):
    train = _write(tmp_path / "train.jsonl", 40, flipped=FLIPPED_LINE)
    test = _write(tmp_path / "test.jsonl", 20)
    return parse_config({
        "task": "classify", "model": str(tiny_model_dir), "name": name,
        "data": {"train": str(train), "test": str(test), "validation_size": 0.1, "max_length": 32},
        "train": {"method": "full", "lr": 3e-3, "epochs": 1, "batch_size": 8, "output_dir": str(tmp_path / "runs")},
        "eval": {"bootstrap_samples": 100, "baselines": baselines},
    })


def test_a_flipped_label_is_said_before_training_and_listed_in_the_run_folder(tmp_path, tiny_model_dir):
    events = []
    outcome = run_pipeline(_config(tmp_path, tiny_model_dir, "flipped", ["embedding"]), on_event=lambda s, st, d: events.append((s, st, d)))
    listed = json.loads((outcome.run_dir / "suspect_labels.json").read_text())
    where = f"{tmp_path / 'train.jsonl'}:{FLIPPED_LINE}"
    assert listed["records"] == 40 and listed["checked"] == 40 and listed["weak"] is None
    assert listed["suspects"][0]["source"] == where and (listed["suspects"][0]["given"], listed["suspects"][0]["suggested"]) == ("B", "A")
    assert listed["count"] == len(listed["suspects"]) >= 1
    warning = next(d["message"] for s, st, d in events if st == "warn" and "suspect label" in d["message"])
    assert f"{tmp_path / 'train.jsonl'}: line {FLIPPED_LINE} B → A" in warning and f"{listed['count']} of 40 training rows" in warning
    assert str(outcome.run_dir / "suspect_labels.json") in warning and warning in outcome.warnings
    # Said before training starts, and training went on with the labels as given.
    said = next(i for i, (s, st, d) in enumerate(events) if st == "warn" and "suspect label" in d["message"])
    assert said < events.index(next(e for e in events if e[:2] == ("train", "start")))
    assert outcome.train is not None and outcome.comparison is not None
    report = (outcome.run_dir / "report.md").read_text()
    assert "## Suspect labels" in report and f"{FLIPPED_LINE}" in report.split("## Suspect labels")[1]
    assert "Suspect labels" in (outcome.run_dir / "report.html").read_text()
    # `tunelab run --json` and `tunelab show` (the registry's artifacts) say it too.
    assert outcome.suspect_labels == {"path": str(outcome.run_dir / "suspect_labels.json"), "count": listed["count"], "records": 40}
    from tunelab.registry.store import Registry

    shown = Registry(tmp_path / "runs" / "registry.db").get_run("flipped").artifacts["suspect_labels"]
    assert shown == f"{listed['count']} of 40 training rows: {outcome.run_dir / 'suspect_labels.json'}"


def test_a_run_without_the_embedding_baseline_writes_no_list_and_says_nothing(tmp_path, tiny_model_dir):
    events = []
    outcome = run_pipeline(_config(tmp_path, tiny_model_dir, "plain", ["classical"]), on_event=lambda s, st, d: events.append((s, st, d)))
    assert not (outcome.run_dir / "suspect_labels.json").exists()
    assert not any("suspect" in json.dumps(d).lower() for s, st, d in events)
    assert "Suspect labels" not in (outcome.run_dir / "report.md").read_text() and outcome.suspect_labels is None
