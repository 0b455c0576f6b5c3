"""`tunelab advise` on the tiny model: opponents and a learning curve on the validation rows only, the costs,
one recommendation; and its pure decisions (which sizes fit the budget, what to recommend) by hand."""

import json
import subprocess
import sys

import pytest

from tunelab.config import parse_config
from tunelab.errors import ConfigError, DataError
from tunelab.estimate.options import OptionCost
from tunelab.evaluation.curve import Crossing, Difference
from tunelab.evaluation.result import EvalResult
from tunelab.tasks.advise import advise, curve_sizes, load_advice, plan_curve, recommend

WORDS = {"A": ["apple", "pear", "plum", "fruit"], "B": ["billing", "account", "card", "refund"]}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _classify_config(tmp_path, tiny_model_dir, rows=120, **data):
    lines = []
    for i in range(rows):
        label = "AB"[i % 2]
        words = WORDS[label]
        lines.append(json.dumps({"text": f"{words[i % 4]} {words[(i // 2) % 4]} number {i}", "label": label}))
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return parse_config({
        "task": "classify", "model": str(tiny_model_dir), "name": "tiny",
        "data": {"train": str(path), "test_size": 0.2, "validation_size": 0.2, "max_length": 64, **data},
        "train": {"method": "full", "lr": 3e-3, "epochs": 4, "batch_size": 8, "output_dir": str(tmp_path / "runs")},
        "eval": {"bootstrap_samples": 200},
    })


def test_advise_scores_opponents_and_a_nested_curve_on_validation_rows_only(tmp_path, tiny_model_dir):
    from tunelab.data.split import make_split

    config = _classify_config(tmp_path, tiny_model_dir)
    events = []
    advice = advise(config, budget_minutes=None, calibrate=False, label_usd_per_example=0.5,
                    on_event=lambda step, status, details: events.append((step, status)))
    split = make_split(config)
    assert advice.train_size == len(split.train) == 72 and advice.validation_size == len(split.validation) == 24
    assert advice.labelled == 120
    # Sizes: all 72 training examples and their halvings down to MIN_EXAMPLES (8): 72, 36, 18, 9; 9 of two
    # labels of 36 each is round(4.5) = 4 per label: the subset has 8.
    assert [p.size for p in advice.points] == [8, 18, 36, 72]
    assert [o.name for o in advice.opponents] == ["base", "classical", "embedding", "few_shot"]
    assert [c.name for c in advice.curves] == ["tuned", "classical", "embedding"]
    assert all(curve.sizes == [8, 18, 36, 72] for curve in advice.curves)
    # Every evaluation is of the validation rows; no test row is ever scored.
    validation_ids = [r.id for r in split.validation]
    test_ids = {r.id for r in split.test}
    files = list(advice.folder.rglob("*.json"))
    evaluations = [json.loads(f.read_text()) for f in files if f.parent.name in ("eval", "baselines")]
    assert len(evaluations) == 4 + 4 * 3  # 4 opponents; each size: the tuned run, the classical and embedding refits
    for evaluation in evaluations:
        ids = [row["id"] for row in evaluation["rows"]]
        assert ids == validation_ids and not test_ids & set(ids)
    # Each curve run trained on its own nested subset, to the last epoch (no checkpoints kept, no validation).
    trained = [set(json.loads((advice.folder / "curve" / f"n{n}" / "split.json").read_text())["train"]) for n in (8, 18, 36, 72)]
    assert all(small <= large for small, large in zip(trained, trained[1:], strict=False))
    assert not (advice.folder / "curve" / "n72" / "checkpoints").exists()
    assert json.loads((advice.folder / "curve" / "n72" / "split.json").read_text())["validation"] == []
    # The score of each point is its evaluation's accuracy; the projection is against the best opponent.
    point = json.loads((advice.folder / "curve" / "n36" / "eval" / "validation.json").read_text())
    assert advice.points[2].score == point["metrics"]["accuracy"]
    assert advice.projection is not None and advice.projection.opponent in ("base", "classical", "few_shot")
    assert {row.cost.key for row in advice.options} >= {"keep", "here", "gpu", "provider"}
    assert advice.recommendation and advice.reason
    saved = load_advice(advice.folder)
    assert saved["recommendation"] == advice.recommendation and saved["curves"][0]["grid"]
    assert ("advice", "done") in events and ("point", "done") in events
    with pytest.raises(ConfigError, match="already holds an advice"):
        advise(config, budget_minutes=None, calibrate=False)


