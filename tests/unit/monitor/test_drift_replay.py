"""Replays real drift from BANKING77 through the request log and `tunelab monitor`.

A router "trained" on 12 intents (the classical side: TF-IDF + logistic regression, the project's own
classical baseline recipe, standing in for the tuned model so the test stays CPU-cheap; the served
path is tested with a real server in tests/unit/serve and tests/unit/tasks/test_retrain.py) answers
traffic that the server's own request-log writer records, with the same columns a server writes.
Traffic from unused rows of its own intents reports ok; traffic mixing intents it never saw flags
drift (exit code 3); labelled feedback shows as live accuracy with its interval.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from datetime import UTC, datetime

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import main as cli_main
from tunelab.config import parse_config
from tunelab.data.split import make_split
from tunelab.evaluation.result import EvalResult
from tunelab.registry.store import Registry
from tunelab.serve.request_log import Feedback, RequestLog, add_feedback

pytestmark = pytest.mark.shared_data

OWN = 12




def _rows(shared_data):
    with (shared_data / "banking77" / "train.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _router(tmp_path, shared_data):
    """A run folder (config, split, test evaluation) over 12 intents, and a classifier that serves it."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    rows = _rows(shared_data)
    intents = sorted({row["category"] for row in rows})
    rng = random.Random(0)
    own = rng.sample(intents, OWN)
    by_intent = {intent: [row["text"] for row in rows if row["category"] == intent] for intent in intents}
    for texts in by_intent.values():
        rng.shuffle(texts)
    train_rows = [{"text": t, "label": i} for i in own for t in by_intent[i][:60]]
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    run_dir = tmp_path / "runs" / "router"
    (run_dir / "adapter").mkdir(parents=True)
    config = parse_config({"task": "classify", "data": {"train": str(train_file), "test_size": 0.2, "validation_size": 0.1}})
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    split = make_split(config)
    split.save(run_dir / "split.json")
    vectorizer = TfidfVectorizer(sublinear_tf=True)
    classifier = LogisticRegression(max_iter=2000, C=10).fit(vectorizer.fit_transform([r.text for r in split.train]), [r.label for r in split.train])

    def predict(texts):
        probabilities = classifier.predict_proba(vectorizer.transform(texts))
        return [dict(zip(classifier.classes_.tolist(), row.tolist(), strict=True)) for row in probabilities]

    test_answers = predict([r.text for r in split.test])
    test_rows = [
        {"id": r.id, "prompt": r.text, "reference": r.label, "prediction": max(p, key=p.get),
         "scores": {"correct": float(max(p, key=p.get) == r.label), "confidence": max(p.values())}}
        for r, p in zip(split.test, test_answers, strict=True)
    ]
    accuracy = sum(row["scores"]["correct"] for row in test_rows) / len(test_rows)
    EvalResult("classify", "router", len(test_rows), {"accuracy": accuracy}, test_rows).save(run_dir / "eval" / "tuned.json")
    registry = Registry(tmp_path / "runs" / "registry.db")
    run_id = registry.create_run(name="router", task="classify", status="finished", run_dir=str(run_dir)).id
    unused_own = [(t, i) for i in own for t in by_intent[i][60:100]]
    unseen = [(t, i) for i in intents if i not in own for t in by_intent[i][:8]]
    return run_id, predict, unused_own, unseen, registry.path


def _serve_log(path, run_id, predict, traffic):
    """Write the traffic the way the server does: one row per request through the request log's writer."""
    log = RequestLog(path)
    ids = []
    for index, ((text, _), probabilities) in enumerate(zip(traffic, predict([t for t, _ in traffic]), strict=True)):
        label = max(probabilities, key=probabilities.get)
        response_id = f"clf-replay-{index}"
        ids.append(response_id)
        log.record({
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"), "endpoint": "/v1/classify", "model": "router",
            "prompt": json.dumps(text), "output": label, "status": 200, "stream": 0, "latency_ms": 20.0,
            "response_id": response_id, "run_id": run_id, "predicted_label": label, "top_probability": max(probabilities.values()),
            "probabilities": json.dumps([probabilities]),
        })
    log.close()
    return ids


def _monitor(log, registry_path):
    if not cli_main.app.registered_commands:
        cli_main._register_commands()
    result = CliRunner().invoke(cli_main.app, ["monitor", "--log-db", str(log), "--registry", str(registry_path), "--json"])
    return result.exit_code, json.loads(result.output)


def test_banking77_drift_is_flagged_and_own_traffic_is_ok(tmp_path, shared_data):
    run_id, predict, unused_own, unseen, registry_path = _router(tmp_path, shared_data)
    rng = random.Random(1)
    own_only = rng.sample(unused_own, 300)
    ok_log = tmp_path / "ok.db"
    _serve_log(ok_log, run_id, predict, own_only)
    code, report = _monitor(ok_log, registry_path)
    statuses = {s["name"]: s["status"] for s in report["models"][0]["signals"]}
    assert code == 0 and report["status"] != "drifted", statuses
    assert report["models"][0]["run_id"] == run_id and report["models"][0]["requests"] == 300

    drifted = rng.sample(unseen, 150) + rng.sample(unused_own, 150)
    rng.shuffle(drifted)
    drift_log = tmp_path / "drift.db"
    ids = _serve_log(drift_log, run_id, predict, drifted)
    add_feedback(drift_log, [Feedback(i, label=label) for i, (_, label) in zip(ids, drifted, strict=True)], source="test")
    code, report = _monitor(drift_log, registry_path)
    signals = {s["name"]: s for s in report["models"][0]["signals"]}
    assert code == 3, {name: (s["status"], s["judged"]) for name, s in signals.items()}
    drifted_signals = [name for name, s in signals.items() if s["status"] == "drifted"]
    assert {"oov_share", "centroid_distance", "confidence_drop"} & set(drifted_signals)
    accuracy = signals["live_accuracy"]
    # Half the traffic is intents the router cannot answer: live accuracy at most about half, interval below the test's.
    assert accuracy["value"] < 0.6 and accuracy["extra"]["high"] < accuracy["reference"]
    assert accuracy["status"] == "drifted" and len(accuracy["extra"]["new_labels"]) > 10
    assert Counter(s["status"] for s in signals.values())["drifted"] >= 2
