"""The current system's answers as a baseline ({predictions: PATH} in eval.baselines): scored like any opponent,
checked against an independent computation; refused with holes or conflicts; cached by the file's content."""

import json

import numpy as np
import pytest

from tunelab.config import DataConfig, EvalConfig, parse_config, resolve_baselines
from tunelab.data.labels import LabelMap
from tunelab.data.records import ClassifyRecord, SFTRecord
from tunelab.errors import ConfigError, DataError
from tunelab.evaluation import baselines as B
from tunelab.evaluation.compare import compare_with_baselines

LABELS = ["billing", "shipping", "technical"]
TEST = [("The invoice shows a wrong charge", "billing"), ("the app has a bug and crashes", "technical"),
        ("where is my parcel delivery", "shipping"), ("payment was charged twice", "billing"),
        ("login error again", "technical"), ("the courier lost the package", "shipping"), ("hello there", "billing")]


def _records():
    return [ClassifyRecord(text, label, source=f"test.jsonl:{i + 1}") for i, (text, label) in enumerate(TEST)]


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _eval_config(path, **entry):
    return EvalConfig(baselines=[{"predictions": str(path), **entry}])


def _label_map():
    return LabelMap(LABELS, [5, 6, 7], LABELS)


def _score(name, config, records=None, data_config=None, **kwargs):
    return B.evaluate_baseline(name, None, records or _records(), "classify", train=[], config=config,
                               data_config=data_config or DataConfig(), label_map=_label_map(), **kwargs)


def test_accuracy_macro_f1_and_the_paired_difference_equal_an_independent_computation(tmp_path):
    from sklearn.metrics import f1_score

    # Answers keyed by the request as the user's system saw it: case and punctuation differ from the test file's.
    current = ["billing", "billing", "shipping", "billing", "shipping", "shipping", "technical"]
    tuned = ["billing", "technical", "shipping", "billing", "technical", "billing", "billing"]
    rows = [{"text": text.upper() + "!", "label": answer} for (text, _), answer in zip(TEST, current, strict=True)]
    config = _eval_config(_write(tmp_path / "current.jsonl", rows))
    assert resolve_baselines("classify", config) == ["current"]  # named after the file's stem
    result = _score("current", config)
    references = [label for _, label in TEST]
    assert result.baseline_name == "current" and result.n == len(TEST)
    assert [row["prediction"] for row in result.rows] == current
    assert result.metrics["accuracy"] == pytest.approx(np.mean([a == r for a, r in zip(current, references, strict=True)]))
    assert result.metrics["macro_f1"] == pytest.approx(f1_score(references, current, average="macro", zero_division=0))
    assert result.metrics["ece"] is None  # no probability column: no ECE, never 0

    other = _eval_config(_write(tmp_path / "tuned.jsonl", [{"text": t, "label": a} for (t, _), a in zip(TEST, tuned, strict=True)]))
    tuned_result = _score("tuned", other)
    verdict = compare_with_baselines({"current": result}, tuned_result, seed=0, samples=200)
    comparison = verdict.comparisons["current"]
    accuracy, macro = comparison.metric("accuracy"), comparison.metric("macro_f1")
    assert accuracy.before == pytest.approx(result.metrics["accuracy"])
    assert accuracy.difference == pytest.approx(np.mean([a == r for a, r in zip(tuned, references, strict=True)]) - result.metrics["accuracy"])
    assert macro.difference == pytest.approx(f1_score(references, tuned, average="macro", zero_division=0)
                                             - f1_score(references, current, average="macro", zero_division=0))
    assert comparison.metric("ece").not_compared  # shown without a number, not as a calibrated 0


