"""`tunelab predict RUN POOL --out OUT --label-next N`: the N requests a classify run is least sure of (smallest margin
between its two most probable labels), near-duplicates once, with the same answers as the run without the option."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.unit.serve.conftest import write_fake_run
from typer.testing import CliRunner

TEXTS = ["my card was charged twice", "the app will not open", "refund please", "where is my parcel", "login fails",
         "invoice is wrong", "reset my password", "cancel the order", "hello there", "Refund, please!", "THE APP will not open",
         "my card was charged twice"]
COPIES = {9: 2, 10: 1, 11: 0}  # a near-duplicate's index: the first request it copies (the data check's and the split's key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, tiny_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("label-next-runs")
    return {
        "router": write_fake_run(root / "router", tiny_model_dir, tiny_tokenizer, seed=3, task="classify"),
        "assistant": write_fake_run(root / "assistant", tiny_model_dir, tiny_tokenizer, seed=1),
    }


def _cli(args):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, args)


def _pool(path: Path) -> Path:
    path.write_text("".join(json.dumps({"ticket": f"T{i}", "text": text}) + "\n" for i, text in enumerate(TEXTS)))
    return path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _margins(run_dir: Path) -> list[tuple[float, float, str]]:
    """(margin, top probability, runner-up) of each text, from the Classifier's probabilities, sorted here."""
    from tunelab.inference import Classifier
    from tunelab.runs import Run

    run = Run.open(run_dir)
    loaded = run.load()
    classifier = Classifier.for_model(loaded)
    probabilities = classifier.probabilities(loaded.model, [classifier.prompt(text)[0] for text in TEXTS])
    result = []
    for row in probabilities:
        first, second = np.sort(row)[::-1][:2]
        result.append((float(first - second), float(first), run.label_map.labels[int(np.argsort(-row, kind="stable")[1])]))
    return result


def test_the_smallest_margins_are_chosen_each_request_once_with_the_same_answers(runs, tmp_path):
    pool = _pool(tmp_path / "pool.jsonl")
    every = tmp_path / "every.jsonl"
    assert _cli(["predict", str(runs["router"]), str(pool), "--out", str(every), "--batch-size", "4"]).exit_code == 0
    answered = {row["ticket"]: row for row in _jsonl(every)}
    margins = _margins(runs["router"])
    distinct = [i for i in range(len(TEXTS)) if i not in COPIES]
    expected = sorted(distinct, key=lambda i: (margins[i][0], margins[i][1], i))

    for n in (3, 100):
        out = tmp_path / f"next{n}.jsonl"
        result = _cli(["predict", str(runs["router"]), str(pool), "--out", str(out), "--batch-size", "4", "--label-next", str(n)])
        assert result.exit_code == 0, (result.output, result.exception)
        rows = _jsonl(out)
        assert [row["ticket"] for row in rows] == [f"T{i}" for i in expected[:n]]
        for row, index in zip(rows, expected, strict=False):
            assert row["margin"] == pytest.approx(margins[index][0], abs=1e-5)
            assert row["runner_up"] == margins[index][2]
            # The answer is the one the run gives without --label-next.
            assert {k: row[k] for k in ("text", "label", "probability", "out_of_scope")} == {
                k: answered[row["ticket"]][k] for k in ("text", "label", "probability", "out_of_scope")}
        assert list(rows[0]) == ["ticket", "text", "label", "probability", "out_of_scope", "runner_up", "margin"]
        chosen = [margins[i][0] for i in expected[:n]]
        line = " ".join(result.stdout.split())
        assert f"ranked {len(TEXTS)} requests ({len(COPIES)} near-duplicates counted once)" in line, line
        assert f"margin {min(chosen):.3f}-{max(chosen):.3f}" in line, line


def test_ties_go_to_the_lower_top_probability_then_the_input_order():
    from tunelab.tasks.predict import least_sure

    rank = [{"runner_up": "b", "margin": m, "probability": p} for m, p in
            [(0.2, 0.5), (0.1, 0.5), (0.1, 0.4), (0.1, 0.5), (0.0, 0.9)]]
    keys = ["a", "b", "c", "d", "b"]  # the last is a copy of the second: not ranked, though its margin is the smallest
    ranking = least_sure(rank, keys, 3)
    assert ranking.chosen == [2, 1, 3]
    assert (ranking.ranked, ranking.duplicates) == (5, 1)


def test_a_stopped_job_continues_to_the_same_choice(runs, tmp_path, monkeypatch):
    import tunelab.tasks.predict as predicting

    pool = _pool(tmp_path / "pool.jsonl")
    whole = predicting.predict_file(str(runs["router"]), str(pool), tmp_path / "whole.csv", batch_size=4, label_next=4)
    out = tmp_path / "next.csv"
    calls = []

    def stop(name):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C once two batches are on disk

    monkeypatch.setattr(predicting, "kill_point", stop)
    with pytest.raises(KeyboardInterrupt):
        predicting.predict_file(str(runs["router"]), str(pool), out, batch_size=4)  # stopped without the option ...
    monkeypatch.setattr(predicting, "kill_point", lambda name: None)
    resumed = predicting.predict_file(str(runs["router"]), str(pool), out, batch_size=4, label_next=4)  # ... continued with it
    assert (resumed.resumed, resumed.started_over) == (8, None)
    assert out.read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert whole.ranking.chosen == resumed.ranking.chosen and len(resumed.ranking.chosen) == 4


def test_an_sft_run_is_refused_in_one_line(runs, tmp_path, monkeypatch):
    import tunelab.runs
    from tunelab.errors import ConfigError

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(tunelab.runs, "load_model", no_load)
    pool = _pool(tmp_path / "pool.jsonl")
    result = _cli(["predict", str(runs["assistant"]), str(pool), "--out", str(tmp_path / "out.jsonl"), "--label-next", "3"])
    assert isinstance(result.exception, ConfigError), repr(result.exception)
    assert "margin" in str(result.exception) and "\n" not in str(result.exception)
    assert not (tmp_path / "out.jsonl").exists()
