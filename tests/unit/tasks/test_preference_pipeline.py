"""`tunelab run` with task: preference on the tiny model: every step, a held-out split sharing no prompt, bad pair files."""

import json

import pytest

from tunelab.config import parse_config
from tunelab.data.keys import normalize_text
from tunelab.errors import DataError
from tunelab.tasks.pipeline import run_pipeline


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _write_pairs(path, n=30):
    rows = []
    for i in range(n):
        # Every prompt has two pairs (different answers): the split must keep both on one side.
        for variant in range(2):
            rows.append({"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}{'.' * (variant + 1)}", "rejected": f"Maybe {i + variant + 3}, no idea."})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _config(tmp_path, model, data, **train):
    return parse_config({
        "task": "preference",
        "model": str(model),
        "name": "dpo",
        "data": {"train": str(data), "test_size": 0.25, "validation_size": 0.1, "max_length": 64},
        "train": {"lr": 1e-2, "epochs": 3, "batch_size": 8, "precision": "fp32", "output_dir": str(tmp_path / "runs"), **train},
        "preference": {"beta": 0.5},
        "eval": {"bootstrap_samples": 200},
    })


def test_preference_run_walks_every_step(tmp_path, tiny_model_dir):
    events = []
    config = _config(tmp_path, tiny_model_dir, _write_pairs(tmp_path / "pairs.jsonl"))
    outcome = run_pipeline(config, on_event=lambda s, st, d: events.append((s, st)))
    assert [s for s, st in events if st == "done"] == ["check", "split", "estimate", "baseline", "train", "evaluate", "report", "register"]

    # Held-out pairs share no prompt with the training pairs.
    split = json.loads((outcome.run_dir / "split.json").read_text())
    assert split["sizes"]["test"] > 0
    from tunelab.data.split import load_split

    loaded = load_split(outcome.run_dir / "split.json", config)
    train_prompts = {normalize_text(r.prompt[-1]["content"]) for r in loaded.train}
    assert not train_prompts & {normalize_text(r.prompt[-1]["content"]) for r in loaded.test}

    # Before: the reference's own likelihood; after: the implicit reward, with paired intervals.
    assert outcome.base_metrics["reward_margin"] == 0.0
    assert outcome.base_metrics["likelihood_accuracy"] == outcome.base_metrics["preference_accuracy"]
    assert outcome.comparison.primary == "preference_accuracy"
    margin = outcome.comparison.metric("reward_margin")
    assert margin.after > 0 and margin.low > 0  # the policy learned the pattern on held-out prompts
    assert outcome.tuned_metrics["log_ratio_chosen"] > outcome.tuned_metrics["log_ratio_rejected"]
    assert outcome.estimate["seconds"]["reference"] > 0 and outcome.estimate["tokens"]["train_tokens"] > 0
    assert (outcome.run_dir / "report.md").is_file()


def test_bad_pair_file_names_file_and_line_and_trains_nothing(tmp_path, tiny_model_dir):
    data = _write_pairs(tmp_path / "pairs.jsonl")
    lines = data.read_text().splitlines()
    lines[4] = json.dumps({"prompt": "What is up?", "chosen": "fine"})  # no rejected answer
    lines[7] = json.dumps({"prompt": "Same?", "chosen": "yes", "rejected": "yes"})
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as error:
        run_pipeline(_config(tmp_path, tiny_model_dir, data))
    assert f"{data}:5" in str(error.value) and f"{data}:8" in str(error.value)
    run = tmp_path / "runs" / "dpo"
    assert not (run / "adapter").exists() and not (run / "checkpoints").exists()
    assert not (tmp_path / "runs" / "registry.db").exists() or "dpo" not in (tmp_path / "runs" / "registry.db").read_bytes().decode("latin-1")