def test_a_probability_column_gives_an_ece(tmp_path):
    from tunelab.evaluation.metrics import expected_calibration_error

    answers = [("billing", 0.9), ("technical", 0.8), ("billing", 0.6), ("billing", 0.7), ("technical", 0.95), ("shipping", 0.5), ("billing", 0.4)]
    rows = [{"text": t, "label": a, "probability": p} for (t, _), (a, p) in zip(TEST, answers, strict=True)]
    result = _score("current", _eval_config(_write(tmp_path / "current.jsonl", rows)))
    correct = [a == r for (a, _), (_, r) in zip(answers, TEST, strict=True)]
    assert result.metrics["ece"] == pytest.approx(expected_calibration_error(np.array([p for _, p in answers]), np.array(correct)))


def test_an_answer_that_is_no_label_counts_as_wrong_and_is_said_once(tmp_path):
    answers = ["billing", "escalate", "shipping", "escalate", "technical", "shipping", "???"]
    rows = [{"text": t, "label": a} for (t, _), a in zip(TEST, answers, strict=True)]
    result = _score("current", _eval_config(_write(tmp_path / "current.jsonl", rows)))
    assert result.metrics["accuracy"] == pytest.approx(4 / 7)
    assert result.metrics["unknown_answers"] == 3
    said = [w for w in result.warnings if "none of the run's labels" in w]
    assert len(said) == 1 and said[0].startswith("3 answers") and "escalate" in said[0]
    matrix = result.metrics["confusion_matrix"]
    assert "escalate" in matrix["labels"] and sum(map(sum, matrix["matrix"])) == len(TEST)  # every answer in the matrix


def test_the_out_of_scope_label_is_an_out_of_scope_answer(tmp_path):
    records = [*_records(), ClassifyRecord("what is the weather", "other", source="test.jsonl:8")]
    answers = ["billing", "technical", "shipping", "billing", "technical", "shipping", "other", "other"]
    rows = [{"text": r.text, "label": a} for r, a in zip(records, answers, strict=True)]
    config = _eval_config(_write(tmp_path / "current.jsonl", rows))
    # Through evaluate_baselines, which chooses every other baseline's threshold on the validation queries: the current
    # system has none to choose (it answered those as it does), and is not asked for the validation queries.
    validation = [ClassifyRecord("is it sunny", "other"), ClassifyRecord("my invoice", "billing")]
    result = B.evaluate_baselines(["current"], None, records, "classify", train=[], config=config, data_config=DataConfig(out_of_scope_label="other"),
                                  label_map=_label_map(), validation=validation)["current"]
    assert "out_of_scope_threshold" not in result.metrics
    assert result.metrics["accuracy"] == pytest.approx(7 / 8) and "unknown_answers" not in result.metrics
    assert result.metrics["out_of_scope_recall"] == pytest.approx(1.0) and result.metrics["out_of_scope_precision"] == pytest.approx(0.5)