def test_advise_refuses_what_it_cannot_answer(tmp_path, tiny_model_dir):
    config = _classify_config(tmp_path, tiny_model_dir, validation_size=0.0)
    with pytest.raises(DataError, match="validation split"):
        advise(config, calibrate=False)
    preference = parse_config({"task": "preference", "model": str(tiny_model_dir), "data": {"train": "x.jsonl"}})
    with pytest.raises(ConfigError, match="covers the tasks"):
        advise(preference, calibrate=False)


def test_too_little_data_still_gets_an_honest_answer(tmp_path, tiny_model_dir):
    # 20 rows: 12 to train; halvings 12, 6 stop below 8 examples: no curve, the opponents and costs only.
    config = _classify_config(tmp_path, tiny_model_dir, rows=20)
    advice = advise(config, budget_minutes=None, calibrate=False, folder=tmp_path / "tiny-advice")
    assert advice.points == [] and advice.projection is None
    assert advice.recommendation == "measure first: run tunelab run"
    assert "too few for a learning curve" in advice.reason and "too few" in advice.flags[0]



def test_labels_the_validation_rows_lack_are_named(tmp_path, tiny_model_dir):
    """A skewed BANKING77 draw (4 labels of 3 rows, 4 of 12, 4 of 40) left 4 labels without a validation row: every score
    of the advice was silent on them, and nothing said so. A label with one row is the extreme case."""
    config = _classify_config(tmp_path, tiny_model_dir, rows=20)
    path = tmp_path / "train.jsonl"
    path.write_text(path.read_text() + json.dumps({"text": "a lone request about the weather", "label": "C"}) + "\n")
    advice = advise(config, budget_minutes=None, calibrate=False, folder=tmp_path / "lone-advice")
    assert "C" not in {row["reference"] for row in json.loads((advice.folder / "baselines" / "classical.json").read_text())["rows"]}
    assert any(flag.startswith("1 of 3 labels have no validation row (C): ") for flag in advice.flags), advice.flags


def test_the_baseline_to_keep_is_the_one_the_recommendation_names():
    """Skewed BANKING77: classical and embedding both 1.000 on the 22 validation rows; the recommendation said "keep
    embedding" (its curve 0.998 at 198 examples) while the table's row said "keep classical"."""
    from tunelab.tasks.advise import Opponent, kept_opponent

    opponents = [Opponent("base", 0.18, 0.05, 0.36, False, 3.6), Opponent("classical", 1.0, 1.0, 1.0, True, 1.2),
                 Opponent("embedding", 1.0, 1.0, 1.0, True, 3.1)]
    projection = Difference(198, 0.993, 0.968, 1.0, "embedding", 0.998, -0.005, -0.029, 0.003, True)
    assert kept_opponent(opponents, projection, higher_is_better=True).name == "embedding"
    # Without a curve, the best measured score; a tie goes to the cheaper one.
    assert kept_opponent(opponents, None, higher_is_better=True).name == "classical"
    assert kept_opponent(opponents[::-1], None, higher_is_better=True).name == "classical"
    assert kept_opponent(opponents, None, higher_is_better=False).name == "base"


def test_the_rented_gpu_of_the_advice_is_the_one_the_config_names(tmp_path, tiny_model_dir):
    # The cheapest GPU of the table for a tiny run is not the H200: a user who set budget.gpu: H200 is told its price.
    raw = _classify_config(tmp_path, tiny_model_dir, rows=20).model_dump(mode="json")
    raw["budget"]["gpu"] = "H200"
    advice = advise(parse_config(raw), budget_minutes=None, calibrate=False, folder=tmp_path / "h200-advice")
    gpu = next(row.cost for row in advice.options if row.cost.key == "gpu")
    assert gpu.name == "fine-tune on a rented H200", gpu

def test_a_provider_config_is_advised_with_local_runs_and_says_so(tmp_path, tiny_model_dir):
    # examples/qa-assistant/cloud.yaml's shape: train.backend openai at model.endpoint. Nothing is sent anywhere
    # (the address answers nothing): the opponents and the curve are local, and the advice says whose runs they are.
    raw = _classify_config(tmp_path, tiny_model_dir, rows=20).model_dump(mode="json")
    raw["model"]["endpoint"] = {"base_url": "http://127.0.0.1:9/v1", "name": "gpt-4o-mini-2024-07-18"}
    raw["train"]["backend"] = "openai"
    advice = advise(parse_config(raw), budget_minutes=None, calibrate=False, folder=tmp_path / "cloud-advice")
    assert advice.warnings[0].startswith("train.backend: openai: the curve is drawn with short local runs of")
    assert [o.name for o in advice.opponents] == ["base", "classical", "embedding", "few_shot"]
    assert advice.recommendation == "measure first: run tunelab run"


