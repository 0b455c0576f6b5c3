"""`tunelab predict MODEL FILE --out OUT`: a file of requests answered as the judged model answers them, every input
column kept; written only whole; continued after a kill from its partial file, to the same bytes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.unit.serve.conftest import write_fake_run
from typer.testing import CliRunner

TEXTS = ["my card was charged twice", "the app will not open", "refund please", "where is my parcel", "login fails",
         "invoice is wrong", "reset my password", "cancel the order", "hello there"]
SRC = Path(__file__).resolve().parents[3] / "src"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, tiny_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict-runs")
    made = {
        "router": write_fake_run(root / "router", tiny_model_dir, tiny_tokenizer, seed=3, task="classify"),
        "router2": write_fake_run(root / "router2", tiny_model_dir, tiny_tokenizer, seed=4, task="classify"),
        "assistant": write_fake_run(root / "assistant", tiny_model_dir, tiny_tokenizer, seed=1),
        "text": write_fake_run(root / "text", tiny_model_dir, tiny_tokenizer, seed=5, task="text"),
    }
    config = yaml.safe_load((made["assistant"] / "config.yaml").read_text())
    config["eval"] = {"max_new_tokens": 6}  # short answers: a fast test
    (made["assistant"] / "config.yaml").write_text(yaml.safe_dump(config))
    return made


def _cli(args):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, args)


def _tickets(path: Path, texts=TEXTS) -> Path:
    path.write_text("".join(json.dumps({"ticket": f"T{i}", "text": text, "month": 11}) + "\n" for i, text in enumerate(texts)))
    return path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_classify_answers_are_the_evaluations_with_every_column_kept(runs, tmp_path):
    from tunelab.config import DataConfig, EvalConfig
    from tunelab.data.records import ClassifyRecord
    from tunelab.evaluation.evaluate import evaluate
    from tunelab.runs import Run

    tickets = _tickets(tmp_path / "tickets.jsonl")
    for out in (tmp_path / "routed.jsonl", tmp_path / "routed.csv"):
        result = _cli(["predict", str(runs["router"]), str(tickets), "--out", str(out), "--batch-size", "4"])
        assert result.exit_code == 0, (result.output, result.exception)
    run = Run.open(runs["router"])
    loaded = run.load()
    # What the run's evaluation scores for these texts (its prompt, label head, calibrated probability).
    judged = evaluate(loaded, [ClassifyRecord(text, run.label_map.labels[0]) for text in TEXTS], "classify", config=EvalConfig(),
                      data_config=DataConfig(system_prompt=run.system_prompt, max_length=run.max_length), label_map=run.label_map,
                      out_of_scope=run.out_of_scope).rows
    rows = _jsonl(tmp_path / "routed.jsonl")
    assert [(r["ticket"], r["text"], r["month"]) for r in rows] == [(f"T{i}", t, 11) for i, t in enumerate(TEXTS)]
    assert [r["label"] for r in rows] == [r["prediction"] for r in judged]
    assert [r["probability"] for r in rows] == pytest.approx([r["scores"]["confidence"] for r in judged], abs=1e-5)
    assert all(r["out_of_scope"] is False for r in rows)
    with (tmp_path / "routed.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["ticket", "text", "month", "label", "probability", "out_of_scope"]
    assert [(r["ticket"], r["label"], float(r["probability"])) for r in table] == [(r["ticket"], r["label"], pytest.approx(r["probability"]))
                                                                                 for r in rows]
    assert not any(name.endswith(".partial") for name in os.listdir(tmp_path))


def test_sft_answers_are_tunelab_generates(runs, tmp_path):
    prompts = TEXTS[:3]
    requests = tmp_path / "backlog.csv"
    requests.write_text("id,prompt\n" + "".join(f"{i},{p}\n" for i, p in enumerate(prompts)))
    out = tmp_path / "drafts.jsonl"
    result = _cli(["predict", str(runs["assistant"]), str(requests), "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    rows = _jsonl(out)
    assert [(r["id"], r["prompt"]) for r in rows] == [(str(i), p) for i, p in enumerate(prompts)]
    for row in rows:
        generated = _cli(["generate", row["prompt"], "--model", str(runs["assistant"])])
        assert generated.exit_code == 0, generated.output
        assert row["answer"] == generated.stdout.strip()


def _predict(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "tunelab.cli.main", "predict", *args], env=environment, capture_output=True, text=True,
                          timeout=300)


def test_killed_after_a_batch_it_continues_to_the_same_file(runs, tmp_path):
    from tunelab.tasks.predict import partial_path, predict_file

    tickets = _tickets(tmp_path / "tickets.jsonl")
    whole = predict_file(str(runs["router"]), str(tickets), tmp_path / "whole.jsonl", batch_size=2)
    out = tmp_path / "routed.jsonl"
    # SIGKILLed (as kill -9, a power cut) once its second batch is on disk.
    killed = _predict([str(runs["router"]), str(tickets), "--out", str(out), "--batch-size", "2"], TUNELAB_KILL_AT="predict.batch-written@2")
    assert killed.returncode == -9, killed.stderr
    assert not out.exists()
    assert len(_jsonl(partial_path(out))) == 1 + 4  # the job line and two batches of two
    with partial_path(out).open("a") as handle:
        handle.write('{"ticket": "T4", "te')  # and a torn line, as a kill in the middle of a write leaves
    resumed = predict_file(str(runs["router"]), str(tickets), out, batch_size=2)
    assert (resumed.resumed, resumed.started_over) == (4, None)
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert whole.rows == resumed.rows == len(TEXTS)
    assert not partial_path(out).exists()


def test_another_input_or_model_starts_over(runs, tmp_path, monkeypatch):
    import tunelab.tasks.predict as predicting

    tickets = _tickets(tmp_path / "tickets.jsonl")
    out = tmp_path / "routed.jsonl"

    def crash(name):
        raise KeyboardInterrupt  # stopped (Ctrl-C) after the first batch

    for changed in ("input", "model"):
        monkeypatch.setattr(predicting, "kill_point", crash)
        with pytest.raises(KeyboardInterrupt):
            predicting.predict_file(str(runs["router"]), str(tickets), out, batch_size=2)
        assert predicting.partial_path(out).is_file() and not out.exists()
        monkeypatch.setattr(predicting, "kill_point", lambda name: None)
        model, texts = (runs["router"], TEXTS[::-1]) if changed == "input" else (runs["router2"], TEXTS)
        _tickets(tickets, texts)
        again = predicting.predict_file(str(model), str(tickets), out, batch_size=2)
        assert again.resumed == 0 and f"another {changed}" in again.started_over
        fresh = predicting.predict_file(str(model), str(tickets), tmp_path / "fresh.jsonl", batch_size=2)
        assert fresh.started_over is None
        assert out.read_bytes() == (tmp_path / "fresh.jsonl").read_bytes()
        _tickets(tickets)
        out.unlink()



def test_another_batch_size_is_named_when_it_starts_over(runs, tmp_path, monkeypatch):
    # "were for other options" left the user to guess which: --batch-size is the one a user changes between tries.
    import tunelab.tasks.predict as predicting

    tickets, out = _tickets(tmp_path / "tickets.jsonl"), tmp_path / "routed.jsonl"

    def crash(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(predicting, "kill_point", crash)
    with pytest.raises(KeyboardInterrupt):
        predicting.predict_file(str(runs["router"]), str(tickets), out, batch_size=2)
    monkeypatch.setattr(predicting, "kill_point", lambda name: None)
    again = predicting.predict_file(str(runs["router"]), str(tickets), out, batch_size=4)
    assert again.resumed == 0 and "other options (batch_size 2, now 4)" in again.started_over, again.started_over

def test_mistakes_are_one_line_before_any_model_loads(runs, tmp_path, monkeypatch):
    import tunelab.runs
    from tunelab.errors import ConfigError, DataError, ModelError

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(tunelab.runs, "load_model", no_load)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text column"}\n{"text": ""}\nnot json\n')
    tickets = _tickets(tmp_path / "tickets.jsonl")
    out = str(tmp_path / "out.jsonl")
    cases = [
        ([str(runs["router"]), str(tmp_path / "missing.jsonl"), "--out", out], DataError, "missing.jsonl"),
        ([str(runs["router"]), str(bad), "--out", out], DataError, f"{bad}:2"),
        ([str(tmp_path / "no-such-run"), str(tickets), "--out", out], ModelError, "no-such-run"),
        ([str(runs["text"]), str(tickets), "--out", out], ConfigError, "text run"),
        ([str(runs["router"]), str(tickets), "--out", str(tmp_path / "out.parquet")], ConfigError, ".jsonl or .csv"),
    ]
    for args, kind, named in cases:
        result = _cli(["predict", *args])
        assert isinstance(result.exception, kind), (args, repr(result.exception))
        message = str(result.exception)
        assert named in message, (args, message)
        if kind is not DataError or "invalid" not in message:
            assert "\n" not in message, (args, message)
    message = str(_cli(["predict", str(runs["router"]), str(bad), "--out", out]).exception)
    assert message.splitlines()[0] == f"3 invalid row(s) in {bad}:", message
    assert [line.strip().split(": ")[0] for line in message.splitlines()[1:]] == [f"{bad}:2", f"{bad}:3", f"{bad}:4"], message
    assert not Path(out).exists()


def test_skip_invalid_leaves_the_bad_rows_out_and_lists_them(runs, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"text": "refund please", "n": 1}\n{"body": "no text"}\n{"text": "login fails", "n": 3}\n')
    out = tmp_path / "routed.jsonl"
    result = _cli(["predict", str(runs["router"]), str(requests), "--out", str(out), "--skip-invalid"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert [row["n"] for row in _jsonl(out)] == [1, 3]
    assert f"{requests}:2" in result.stderr


def test_sigterm_keeps_the_answers_and_the_same_command_continues(runs, tmp_path, monkeypatch):
    import tunelab.tasks.predict as predicting
    from tunelab.errors import Cancelled

    requests = tmp_path / "labelled.jsonl"
    requests.write_text("".join(json.dumps({"text": text, "label": "old"}) + "\n" for text in TEXTS))
    out = tmp_path / "routed.csv"
    args = ["predict", str(runs["router"]), str(requests), "--out", str(out), "--batch-size", "4"]

    def terminated(name):
        raise Cancelled("SIGTERM")  # what cancel_on_sigterm's handler raises when SIGTERM arrives

    monkeypatch.setattr(predicting, "kill_point", terminated)
    stopped = _cli(args)
    assert stopped.exit_code == 143, (stopped.output, stopped.exception)
    assert "cancelled (SIGTERM)" in stopped.stderr and "the same command continues" in stopped.stderr
    assert not out.exists() and predicting.partial_path(out).is_file()
    monkeypatch.setattr(predicting, "kill_point", lambda name: None)
    finished = _cli(args)
    assert finished.exit_code == 0, (finished.output, finished.exception)
    assert "4 of 9 requests were answered before" in finished.stderr
    assert "column(s) label are replaced" in finished.stderr  # an old label column is not silently lost
    with out.open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(TEXTS)
