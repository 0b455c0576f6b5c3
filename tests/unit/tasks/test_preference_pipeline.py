"""`tunelab run` with task: preference on the tiny model: every step, a held-out split sharing no prompt, bad pair files."""

import json

import pytest

from tunelab.config import parse_config
from tunelab.data.keys import normalize_text
from tunelab.errors import DataError
from tunelab.evaluation.compare import NOT_COMPARED
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

    # Before: the reference's own likelihood; after: the implicit reward.
    assert outcome.base_metrics["reward_margin"] == 0.0
    assert outcome.base_metrics["likelihood_accuracy"] == outcome.base_metrics["preference_accuracy"]
    assert outcome.comparison.primary == "likelihood_accuracy"
    margin = outcome.comparison.metric("reward_margin")
    # The reference has no reward of its own (zero against itself): the margin is the policy's alone, not a difference.
    assert margin.after > 0 and margin.outcome == NOT_COMPARED
    # The policy learned the pattern on held-out prompts, by the rule before and after share.
    assert outcome.comparison.metric("likelihood_accuracy").low > 0
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


def test_dpo_after_an_sft_run_answers_the_parents_test_prompts_and_writes_a_blind_sheet(tmp_path, tiny_model_dir):
    from tunelab.evaluation.result import EvalResult
    from tunelab.evaluation.review import load_sheet, score_review

    rows = [{"prompt": f"Say {i} twice.", "completion": f"{i} {i}"} for i in range(16)]
    sft_file = tmp_path / "sft.jsonl"
    sft_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    sft = run_pipeline(parse_config({
        "task": "sft", "model": str(tiny_model_dir), "name": "sft",
        "data": {"train": str(sft_file), "test_size": 0.25, "validation_size": 0.0, "max_length": 64},
        "train": {"max_steps": 2, "batch_size": 8, "precision": "fp32", "output_dir": str(tmp_path / "runs")},
        "eval": {"max_new_tokens": 6, "bootstrap_samples": 100, "baselines": ["base"]},
    }), calibrate=False)
    events = []
    outcome = run_pipeline(_config(tmp_path, sft.run_dir, _write_pairs(tmp_path / "pairs.jsonl", n=8), max_steps=2), calibrate=False,
                           on_event=lambda s, st, d: events.append((s, st)))
    assert ("generation", "done") in events and outcome.generation is not None

    # The DPO model answered exactly the parent's test prompts, with the parent's decoding.
    parent = EvalResult.load(sft.run_dir / "eval" / "tuned.json")
    generated = EvalResult.load(outcome.run_dir / "eval" / "generation.json")
    assert sorted(generated.ids) == sorted(parent.ids) and generated.task == "sft" and generated.n == 4
    assert generated.settings["max_new_tokens"] == parent.settings["max_new_tokens"] == 6
    comparison = json.loads((outcome.run_dir / "eval" / "generation_comparison.json").read_text())
    assert comparison["n"] == 4 and comparison["primary"] == outcome.generation["comparison"]["primary"]

    # The blind sheet names no side; its key says which is the parent and which the DPO model.
    sheet = load_sheet(outcome.run_dir / "review.csv")
    # Every test prompt is on the sheet but those the two models answered alike, which are not asked (`not_asked`).
    assert sorted([row["id"] for row in sheet.rows] + list(sheet.identical)) == sorted(parent.ids)
    assert sheet.base == parent.model and sheet.tuned == generated.model
    text = (outcome.run_dir / "review.csv").read_text()
    assert "tuned" not in text.splitlines()[0] and "base" not in text.splitlines()[0]
    # A person fills it in: the DPO side wins every row asked but one tie.
    import csv

    with (outcome.run_dir / "review.csv").open() as handle:
        filled = list(csv.DictReader(handle))
    if not filled:
        # The tiny model after one DPO step answers every prompt as its parent did: nothing is asked, and the score
        # says why rather than scoring identical answers as ties.
        with pytest.raises(DataError, match="no row has a preference") as raised:
            score_review(outcome.run_dir / "review.csv")
        assert "4 identical answers not asked" in raised.value.hint
        return
    for index, row in enumerate(filled):
        row["preference"] = "tie" if index == 0 else next(side for side, who in sheet.sides[row["id"]].items() if who == "tuned")
    with (outcome.run_dir / "review.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(filled[0]))
        writer.writeheader()
        writer.writerows(filled)
    score = score_review(outcome.run_dir / "review.csv")
    assert (score.tuned_wins, score.ties, score.base_wins, score.identical) == (len(filled) - 1, 1, 0, 4 - len(filled))


def test_a_preference_run_from_the_base_model_has_no_generation_step(tmp_path, tiny_model_dir):
    outcome = run_pipeline(_config(tmp_path, tiny_model_dir, _write_pairs(tmp_path / "pairs.jsonl", n=8), max_steps=1), calibrate=False)
    assert outcome.generation is None and not (outcome.run_dir / "review.csv").exists()


def test_a_policy_that_barely_moved_is_not_said_to_have_paid_off(tmp_path, tiny_model_dir):
    # The verdict was on preference_accuracy: before ranked by the reference's own likelihood, after by the implicit reward.
    # One step at lr 1e-7 moved every held-out pair's reward a hair towards the chosen answer, and the verdict said
    # "fine-tuning paid off" (+0.84) while the model's own ranking of the pairs (likelihood_accuracy) had not changed.
    from tunelab.evaluation.compare import PAID_OFF

    config = _config(tmp_path, tiny_model_dir, _write_pairs(tmp_path / "pairs.jsonl", n=80), max_steps=1, lr=1e-7)
    outcome = run_pipeline(config, calibrate=False)
    assert outcome.comparison.n >= 30
    assert outcome.tuned_metrics["preference_accuracy"] > outcome.base_metrics["preference_accuracy"]  # the reward moved
    assert outcome.tuned_metrics["likelihood_accuracy"] == outcome.base_metrics["likelihood_accuracy"]  # the model did not
    assert outcome.comparison.primary == "likelihood_accuracy" and outcome.verdict != PAID_OFF