def test_the_cli_prints_the_table_and_the_recommendation(tmp_path, tiny_model_dir):
    import yaml

    config = _classify_config(tmp_path, tiny_model_dir, rows=48)
    path = tmp_path / "advise.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    done = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "advise", str(path), "--no-calibrate", "--label-usd", "0.2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Opponents on" in done.stdout and "Each way forward" in done.stdout and "recommendation:" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "advise", str(path), "--retrain-every", "often"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--retrain-every" in bad.stderr and "Traceback" not in bad.stderr


def test_curve_sizes_halve_down_to_the_minimum():
    assert curve_sizes(288, 1.0, min_size=8) == [36, 72, 144, 288]
    assert curve_sizes(288, 0.5, min_size=20) == [36, 72, 144]
    assert curve_sizes(770, 1.0, min_size=77) == [96, 192, 385, 770]
    assert curve_sizes(12, 1.0, min_size=8) == [12]


def test_the_plan_takes_the_largest_curve_that_fits_the_budget():
    # A run costs 10 s + 1 s per example: from all 288 (with 144, 72, 36) 4 x 10 + 540 = 580 s; from 144
    # (72, 36, 18) 40 + 270 = 310 s; from 72 (36, 18, 9) 40 + 135 = 175 s.
    seconds = lambda n: 10 + n  # noqa: E731
    assert plan_curve(288, min_size=8, seconds_for=seconds, budget_s=600) == ([36, 72, 144, 288], 580.0, None)
    assert plan_curve(288, min_size=8, seconds_for=seconds, budget_s=320) == ([18, 36, 72, 144], 310.0, None)
    assert plan_curve(288, min_size=8, seconds_for=seconds, budget_s=300) == ([9, 18, 36, 72], 175.0, None)
    sizes, total, reason = plan_curve(288, min_size=8, seconds_for=seconds, budget_s=60)
    # The smallest curve (9, 18, 36: from 36, 4 is below min_size) is 3 x 10 + 63 = 93 s; with the grace of
    # 1.25: 116.25 s, 2 minutes rounded up.
    assert sizes == [] and total is None and reason.endswith("give --budget-minutes 2 or more")
    # A budget of 3 minutes of which the opponents and the estimate took 2: the 93 s curve does not fit the
    # 60 s left, and the budget to give counts the 2 minutes too: (120 + 116.25) / 60 = 3.9, so 4 (not 2,
    # less than the 3 that were given).
    reason = plan_curve(288, min_size=8, seconds_for=seconds, budget_s=60, spent_s=120)[2]
    assert reason.endswith("after 2.0 min on the opponents and the estimate; give --budget-minutes 4 or more")
    assert plan_curve(288, min_size=8, seconds_for=lambda n: None, budget_s=1)[0] == [36, 72, 144, 288]
    assert "too few" in plan_curve(20, min_size=8, seconds_for=seconds, budget_s=None)[2]


def test_a_curve_dearer_than_the_run_it_would_save_says_so():
    """BANKING77, 20 intents x 10: the curve (20, 40, 80, 180 examples) was planned at 18.2 min against 5.5 min for the
    whole run (measured 19.3 and 5.1): every curve run trains train.min_steps (120) steps. Nothing said so."""
    from tunelab.tasks.advise import curve_cost_note

    note = curve_cost_note(1092.0, 330.0, 120)
    assert note.startswith("the curve costs 3.3x a whole `tunelab run` here (18.2 min against 5.5 min)"), note
    assert "train.min_steps (120)" in note
    assert "min_steps" not in curve_cost_note(1092.0, 330.0, None)
    assert curve_cost_note(300.0, 330.0, 120) is None and curve_cost_note(None, 330.0) is None and curve_cost_note(1.0, None) is None


