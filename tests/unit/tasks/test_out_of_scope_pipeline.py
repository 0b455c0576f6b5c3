"""`tunelab run` with data.out_of_scope_label on the tiny model: the label is never trained, the run
saves its threshold, the tuned model and every baseline are judged with their own thresholds."""

import json

import numpy as np
import pytest
import torch

from tunelab.config import parse_config
from tunelab.data.labels import LabelMap, OutOfScope
from tunelab.data.split import load_split
from tunelab.evaluation.evaluate import evaluate
from tunelab.evaluation.metrics import choose_threshold
from tunelab.inference import Classifier
from tunelab.models.heads import causal_lm_of
from tunelab.runs import load_run
from tunelab.tasks.pipeline import run_pipeline

WORDS = {"A": ["apple", "pear", "plum", "fruit"], "B": ["billing", "account", "card", "refund"]}
OUTSIDE = ["weather", "football", "poem", "recipe"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_run_with_out_of_scope_requests(tmp_path, tiny_model_dir):
    rows = []
    for i in range(48):
        label = "AB"[i % 2]
        rows.append({"text": f"{WORDS[label][i % 4]} {WORDS[label][(i // 2) % 4]} number {i}", "label": label})
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    outside = tmp_path / "out_of_scope.jsonl"
    outside.write_text("".join(json.dumps({"text": f"{OUTSIDE[i % 4]} {OUTSIDE[(i + 1) % 4]} {i}", "label": "other"}) + "\n" for i in range(16)))
    config = parse_config({
        "task": "classify", "model": str(tiny_model_dir), "name": "oos",
        "data": {"train": str(train), "out_of_scope": str(outside), "out_of_scope_label": "other",
                 "test_size": 0.25, "validation_size": 0.25, "max_length": 64},
        "train": {"method": "full", "lr": 3e-3, "epochs": 4, "batch_size": 8, "output_dir": str(tmp_path / "runs")},
        "eval": {"bootstrap_samples": 200, "skip_hopeless": False},
    })
    outcome = run_pipeline(config)
    run = outcome.run_dir
    split = load_split(run / "split.json", config)
    assert "other" not in {r.label for r in split.train}
    assert [r.label for r in split.test].count("other") == 8 and [r.label for r in split.validation].count("other") == 8
    # Never a class: not in the label map, so never a label token.
    assert LabelMap.load(run / "labels.json").labels == ["A", "B"]
    saved = OutOfScope.load(run / "out_of_scope.json", run / "out_of_scope.npy")
    assert saved.label == "other" and saved.validation["queries"] == len(split.validation)
    # Each candidate score's threshold is the rule applied to the saved run's scores of the validation queries,
    # computed here without tunelab's inference: the top probability of the label tokens, and the cosine similarity
    # of the last prompt token's final hidden state to the nearest training request's.
    loaded = load_run(run)
    assert loaded.out_of_scope == saved
    scored = evaluate(loaded, split.validation, "classify", config=config.eval, data_config=config.data, out_of_scope=OutOfScope("other", 0.0))
    confidence = [row["scores"]["confidence"] for row in scored.rows]
    correct = [row["label_prediction"] == row["reference"] for row in scored.rows]
    outside = [row["reference"] == "other" for row in scored.rows]
    states = {}
    for record in [*split.train, *split.validation]:
        ids = torch.tensor([Classifier.for_model(loaded).prompt(record.text)[0]])
        with torch.inference_mode():
            state = causal_lm_of(loaded.model).get_decoder()(input_ids=ids).last_hidden_state[0, -1].double().numpy()
        states[record.id] = state / np.linalg.norm(state)
    training = np.stack([states[r.id] for r in split.train])
    nearest = [float((training @ states[r.id]).max()) for r in split.validation]
    candidates = saved.validation["scores"]
    assert set(candidates) == {"probability", "nearest"}
    assert candidates["probability"]["threshold"] == pytest.approx(choose_threshold(confidence, correct, outside)[0])
    assert candidates["nearest"]["threshold"] == pytest.approx(choose_threshold(nearest, correct, outside)[0], abs=1e-4)
    chosen = max(candidates, key=lambda name: candidates[name]["accuracy"])
    assert saved.score == chosen and saved.threshold == candidates[chosen]["threshold"]
    assert (run / "out_of_scope.npy").is_file() == (chosen == "nearest")
    # The tuned evaluation applies it; every baseline has its own, chosen on the same validation queries.
    tuned = outcome.tuned_metrics
    assert tuned["out_of_scope_threshold"] == saved.threshold and tuned["out_of_scope_queries"] == 8
    for key in ("in_scope_accuracy", "out_of_scope_precision", "out_of_scope_recall", "out_of_scope_f1"):
        assert key in tuned and all(key in metrics for metrics in outcome.baseline_metrics.values())
        assert outcome.comparison.comparisons["classical"].metric(key).after == tuned[key]
    for name in ("base", "classical", "embedding", "few_shot"):
        evaluation = json.loads((run / "eval" / f"{name}.json").read_text())
        assert evaluation["settings"]["out_of_scope"]["validation"]["queries"] == len(split.validation)
        assert evaluation["n"] == len(split.test)
    report = (run / "report.md").read_text()
    assert "in_scope_accuracy" in report and "out of scope: 'other'" in report
