"""The loop end to end on the tiny model, a real server and SQLite:
serve (alias) -> traffic -> feedback -> monitor (ok, then drifted, exit code 3) -> retrain -> promote ->
the server follows the alias; and a retrain on shuffled labels is refused with its reason."""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import httpx
import pytest
from typer.testing import CliRunner

from tunelab.cli import main as cli_main
from tunelab.config import parse_config
from tunelab.data.split import load_split
from tunelab.registry.store import Registry
from tunelab.runs import Run
from tunelab.serve import BackgroundServer, ServeSettings, create_app
from tunelab.serve.adapters import load_registry
from tunelab.tasks.pipeline import run_pipeline

# Words the tiny tokenizer learnt whole (tests/conftest.py's corpus): LoRA on the tiny model learns them in a few
# epochs at lr 5e-3 (measured: 1e-2 learns two labels but collapses to one class with three).
WORDS = {
    "A": ["billing", "refund", "cancel", "shipping"],
    "B": ["technical", "login", "account", "other"],
    "C": ["positive", "negative", "capital", "paris"],  # an intent the champion never saw
}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def cli():
    if not cli_main.app.registered_commands:
        cli_main._register_commands()
    return CliRunner()


def _rows(label: str, start: int, count: int) -> list[dict]:
    # Every row has its own 4-digit number, interleaved across labels: never seen elsewhere, the same
    # number of tokens, and no hint of the label (the model must read the words).
    words, index = WORDS[label], "ABC".index(label)
    return [{"text": f"{words[i % 4]} {words[(i // 4) % 4]} number {1000 + 3 * i + index}", "label": label} for i in range(start, start + count)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _router_v1(tmp_path, tiny_model_dir, **data):
    """(runs folder, registry path, pipeline result) of a registered classify run on labels A and B, one epoch;
    ``data``: more data.* keys."""
    runs = tmp_path / "runs"
    registry_path = runs / "registry.db"
    train = _write(tmp_path / "train.jsonl", _rows("A", 0, 24) + _rows("B", 0, 24))
    config = parse_config({
        "task": "classify", "model": str(tiny_model_dir), "name": "router-v1", "registry": str(registry_path),
        "data": {"train": str(train), "test_size": 0.25, "validation_size": 0.1, "max_length": 64, **data},
        "train": {"method": "lora", "lr": 5e-3, "epochs": 1, "batch_size": 8, "output_dir": str(runs)},
        "eval": {"bootstrap_samples": 100, "baselines": []},
    })
    return runs, registry_path, run_pipeline(config, calibrate=False)


def _statuses(report):
    return "\n".join(f"{s['name']} {s['status']} {s['judged']} {s['detail']}" for m in report["models"] for s in m["signals"])


def _classify(client, text):
    response = client.post("/v1/classify", json={"model": "router", "input": text})
    assert response.status_code == 200
    return response.json()


def test_serve_feedback_monitor_retrain_promote_serve(tmp_path, tiny_model_dir, cli):
    runs = tmp_path / "runs"
    registry_path = runs / "registry.db"
    train = _write(tmp_path / "train.jsonl", _rows("A", 0, 40) + _rows("B", 0, 40))
    config = parse_config({
        "task": "classify", "model": str(tiny_model_dir), "name": "router-v1", "registry": str(registry_path),
        "data": {"train": str(train), "test_size": 0.25, "validation_size": 0.1, "max_length": 64},
        "train": {"method": "lora", "lr": 5e-3, "epochs": 12, "batch_size": 8, "output_dir": str(runs)},
        "eval": {"bootstrap_samples": 200, "baselines": ["classical"]},
        "monitor": {"min_requests": 10, "window": "1d"},
    })
    champion = run_pipeline(config, calibrate=False)
    assert champion.tuned_metrics["accuracy"] >= 0.75
    store = Registry(registry_path)
    store.set_alias("router", champion.registry_id)
    served = load_registry(str(tiny_model_dir), [("router", "alias:router")], registry_path=registry_path)
    monitor_config = tmp_path / "monitor.yaml"
    monitor_config.write_text("monitor:\n  min_requests: 10\n  window: 1d\n")

    # Undrifted traffic: unused rows of its own intents only -> ok, exit code 0.
    ok_log = tmp_path / "ok.db"
    with BackgroundServer(create_app(served, ServeSettings(log_path=ok_log))) as url, httpx.Client(base_url=url, timeout=60) as client:
        for row in _rows("A", 100, 20) + _rows("B", 100, 20):
            _classify(client, row["text"])
    result = cli.invoke(cli_main.app, ["monitor", "--log-db", str(ok_log), "--registry", str(registry_path), "--config", str(monitor_config), "--json"])
    report = json.loads(result.output)
    assert result.exit_code == 0, _statuses(report)
    assert report["status"] != "drifted" and report["models"][0]["run_id"] == champion.registry_id

    # Drifted traffic: a new intent plus unused rows of its own; support staff label every answer.
    drift_log = tmp_path / "drift.db"
    app = create_app(served, ServeSettings(log_path=drift_log, alias_poll_s=0.05))
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        traffic = _rows("C", 200, 80) + _rows("A", 200, 10) + _rows("B", 200, 10)
        random.Random(0).shuffle(traffic)
        for row in traffic:
            answer = _classify(client, row["text"])
            assert client.post("/v1/feedback", json={"id": answer["id"], "label": row["label"]}).status_code == 200
        plots = tmp_path / "plots"
        result = cli.invoke(cli_main.app, [
            "monitor", "--log-db", str(drift_log), "--registry", str(registry_path), "--config", str(monitor_config), "--json", "--plots", str(plots),
        ])
        report = json.loads(result.output)
        assert result.exit_code == 3, _statuses(report)
        signals = {s["name"]: s for s in report["models"][0]["signals"]}
        assert signals["oov_share"]["status"] == "drifted"
        assert signals["live_accuracy"]["value"] <= 0.5 and signals["live_accuracy"]["extra"]["new_labels"] == ["C"]
        assert list(plots.glob("*.png"))

        # Retrain on the feedback: the challenger learns the new intent and is promoted; the server follows.
        result = cli.invoke(cli_main.app, ["retrain", "alias:router", "--log-db", str(drift_log), "--registry", str(registry_path), "--json"])
        assert result.exit_code == 0, result.output
        outcome = json.loads(result.output[result.output.index("{"):])
        assert outcome["promoted"], outcome["reasons"]
        assert outcome["new_labels"] == ["C"] and outcome["recent"]["metrics"][0]["low"] > 0
        challenger = outcome["challenger"]["id"]
        assert store.alias("router") == challenger
        deadline = time.monotonic() + 30
        while client.get("/v1/models/router").json().get("run_id") != challenger and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/v1/models/router").json()["run_id"] == challenger
        labels = set(_classify(client, "positive capital number 999")["data"][0]["probabilities"])
        assert labels == {"A", "B", "C"}  # new labels extend the label map

    # A retrain on shuffled labels is refused, and says why.
    shuffled = _rows("C", 300, 20) + _rows("A", 300, 10) + _rows("B", 300, 10)
    labels = [row["label"] for row in shuffled]
    random.Random(1).shuffle(labels)
    shuffled_file = _write(tmp_path / "shuffled.jsonl", [{"text": r["text"], "label": label} for r, label in zip(shuffled, labels, strict=True)])
    result = cli.invoke(cli_main.app, ["retrain", "alias:router", "--data", str(shuffled_file), "--registry", str(registry_path), "--json"])
    outcome = json.loads(result.output[result.output.index("{"):])
    assert not outcome["promoted"] and any("recent slice" in reason for reason in outcome["reasons"])
    assert store.alias("router") == challenger
    assert [c.action for c in store.alias_history("router")] == ["promote", "promote"]

    result = cli.invoke(cli_main.app, ["rollback", "router", "--registry", str(registry_path)])
    assert result.exit_code == 0 and store.alias("router") == champion.registry_id


def test_dropped_new_records_are_counted_with_their_reason():
    """retrain left out feedback whose text was already in the run's data and said only "no new labelled records"."""
    from types import SimpleNamespace

    from tunelab.data.records import ClassifyRecord
    from tunelab.tasks.retrain import describe_dropped, new_records

    old = SimpleNamespace(train=[ClassifyRecord("a", "x")], validation=[ClassifyRecord("b", "x")], test=[ClassifyRecord("c", "y")])
    new = [ClassifyRecord("a", "y"), ClassifyRecord("c", "x"), ClassifyRecord("c", "x"), ClassifyRecord("d", "y"), ClassifyRecord("d", "x")]
    fresh, dropped = new_records(new, old)
    assert [r.text for r in fresh] == ["d"]
    assert dropped == {"in_train": 1, "in_test": 2, "repeated": 1}
    line = describe_dropped(dropped, len(new))
    assert line.startswith("4 of 5 new records left out") and "training records" in line and "test records" in line and "repeated" in line


def _evaluation(name: str, correct: list[bool], prefix: str):
    from tunelab.evaluation.result import EvalResult

    rows = [
        {"id": f"{prefix}{i}", "source": f"t:{i}", "prompt": "p", "reference": "a", "prediction": "a" if ok else "b",
         "scores": {"correct": float(ok), "confidence": 0.9}}
        for i, ok in enumerate(correct)
    ]
    return EvalResult("classify", name, len(rows), {}, rows, labels=["a", "b"])


def test_a_recent_slice_too_small_for_a_verdict_does_not_promote():
    """Two new records held out as the recent slice, both right for the challenger and wrong for the champion:
    every bootstrap resample says +1, so retrain promoted on n=2, though a verdict needs MIN_TEST_EXAMPLES."""
    from tunelab.evaluation.compare import MIN_TEST_EXAMPLES, compare_evaluations
    from tunelab.tasks.retrain import KEPT, PROMOTED, decide

    old = [True] * 90 + [False] * 10
    overall = compare_evaluations(_evaluation("champion", old + [False, False], "x"), _evaluation("challenger", old + [True, True], "x"))
    recent = compare_evaluations(_evaluation("champion", [False, False], "r"), _evaluation("challenger", [True, True], "r"))
    decision, reasons = decide(overall, recent, 0.02)
    assert decision == KEPT, reasons
    assert any("recent slice" in reason and str(MIN_TEST_EXAMPLES) in reason for reason in reasons)

    # The same difference on a recent slice of a verdict's size promotes.
    n = MIN_TEST_EXAMPLES
    overall = compare_evaluations(_evaluation("champion", old + [False] * n, "x"), _evaluation("challenger", old + [True] * n, "x"))
    recent = compare_evaluations(_evaluation("champion", [False] * n, "r"), _evaluation("challenger", [True] * n, "r"))
    assert decide(overall, recent, 0.02)[0] == PROMOTED


def test_no_labelled_records_at_all_is_said_plainly():
    """A retrain with a request log that held no labelled feedback said "all 0 new records are new"."""
    from tunelab.tasks.retrain import describe_dropped

    assert describe_dropped({}, 0) == "no labelled records were found (no --data file, no labelled feedback in the log)"
    assert describe_dropped({}, 3) == "all 3 new records are new"


def test_a_challenger_never_replaces_a_run_it_was_not_compared_with(tmp_path, tiny_model_dir, tiny_tokenizer):
    """The alias moved while a retrain ran (or the --every loop retrained the run of an older part of the window):
    the challenger, judged against run X, replaced run Y, which it was never compared with."""
    from tests.unit.serve.conftest import write_fake_run

    from tunelab.tasks.retrain import promote_challenger

    # The challenger is a run a server following the alias can serve (a promotion checks that first).
    write_fake_run(tmp_path / "challenger", tiny_model_dir, tiny_tokenizer, seed=1, task="classify")
    store = Registry(tmp_path / "registry.db")
    x, y, challenger = (store.create_run(name=name, task="classify", status="finished", run_dir=str(tmp_path / name)).id
                        for name in ("x", "y", "challenger"))
    store.set_alias("router", y)
    change, refused = promote_challenger(store, "router", x, challenger, reason="retrain", details={})
    assert change is None and store.alias("router") == y
    assert "router" in refused and "y" in refused and "x" in refused
    # The alias still at the champion: moved; an alias not set yet: set.
    store.set_alias("router", x)
    change, refused = promote_challenger(store, "router", x, challenger, reason="retrain", details={})
    assert refused is None and change["previous_run_id"] == x and store.alias("router") == challenger
    assert promote_challenger(store, "fresh", x, challenger, reason="retrain", details={})[1] is None
    assert store.alias("fresh") == challenger


def test_a_champion_evaluated_on_a_sample_is_still_judged_on_every_fresh_test_row(tmp_path, tiny_model_dir):
    """A champion made with data.max_test_examples was evaluated on a seeded sample of the fresh test set while its
    challenger was evaluated on all of it: the decision stood on the rows both happened to have (fewer than the
    outcome's test size, a "different test sets" warning), recent rows left out of the champion's sample unjudged."""
    from tunelab.tasks.retrain import retrain

    runs, registry_path, champion = _router_v1(tmp_path, tiny_model_dir, max_test_examples=8)
    new = _write(tmp_path / "new.jsonl", _rows("A", 100, 16) + _rows("B", 100, 16))
    outcome = retrain(champion.registry_id, [new], registry_path=registry_path, promote=False)
    assert outcome.overall["n"] == outcome.sizes["test"] > 8
    assert outcome.recent["n"] == outcome.sizes["recent_test"]
    assert not any("different test sets" in warning for warning in outcome.warnings), outcome.warnings


def test_feedback_on_another_served_model_is_never_learnt_without_being_asked_for(tmp_path, tiny_model_dir):
    """`tunelab retrain alias:router --log-db requests.db` on a server that also serves another classify model took that
    model's corrections too: its labels joined the challenger's label map and its rows the recent slice, where the
    champion, which never had those labels, could only lose."""
    from datetime import UTC, datetime

    from tunelab.errors import DataError
    from tunelab.serve.request_log import Feedback, RequestLog, add_feedback
    from tunelab.tasks.retrain import retrain

    runs, registry_path, champion = _router_v1(tmp_path, tiny_model_dir)
    Registry(registry_path).set_alias("router", champion.registry_id)
    log_path = tmp_path / "requests.db"
    log = RequestLog(log_path)
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    served = [("router", champion.registry_id, row) for row in _rows("A", 100, 20) + _rows("B", 100, 20)]
    served += [("sentiment", "other-run", {"text": f"review {i} was great", "label": "positive"}) for i in range(20)]
    for index, (model, run_id, row) in enumerate(served):
        log.record({"time": now, "endpoint": "/v1/classify", "model": model, "prompt": json.dumps(row["text"]), "status": 200,
                    "stream": 0, "response_id": f"clf-{index}", "run_id": run_id, "predicted_label": row["label"]})
    log.close()
    add_feedback(log_path, [Feedback(f"clf-{index}", label=row["label"]) for index, (_, _, row) in enumerate(served)], source="test")
    with pytest.raises(DataError, match="router, sentiment") as refused:
        retrain("alias:router", registry_path=registry_path, log_path=log_path)
    assert "--served-model" in refused.value.hint and len(Registry(registry_path).list_runs()) == 1
    outcome = retrain("alias:router", registry_path=registry_path, log_path=log_path, served_model="router", promote=False)
    assert outcome.new_labels == [] and outcome.sizes["recent_test"] + outcome.sizes["new_train"] + outcome.sizes["new_validation"] == 40

def test_a_taken_challenger_name_writes_nothing(tmp_path, tiny_model_dir):
    """A retrain's challenger name taken already (`--name` of an existing run, or two retrains of one champion started in
the same second: the default name has a one-second stamp) wrote its data files first and was refused after: files of
a retrain that never ran were left behind, or the data files of the retrain that owns the name were replaced under it
(its recorded training data changed). The name is checked, and its data folder claimed, before anything is written."""
    from tunelab.errors import ConfigError
    from tunelab.tasks.retrain import retrain

    runs, registry_path, champion = _router_v1(tmp_path, tiny_model_dir)
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


def test_a_served_name_without_labelled_feedback_is_named_not_called_an_empty_log(tmp_path, tiny_model_dir):
    """`tunelab retrain RUN --log-db LOG --served-model NAME` with a NAME no labelled feedback is on (a typo, the alias
instead of the served name) said "no labelled feedback in the log" of a log that holds some, or, beside --data,
retrained without any of it and without a word; it names the served names that have labelled feedback now. A name
that was served but has no corrections yet still retrains on --data alone (as the --every loop does)."""
    from datetime import UTC, datetime

    from tunelab.errors import DataError
    from tunelab.serve.request_log import Feedback, RequestLog, add_feedback
    from tunelab.tasks.retrain import retrain

    runs, registry_path, champion = _router_v1(tmp_path, tiny_model_dir)
    log_path = tmp_path / "requests.db"
    log = RequestLog(log_path)
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    rows = _rows("A", 100, 10) + _rows("B", 100, 10)
    for index, row in enumerate(rows):
        log.record({"time": now, "endpoint": "/v1/classify", "model": "router", "prompt": json.dumps(row["text"]), "status": 200,
                    "stream": 0, "response_id": f"clf-{index}", "run_id": champion.registry_id, "predicted_label": row["label"]})
    log.close()
    add_feedback(log_path, [Feedback(f"clf-{index}", label=row["label"]) for index, row in enumerate(rows)], source="test")
    new = _write(tmp_path / "new.jsonl", _rows("A", 200, 10) + _rows("B", 200, 10))
    for data in ([], [new]):
        with pytest.raises(DataError, match="no request for served name 'routr'") as refused:
            retrain(champion.registry_id, data, registry_path=registry_path, log_path=log_path, served_model="routr", promote=False)
        assert "router" in refused.value.message and "\n" not in refused.value.message
    assert len(Registry(registry_path).list_runs()) == 1  # no challenger was trained
    # A name the log served, with no corrections yet: --data alone, as before.
    log = RequestLog(log_path)
    log.record({"time": now, "endpoint": "/v1/classify", "model": "router-b", "prompt": json.dumps("login please"), "status": 200,
                "stream": 0, "response_id": "clf-b", "run_id": champion.registry_id, "predicted_label": "B"})
    log.close()
    outcome = retrain(champion.registry_id, [new], registry_path=registry_path, log_path=log_path, served_model="router-b", promote=False)
    assert outcome.sizes["recent_test"] + outcome.sizes["new_train"] + outcome.sizes["new_validation"] == 20


# -- a run with an out-of-scope file (data.out_of_scope) -------------------------------------------------------------
def _out_of_scope_champion(tmp_path, tiny_model_dir):
    """A registered classify run on labels A and B whose data.out_of_scope file (label "none") its split shared over
    validation and test; (its pipeline result, the registry's path, its split)."""
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
    return champion, registry_path, load_split(opened.folder.split, opened.config)


def test_a_retrain_keeps_the_champions_out_of_scope_requests_once_and_apart(tmp_path, tiny_model_dir):
    """The challenger read data.out_of_scope again and shared its requests over the fresh validation and test sets a
    second time: out-of-scope rows twice in the test set both models are judged on (20 + 16 recent became 45), and one
    in validation and test at once (the challenger's threshold chosen on a test request)."""
    from tunelab.tasks.retrain import retrain

    champion, registry_path, old = _out_of_scope_champion(tmp_path, tiny_model_dir)
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

    champion, registry_path, old = _out_of_scope_champion(tmp_path, tiny_model_dir)
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


def test_a_challenger_left_unpromoted_is_judged_on_the_retrains_own_comparison(tmp_path, tiny_model_dir, cli):
    """`retrain --no-promote` says `tunelab promote ALIAS CHALLENGER` serves it: promote judges it against the champion's
    evaluation on the challenger's test set (eval/champion.json), not refuses it as judged on another test set."""
    runs, registry_path, champion = _router_v1(tmp_path, tiny_model_dir)
    store = Registry(registry_path)
    store.set_alias("router", champion.registry_id)
    new = _write(tmp_path / "new.jsonl", _rows("A", 100, 30) + _rows("B", 100, 30))
    result = cli.invoke(cli_main.app, ["retrain", "alias:router", "--data", str(new), "--no-promote", "--registry", str(registry_path), "--json"])
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.output[result.output.index("{"):])
    assert store.alias("router") == champion.registry_id
    promoted = cli.invoke(cli_main.app, ["promote", "router", outcome["challenger"]["name"], "--registry", str(registry_path)])
    message = promoted.output if promoted.exit_code == 0 else promoted.exception.message
    assert "different test sets" not in message and f"n={outcome['sizes']['test']}," in message, message