def test_the_advice_warns_when_its_curve_costs_more_than_the_run(tmp_path, tiny_model_dir):
    raw = _classify_config(tmp_path, tiny_model_dir, rows=64).model_dump(mode="json")
    raw["train"].update({"epochs": 1, "min_steps": 30})  # 38 training examples: 5 steps an epoch, raised to 30 at every size
    advice = advise(parse_config(raw), budget_minutes=None, calibrate=True, folder=tmp_path / "dear-advice")
    assert advice.points and any(w.startswith("the curve costs ") and "train.min_steps (30)" in w for w in advice.warnings), advice.warnings


def _options(here_seconds=300.0, gpu_usd=0.01):
    return {
        "here": OptionCost("here", "fine-tune here", here_seconds, None, None, None),
        "gpu": OptionCost("gpu", "fine-tune on a rented L4", 20.0, gpu_usd, None, None),
        "label": OptionCost("label", "label 180 more, then fine-tune here", 600.0, 45.0, None, None),
    }


def _difference(tuned, low, high, opponent=0.80):
    return Difference(288, tuned, tuned - 0.05, tuned + 0.05, "classical", opponent, tuned - opponent, low, high)


def _crossing(size):
    return Crossing(size, None, None, 36, 2880, False, "classical")


def test_recommend_fine_tuning_only_when_ahead_with_the_interval_above_zero():
    choice, reason = recommend(metric="accuracy", train_size=288, projection=_difference(0.9, 0.02, 0.18), crossing=_crossing(100),
                               options=_options(), labels_to_add=None)
    assert choice == "fine-tune here" and "ahead of every opponent" in reason and "5.0 min" in reason
    slow = recommend(metric="accuracy", train_size=288, projection=_difference(0.9, 0.02, 0.18), crossing=None,
                     options=_options(here_seconds=5 * 3600), labels_to_add=None)
    assert slow[0] == "fine-tune (on a rented L4)" and "USD 0.01" in slow[1]


def test_recommend_keeping_the_baseline_says_where_the_curve_reaches_it():
    behind = recommend(metric="accuracy", train_size=288, projection=_difference(0.75, -0.1, -0.01), crossing=_crossing(450.2),
                       options=_options(), labels_to_add=180)
    assert behind[0] == "keep classical"
    assert "behind it" in behind[1] and "about 450 training examples" in behind[1] and "180 more, USD 45.00" in behind[1]
    level = recommend(metric="accuracy", train_size=288, projection=_difference(0.81, -0.05, 0.07), crossing=_crossing(250),
                      options=_options(), labels_to_add=None)
    assert level[0] == "keep classical" and "not shown to be ahead" in level[1] and "within the noise" in level[1]
    never = recommend(metric="accuracy", train_size=288, projection=_difference(0.7, -0.2, -0.05), crossing=_crossing(None),
                      options=_options(), labels_to_add=None)
    assert "does not reach it within 10x your data (2,880 training examples)" in never[1]
    # SNIPS, 94 examples: tuned 0.928 against classical's curve 0.923 at 94, but classical's curve keeps rising past the
    # tuned one's ceiling (0.93): ahead now, behind with more data. It was told "does not reach it within 10x your data".
    for_a_while = Crossing(None, None, None, 14, 940, False, "classical", behind_from=310.4)
    ahead_now = recommend(metric="accuracy", train_size=94, projection=_difference(0.928, -0.137, 0.111, opponent=0.923),
                          crossing=for_a_while, options=_options(), labels_to_add=None)
    assert ahead_now[0] == "keep classical" and "does not reach" not in ahead_now[1], ahead_now
    assert "level or ahead of it up to about 310 training examples, behind beyond" in ahead_now[1], ahead_now
    nothing = recommend(metric="accuracy", train_size=288, projection=None, crossing=None, options=_options(), labels_to_add=None,
                        no_curve="no learning curve fits the budget")
    assert nothing[0].startswith("measure first") and "5.0 min" in nothing[1]