def test_sft_answers_are_scored_against_the_references(tmp_path):
    from tunelab.evaluation.evaluate import score_sft

    records = [SFTRecord(({"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"answer {i}"}), source=f"t:{i}")
               for i in range(4)]
    answers = ["answer 0", "answer one", "nothing", "answer 3"]
    path = _write(tmp_path / "old-bot.csv", [])
    path.write_text("prompt,completion\n" + "".join(f"Question {i},{a}\n" for i, a in enumerate(answers)))
    config = EvalConfig(baselines=[{"predictions": str(path), "name": "bot"}])
    result = B.evaluate_baseline("bot", None, records, "sft", train=[], config=config, data_config=DataConfig())
    _, expected = score_sft(records, answers, [[f"answer {i}"] for i in range(4)])
    assert result.metrics["rougeL"] == pytest.approx(expected["rougeL"]) and result.metrics["exact_match"] == pytest.approx(0.5)


def test_missing_conflicting_and_unreadable_predictions_are_one_error(tmp_path):
    rows = [{"text": t, "label": label} for t, label in TEST]
    missing = _write(tmp_path / "missing.jsonl", rows[:4])
    with pytest.raises(DataError, match=r"3 of 7 test requests have no prediction in .*missing.jsonl \(first: test.jsonl:5, test.jsonl:6, test.jsonl:7\)"):
        _score("missing", _eval_config(missing))
    conflict = _write(tmp_path / "conflict.jsonl", [*rows, {"text": "the invoice shows a WRONG charge", "label": "shipping"}])
    with pytest.raises(DataError, match=r"conflict.jsonl:1 answers 'billing', .*conflict.jsonl:8 answers 'shipping'"):
        _score("conflict", _eval_config(conflict))
    bad = _write(tmp_path / "bad.jsonl", [*rows, {"text": "no label here"}])
    with pytest.raises(DataError, match=r"bad.jsonl:8: missing label"):
        _score("bad", _eval_config(bad))
    same_twice = _write(tmp_path / "extra.jsonl", [*rows, rows[0], {"text": "never asked", "label": "billing"}])
    result = _score("extra", _eval_config(same_twice))
    assert result.metrics["accuracy"] == 1.0
    assert [w for w in result.warnings if "ignored" in w] == [f"1 predictions in {same_twice} answer requests not in the test set: ignored"]


def test_the_typed_config_checks_the_entry():
    base = {"task": "classify", "data": {"train": "t.jsonl"}}
    config = parse_config({**base, "eval": {"baselines": ["classical", {"predictions": "exports/current.csv", "label_field": "answer"}]}})
    assert config.eval.baselines == ["classical", "current"]
    assert config.eval.predictions["current"].path == "exports/current.csv" and config.eval.predictions["current"].label_field == "answer"
    with pytest.raises(ConfigError, match="colour"):
        parse_config({**base, "eval": {"baselines": [{"predictions": "current.csv", "colour": "red"}]}})
    with pytest.raises(ConfigError, match="catalogue"):
        parse_config({**base, "eval": {"baselines": [{"predictions": "current.csv", "name": "classical"}]}})
    with pytest.raises(ConfigError, match=r"\{predictions: PATH"):
        parse_config({**base, "eval": {"baselines": ["predictions"]}})
    with pytest.raises(ConfigError, match="current does not apply to the task text"):
        parse_config({"task": "text", "data": {"train": "t.txt"}, "eval": {"baselines": [{"predictions": "current.csv"}]}})


def test_a_cached_result_is_reused_and_a_changed_file_is_not(tmp_path):
    from tunelab.registry.store import Registry

    registry = Registry(tmp_path / "registry.db")
    path = _write(tmp_path / "current.jsonl", [{"text": t, "label": label} for t, label in TEST])
    config = _eval_config(path)
    events = []

    def run():
        results = B.evaluate_baselines(
            ["current"], None, _records(), "classify", train=[], config=config, data_config=DataConfig(), label_map=_label_map(),
            registry=registry, cache_dir=tmp_path / "cache", model_key="tiny",
            on_event=lambda name, status, details: events.append(status) if status != "progress" else None,
        )
        statuses = list(events)
        events.clear()
        return statuses, results["current"].metrics["accuracy"]

    assert run() == (["start", "done"], 1.0)
    assert run() == (["skip"], 1.0)
    _write(path, [{"text": t, "label": "billing"} for t, _ in TEST])  # the same file name, other answers
    assert run() == (["start", "done"], pytest.approx(3 / 7))
    assert run() == (["skip"], pytest.approx(3 / 7))


def test_tunelab_eval_takes_the_predictions_file_as_a_baseline(tmp_path, tiny_model_dir, monkeypatch):
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app
    from tunelab.evaluation import answering

    data = _write(tmp_path / "test.jsonl", [{"text": t, "label": label} for t, label in TEST])
    answers = _write(tmp_path / "rules.jsonl", [{"text": t, "label": "billing"} for t, _ in TEST[1:]])
    _register_commands()
    evaluated = []
    monkeypatch.setattr(answering.LocalModel, "evaluate", lambda *a, **k: evaluated.append(1) or pytest.fail("evaluated"))
    args = ["eval", "--data", str(data), "--task", "classify", "--model", str(tiny_model_dir), "--json"]
    result = CliRunner().invoke(app, [*args, "--predictions", f"current={answers}"])
    # A hole is refused before the model answers anything.
    assert isinstance(result.exception, DataError) and "1 of 7 test requests have no prediction" in str(result.exception)
    assert not evaluated
    monkeypatch.undo()
    _write(answers, [{"text": t, "label": "billing"} for t, _ in TEST])
    result = CliRunner().invoke(app, [*args, "--predictions", str(answers), "--samples", "100"])
    assert result.exit_code == 0, (result.output, repr(result.exception))
    shown = json.loads(result.output)
    assert shown["baselines"]["rules"]["accuracy"] == pytest.approx(3 / 7) and shown["baselines"]["rules"]["ece"] is None
    assert "rules" in shown["verdict"]["comparisons"]


def test_a_relative_predictions_path_is_anchored_for_resume(tmp_path):
    from tunelab.runs import anchor_paths

    (tmp_path / "current.jsonl").write_text("{}\n")
    config = {"eval": {"predictions": {"current": {"path": "current.jsonl"}, "gone": {"path": "gone.jsonl"}}}}
    anchored = anchor_paths(config, tmp_path)["eval"]["predictions"]
    assert anchored["current"]["path"] == str(tmp_path / "current.jsonl") and anchored["gone"]["path"] == "gone.jsonl"


def test_a_run_with_groups_reads_a_predictions_file_without_them(tmp_path):
    # The run's records carry a country (data.group_field); the current system's export has only its answers, and is
    # read without the group column, as the out-of-scope file is.
    rows = [{"text": text, "label": label} for text, label in TEST]
    config = _eval_config(_write(tmp_path / "current.jsonl", rows))
    records = [ClassifyRecord(text, label, source=f"test.jsonl:{i + 1}", group="FR") for i, (text, label) in enumerate(TEST)]
    result = _score("current", config, records=records, data_config=DataConfig(group_field="country"))
    assert result.metrics["accuracy"] == pytest.approx(1.0)


def test_answers_to_test_requests_left_out_of_the_sample_are_not_said_to_be_outside_the_test_set(tmp_path):
    # An export of the whole test file, scored on data.max_test_examples' sample: only the extra answer is outside.
    rows = [{"text": text, "label": label} for text, label in TEST] + [{"text": "a request of another month", "label": "billing"}]
    config = _eval_config(_write(tmp_path / "current.jsonl", rows))
    data_config = DataConfig(max_test_examples=4)
    result = _score("current", config, data_config=data_config)
    assert result.n == 4
    assert [w for w in result.warnings if "not in the test set" in w] == [
        f"1 predictions in {tmp_path / 'current.jsonl'} answer requests not in the test set: ignored"]
    notes = B.check_predictions(["current"], _records(), "classify", config=config, data_config=data_config)
    assert notes == [f"baseline current: 1 predictions in {tmp_path / 'current.jsonl'} answer requests not in the test set: ignored"]


def test_no_ece_is_said_with_the_baselines_name_not_its_files_path(tmp_path):
    # The table cell of `tunelab run` and `show` held "current (the current system's answers, /long/path.jsonl)'s ece
    # ...", cut by the table's width in the middle; the column's header already names the file's baseline.
    rows = [{"text": text, "label": label} for text, label in TEST]
    config = _eval_config(_write(tmp_path / "current.jsonl", rows))
    scored = _eval_config(_write(tmp_path / "tuned.jsonl", [{**row, "probability": 0.9} for row in rows]))
    result, tuned = _score("current", config), _score("tuned", scored)
    tuned.baseline, tuned.baseline_name, tuned.model = False, None, "tuned"
    reason = compare_with_baselines({"current": result}, tuned, seed=0, samples=50).comparisons["current"].metric("ece").not_compared
    assert reason == "the ece of current is not a number on this test set (its answers come without probabilities)"


def test_a_baseline_name_ending_in_s_reads_right_where_its_metric_is_named(tmp_path):
    # A predictions baseline named keywords: the line read "keywords's ece is not a number"; any name reads right as
    # "the ece of NAME".
    rows = [{"text": text, "label": label} for text, label in TEST]
    config = _eval_config(_write(tmp_path / "keywords.jsonl", rows), name="keywords")
    scored = _eval_config(_write(tmp_path / "tuned.jsonl", [{**row, "probability": 0.9} for row in rows]))
    result, tuned = _score("keywords", config), _score("tuned", scored)
    tuned.baseline, tuned.baseline_name, tuned.model = False, None, "tuned"
    reason = compare_with_baselines({"keywords": result}, tuned, seed=0, samples=50).comparisons["keywords"].metric("ece").not_compared
    assert reason == "the ece of keywords is not a number on this test set (its answers come without probabilities)"


def test_a_missing_column_is_to_be_named_in_the_files_entry_not_with_the_datas_options(tmp_path):
    # "name them with --text-field request and --label-field routed_to (data.text_field: ...)" renamed the test data's
    # columns too: the predictions entry has its own text_field and label_field.
    path = tmp_path / "current.csv"
    path.write_text("request,routed_to\n" + "".join(f"{text},{label}\n" for text, label in TEST))
    with pytest.raises(DataError) as caught:
        _score("current", _eval_config(path))
    message = caught.value.message
    # From `tunelab eval` the entry is the --predictions-field option: both are named.
    assert ("name them in the file's eval.baselines entry or with tunelab eval's --predictions-field NAME.FIELD=VALUE "
            "(text_field: request, label_field: routed_to)") in message, message
    assert "--text-field" not in message and "data.text_field" not in message
    result = _score("current", _eval_config(path, text_field="request", label_field="routed_to"))
    assert result.n == len(TEST)


def test_tunelab_eval_names_a_predictions_files_columns(tmp_path, tiny_model_dir):
    # A CSV export with the columns request,routed_to could only be used from the config's entry, not from the CLI.
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app

    data = _write(tmp_path / "test.jsonl", [{"text": t, "label": label} for t, label in TEST])
    export = tmp_path / "export.csv"
    export.write_text("request,routed_to\n" + "".join(f"{text},billing\n" for text, _ in TEST))
    _register_commands()
    args = ["eval", "--data", str(data), "--task", "classify", "--model", str(tiny_model_dir), "--json", "--samples", "100"]
    result = CliRunner().invoke(app, [*args, "--predictions", f"current={export}", "--predictions-field", "current.text_field=request",
                                      "--predictions-field", "current.label_field=routed_to"])
    assert result.exit_code == 0, (result.output, repr(result.exception))
    assert json.loads(result.output)["baselines"]["current"]["accuracy"] == pytest.approx(3 / 7)


@pytest.mark.parametrize(("fields", "said"), [
    (["other.text_field=request"], "--predictions-field other.text_field=request: no --predictions file is named other (named: current, rules)"),
    (["text_field=request"], "--predictions-field text_field=request: name the file (current, rules): NAME.text_field=request"),
    (["current.colour=red"], "--predictions-field current.colour=red: colour is no field of a predictions file"),
    (["current.text_field"], "--predictions-field current.text_field: give [NAME.]FIELD=VALUE"),
    (["current.format=xls"], "--predictions-field current.format=xls: "),
])
def test_a_mistaken_predictions_field_is_one_line_naming_the_option(tmp_path, fields, said):
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app

    _register_commands()
    args = ["eval", "--data", str(tmp_path / "test.jsonl"), "--task", "classify", "--predictions", "current=a.csv",
            "--predictions", "rules=b.csv"]
    result = CliRunner().invoke(app, [*args, *[part for field in fields for part in ("--predictions-field", field)]])
    assert isinstance(result.exception, ConfigError), (result.output, repr(result.exception))
    assert str(result.exception).startswith(said) and "\n" not in str(result.exception), str(result.exception)