def test_sft_and_text_get_their_own_opponents_and_curves(tmp_path, tiny_model_dir):
    sft_rows = tmp_path / "qa.jsonl"
    sft_rows.write_text("\n".join(json.dumps({"prompt": f"what is {i} plus {i}?", "completion": f"{i} plus {i} is {2 * i}."})
                                  for i in range(60)) + "\n")
    sft = parse_config({
        "task": "sft", "model": str(tiny_model_dir), "name": "qa",
        "data": {"train": str(sft_rows), "test_size": 0.2, "validation_size": 0.2, "max_length": 160},
        "train": {"epochs": 1, "batch_size": 8, "output_dir": str(tmp_path / "runs")},
        "eval": {"bootstrap_samples": 100, "max_new_tokens": 8, "few_shot_tokens": 64},
    })
    advice = advise(sft, budget_minutes=None, calibrate=False)
    # 64 tokens hold no solved example: few_shot is skipped, and says so.
    assert advice.metric == "rougeL" and [o.name for o in advice.opponents] == ["base", "embedding", "retrieval"]
    assert any(w.startswith("few_shot skipped: 64 tokens") for w in advice.warnings), advice.warnings
    assert [c.name for c in advice.curves][:1] == ["tuned"] and "retrieval" in [c.name for c in advice.curves]
    assert len(advice.points) == 3 and advice.recommendation
    documents = tmp_path / "log.jsonl"
    documents.write_text("\n".join(json.dumps({"text": f"entry {i}: the lamp was lit at dusk and the sea was calm. " * 3})
                                   for i in range(50)) + "\n")
    text = parse_config({
        "task": "text", "model": str(tiny_model_dir), "name": "log",
        "data": {"train": str(documents), "test_size": 0.1, "validation_size": 0.2, "max_length": 64},
        "train": {"epochs": 1, "batch_size": 4, "output_dir": str(tmp_path / "runs")},
        "eval": {"bootstrap_samples": 100},
    })
    advice = advise(text, budget_minutes=None, calibrate=False)
    # perplexity: lower is better; the only opponent is the base model, which learns nothing from more data.
    assert advice.metric == "perplexity" and not advice.higher_is_better
    assert [o.name for o in advice.opponents] == ["base"] and [c.name for c in advice.curves] == ["tuned"]
    assert advice.projection is not None and advice.projection.opponent == "base"


def test_the_tables_say_only_what_was_measured():
    """FDR speeches (8 documents: 1 validation document) showed perplexity "36.112 [36.112, 36.112]", an interval of
    zero width from one row, with a note to "see the intervals"; and an advice without a curve (the budget fitted
    none) said "yes (curve)" for classical and embedding, whose curves were never measured."""
    from tunelab.cli.advise import render_advice
    from tunelab.cli.common import console

    def opponent(name, score, learns):
        return {"name": name, "score": score, "low": score, "high": score, "learns": learns, "seconds": 1.0, "model": name}

    data = {
        "name": "x", "task": "text", "metric": "perplexity", "higher_is_better": False, "train_size": 6, "validation_size": 1,
        "labelled": 8, "opponents": [opponent("base", 36.112, False), opponent("classical", 30.5, True)], "points": [],
        "curves": [], "projection": None, "crossing": None, "recommendation": "measure first: run tunelab run", "reason": "r",
        "flags": [], "options": [{"key": "keep", "name": "keep base", "seconds": 1.0, "usd": None, "retune_seconds_per_month": 0.0,
                                   "retune_usd_per_month": 0.0, "notes": [], "score": 36.112, "score_low": 36.112,
                                   "score_high": 36.112, "score_note": "measured on the validation rows"}],
        "retrain_every": "30d", "folder": "/tmp/x", "seconds": 1.0, "warnings": [],
    }
    with console.capture() as captured:
        render_advice(data)
    output = " ".join(captured.get().split())
    assert "[36.112, 36.112]" not in output and "36.112" in output and "no interval" in output, output
    assert "(curve)" not in output and "│ classical │" in output, output
    data["validation_size"], data["curves"] = 20, [{"name": "classical"}]
    with console.capture() as captured:
        render_advice(data)
    assert "[36.112, 36.112]" in captured.get() and "yes (curve)" in captured.get()


def _classify_result(name: str, right: list[bool]) -> EvalResult:
    rows = [{"id": str(i), "reference": "A", "prediction": "A" if ok else "B", "scores": {"correct": float(ok), "confidence": 0.9}}
            for i, ok in enumerate(right)]
    return EvalResult(task="classify", model=name, n=len(rows), metrics={"accuracy": sum(right) / len(rows)}, rows=rows,
                      baseline=True, labels=["A", "B"], baseline_name=name)


def test_a_perfect_or_null_score_on_the_validation_rows_gets_the_wilson_interval_not_none():
    # Every validation row right: each bootstrap resample is right too, and the score showed 1.000 [1.000, 1.000], as
    # if 20 rows proved it never errs. The interval of a proportion there is Wilson's, as everywhere else in tunelab.
    from tunelab.evaluation.metrics import wilson_interval
    from tunelab.tasks.advise import fit_advice

    baselines = {"classical": _classify_result("classical", [True] * 20), "base": _classify_result("base", [False] * 20),
                 "few_shot": _classify_result("few_shot", [True] * 15 + [False] * 5)}
    points = {size: _classify_result("tuned", [True] * 20) for size in (10, 20, 40)}
    fits = fit_advice("classify", "accuracy", True, 40, baselines, points, {}, samples=200, seed=0, labels=["A", "B"])
    assert fits.scores["classical"] == (1.0, *wilson_interval(20, 20))
    assert fits.scores["base"] == (0.0, *wilson_interval(0, 20))
    assert wilson_interval(20, 20)[0] < 0.9  # a band that says something: 20 rows cannot prove 100 %
    score, low, high = fits.scores["few_shot"]
    assert score == 0.75 and low < 0.75 < high  # a score inside (0, 1) keeps its bootstrap interval
    # The tuned model is right on every row at every size: its projected band is as degenerate, and as honest with Wilson.
    assert fits.projection is not None and fits.projection.tuned == 1.0
    assert (fits.projection.tuned_low, fits.projection.tuned_high) == wilson_interval(20, 20)


def test_a_few_long_documents_get_a_curve_over_their_training_windows(tmp_path, tiny_model_dir, tiny_tokenizer):
    """FDR speeches, 8 documents: 6 to train, 71 training windows of 256 tokens. The curve counted documents: "6 training
    examples are too few for a learning curve", "measure first", for a user whose few documents are most of a run's data."""
    from tunelab.cli.advise import render_advice
    from tunelab.cli.common import console
    from tunelab.data.split import make_split
    from tunelab.data.tokenize import tokenize_text

    documents = tmp_path / "speeches.jsonl"
    documents.write_text("\n".join(json.dumps({"text": " ".join(f"my friends, on day {i} of week {d} the banks were open." for i in range(40))})
                                   for d in range(8)) + "\n")
    config = parse_config({
        "task": "text", "model": str(tiny_model_dir), "name": "speeches",
        "data": {"train": str(documents), "max_length": 32},
        "train": {"epochs": 1, "batch_size": 4, "output_dir": str(tmp_path / "runs")},
        "eval": {"bootstrap_samples": 100},
    })
    split = make_split(config)
    assert len(split.train) == 6 and len(split.validation) == 1
    windows = sum(len(tokenize_text(document, tiny_tokenizer, 32)) for document in split.train)
    advice = advise(config, budget_minutes=None, calibrate=False)
    assert advice.train_size == windows and advice.unit == "training windows of up to 32 tokens"
    assert len(advice.points) == 4 and advice.points[-1].size == windows, advice.flags
    assert advice.projection is not None and "too few" not in advice.reason
    # One validation document: the projection is told without an interval, and decides nothing.
    assert advice.recommendation == "measure first: run tunelab run" and "one validation document gives no interval" in advice.reason
    # The held-out validation document is scored whole at every size.
    for point in advice.points:
        scored = json.loads((advice.folder / "curve" / f"n{point.size}" / "eval" / "validation.json").read_text())["rows"]
        assert [row["id"] for row in scored] == [r.id for r in split.validation]
    with console.capture() as captured:
        render_advice(advice.to_dict())
    output = " ".join(captured.get().split())
    assert f"nested subsets of the {windows:,} training windows of up to 32 tokens" in output, output
    projected = output[output.index(f"projected with all {windows:,} training windows of up to 32 tokens: tuned "):]
    assert "[" not in projected[: projected.index("Each way forward")], projected


def test_text_grows_by_documents_priced_per_document():
    """What a text run adds to reach its opponent is documents like the user's, and tokens of text, not labels."""
    from tunelab.estimate.options import documents_needed, label_option

    # FDR: 6 training speeches of 8 (1 validation, 1 test), 71 windows, 17,500 tokens. Twice the windows is 6 more training
    # speeches, 8 to write (a quarter is held out as now), of about 2,917 tokens each.
    assert documents_needed(142, 71, 6, 8, 17_500) == (8, 8 * 17_500 / 6)
    assert documents_needed(71, 71, 6, 8, 17_500) == (0, 0.0)

    label = label_option(3, None, 60.0, retrain_every_s=30 * 86400, what="add 3 more documents (9,000 tokens of text)", per="document")
    assert label.name == "add 3 more documents (9,000 tokens of text), then fine-tune here"
    assert "money: give a price per document to count the labelling" in label.notes
    behind = recommend(metric="perplexity", train_size=71, projection=_difference(0.75, -0.1, -0.01), crossing=_crossing(450.2),
                       options=_options(), labels_to_add=3, unit="training windows of 256 tokens",
                       more="add about 3 more documents like yours, about 9,000 tokens of text")
    assert "At your 71 training windows of 256 tokens" in behind[1]
    assert "about 450 training windows of 256 tokens (add about 3 more documents like yours, about 9,000 tokens of text, USD 45.00)" in behind[1]


def test_one_validation_document_decides_nothing():
    """FDR speeches, 8 documents (1 to validate), once the curve counted windows: "fine-tune here", perplexity 33.959
    "(95% band 33.959 to 33.959)" against base 36.112, "95% interval +2.153 to +2.153": a zero-width interval from one
    document, under a note that said one row decides nothing."""
    projection = Difference(71, 33.959, 33.959, 33.959, "base", 36.112, 2.153, 2.153, 2.153, False, False)
    words = dict(metric="perplexity", train_size=71, projection=projection, crossing=_crossing(10), options=_options(),
                 labels_to_add=None, unit="training windows of 256 tokens")
    assert recommend(**words)[0] == "fine-tune here"  # with rows enough to give an interval, +2.153 above zero decides
    choice, reason = recommend(**words, undecided="one validation document gives no interval")
    assert choice == "measure first: run tunelab run", reason
    assert "perplexity 33.959 against base 36.112: difference +2.153" in reason and "95%" not in reason, reason
    assert "one validation document gives no interval" in reason and "5.0 min" in reason, reason


@pytest.mark.parametrize("task", ["classify", "sft"])
def test_one_validation_row_decides_nothing_whatever_the_task(tmp_path, tiny_model_dir, task):
    """Text said "measure first" for one validation document; sft, whose rougeL on one row resamples to itself, still
    recommended from a zero-width interval, and classify from a difference whose every resample was that one row's."""
    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    if task == "sft":
        rows = [{"prompt": f"what is {i} plus {i}?", "completion": f"{i} plus {i} is {2 * i}."} for i in range(41)]
        data = {"max_length": 160}
        extra = {"eval": {"bootstrap_samples": 100, "max_new_tokens": 8, "few_shot_tokens": 64}}
    else:
        rows = [{"text": f"{WORDS['AB'[i % 2]][i % 4]} number {i}", "label": "AB"[i % 2]} for i in range(41)]
        data = {"max_length": 64}
        extra = {"eval": {"bootstrap_samples": 100}}
    train.write_text("\n".join(json.dumps(row) for row in rows[1:]) + "\n")
    validation.write_text(json.dumps(rows[0]) + "\n")
    config = parse_config({
        "task": task, "model": str(tiny_model_dir), "name": f"one-{task}",
        "data": {"train": str(train), "validation": str(validation), "test_size": 0.2, **data},
        "train": {"epochs": 1, "batch_size": 8, "output_dir": str(tmp_path / "runs")}, **extra,
    })
    advice = advise(config, budget_minutes=None, calibrate=False)
    assert advice.validation_size == 1 and advice.projection is not None, advice.flags
    assert advice.recommendation == "measure first: run tunelab run", advice.reason
    assert "one validation row gives no interval" in advice.reason and "95%" not in advice.reason, advice.reason


def test_both_perfect_on_every_row_is_level_not_a_certain_zero():
    """The tuned model and classical right on all 20 validation rows: "difference +0.000 (95% interval +0.000 to
    +0.000)", an interval of no width told as certain. 20 rows cannot separate two perfect scores."""
    from tunelab.cli.advise import render_advice
    from tunelab.cli.common import console
    from tunelab.tasks.advise import fit_advice

    baselines = {"classical": _classify_result("classical", [True] * 20), "base": _classify_result("base", [False] * 20)}
    points = {size: _classify_result("tuned", [True] * 20) for size in (10, 20, 40)}
    fits = fit_advice("classify", "accuracy", True, 40, baselines, points, {}, samples=200, seed=0, labels=["A", "B"])
    p = fits.projection
    assert p is not None and p.difference == 0.0 and p.opponent == "classical"
    assert p.low < 0 < p.high, (p.low, p.high)  # both perfect on 20 rows: each could err on a few percent of others
    choice, reason = recommend(metric="accuracy", train_size=40, projection=p, crossing=fits.crossing, options=_options(),
                               labels_to_add=None)
    assert choice == "keep classical", reason
    assert "level" in reason and "cannot separate them" in reason and "+0.000 to +0.000" not in reason, reason
    # Tuned right on every row, base wrong on every row: the gap is real, and its interval has a width too.
    ahead = fit_advice("classify", "accuracy", True, 40, {"base": baselines["base"]}, points, {}, samples=200, seed=0,
                       labels=["A", "B"]).projection
    assert ahead is not None and ahead.difference == 1.0 and 0 < ahead.low < ahead.high == 1.0, (ahead.low, ahead.high)
    assert recommend(metric="accuracy", train_size=40, projection=ahead, crossing=None, options=_options(),
                     labels_to_add=None)[0] == "fine-tune here"
    data = {
        "name": "x", "task": "classify", "metric": "accuracy", "higher_is_better": True, "train_size": 40, "validation_size": 20,
        "labelled": 60, "opponents": [], "points": [], "curves": [], "projection": p.to_dict(), "crossing": None,
        "recommendation": choice, "reason": reason, "flags": [], "options": [], "retrain_every": "30d", "folder": "/tmp/x",
        "seconds": 1.0, "warnings": [],
    }
    with console.capture() as captured:
        render_advice(data)
    assert "[+0.000, +0.000]" not in captured.get() and "difference +0.000 [-0." in captured.get(), captured.get()


def _steps_trained(run_dir) -> int:
    """The optimizer steps a run trained: the last step its metrics log (the last step always logs)."""
    from tunelab.runs import RunFolder

    lines = RunFolder(run_dir).metrics.read_text().splitlines()
    return max(json.loads(line)["step"] for line in lines if line.strip())


def test_curve_runs_scale_train_max_steps_with_their_size(tmp_path, tiny_model_dir):
    """A reviewer's config with train.max_steps: every curve run trained those steps whatever its size, so the
    smallest subset made many more passes over its data than the whole run: a different recipe at each size."""
    raw = _classify_config(tmp_path, tiny_model_dir).model_dump(mode="json")
    # 72 training examples, 9 steps an epoch: 18 steps are 2 passes. Sizes 8, 18, 36, 72: 1, 3, 5, 9 steps an epoch,
    # so 2, 6, 10, 18 steps, the smallest raised to train.min_steps (4).
    raw["train"].update({"max_steps": 18, "min_steps": 4})
    raw["eval"]["baselines"] = ["base"]
    advice = advise(parse_config(raw), budget_minutes=None, calibrate=False, folder=tmp_path / "steps-advice")
    assert [p.size for p in advice.points] == [8, 18, 36, 72]
    assert [_steps_trained(p.run_dir) for p in advice.points] == [4, 6, 10, 18]
    assert [p["steps"] for p in load_advice(advice.folder)["points"]] == [4, 6, 10, 18]
    scaled = [w for w in advice.warnings if "train.max_steps (18)" in w]
    assert len(scaled) == 1 and "4, 6, 10, 18 optimizer steps" in scaled[0], advice.warnings


def test_curve_max_steps_keeps_the_whole_runs_passes_and_min_steps_under_max_steps():
    from tunelab.tasks.advise import curve_max_steps

    def train(**update):
        raw = {"task": "classify", "model": "m", "data": {"train": "x.jsonl"}, "train": {"batch_size": 8, **update}}
        return parse_config(raw).train

    # No max_steps: the epochs already scale with the size.
    assert curve_max_steps(train(epochs=3), 8, 72) == (None, False)
    # 200 steps over 800 examples (100 an epoch) are 2 passes: 100 examples (13 steps an epoch) get 26.
    assert curve_max_steps(train(max_steps=200, epochs=3), 100, 800) == (26, False)
    assert curve_max_steps(train(max_steps=200, epochs=3), 800, 800) == (200, False)
    # classify's default epochs bring train.min_steps 120: it raises a small run, never above the whole run's steps.
    assert curve_max_steps(train(max_steps=200), 100, 800) == (120, True)
    assert curve_max_steps(train(max_steps=50), 100, 800) == (50, True)
    assert curve_max_steps(train(max_steps=50), 800, 800) == (50, False)
