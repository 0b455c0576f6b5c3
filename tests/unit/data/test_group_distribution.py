"""data.group_field before any compute: ``tunelab data check`` and ``tunelab run``'s check step give the records per
group (as the label distribution), and the split step warns of each group whose test split is too small for its own
verdict (``MIN_TEST_EXAMPLES``), counted as the evaluation will count it (after ``data.max_test_examples``)."""

import json
from collections import Counter

from typer.testing import CliRunner

from tunelab.config import DataConfig, parse_config
from tunelab.data.check import check_data
from tunelab.data.split import make_split
from tunelab.evaluation.compare import MIN_TEST_EXAMPLES
from tunelab.evaluation.evaluate import select_test_records
from tunelab.tasks.pipeline import split_warnings, too_few_group_examples


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _rows(counts):
    countries = [country for country, n in counts.items() for _ in range(n)]
    return [{"text": f"request number {i}", "label": "ab"[i % 2], "country": country} for i, country in enumerate(countries)]


def test_the_check_counts_records_per_group(tmp_path):
    path = _write(tmp_path / "data.jsonl", _rows({"DE": 3, "FR": 5, "IT": 1}))
    report = check_data(str(path), "classify", DataConfig(group_field="country"))
    assert report.groups == {"FR": 5, "DE": 3, "IT": 1}  # the label table's order: most first
    assert report.to_dict()["groups"] == {"FR": 5, "DE": 3, "IT": 1}
    assert check_data(str(path), "classify", DataConfig()).groups == {}  # no group asked: none counted


def test_data_check_shows_the_group_table(tmp_path):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    path = _write(tmp_path / "data.jsonl", _rows({"DE": 3, "FR": 5}))
    result = CliRunner().invoke(app, ["data", "check", str(path), "--task", "classify", "--group-field", "country", "--no-tokens"],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    shown = result.output
    assert "Groups (2, country)" in shown
    assert [line.split() for line in shown.splitlines() if "FR" in line or "DE" in line][-2:] == [["│", "FR", "│", "5", "│"], ["│", "DE", "│", "3", "│"]]


def test_the_split_warns_of_each_group_too_small_for_its_verdict(tmp_path):
    path = _write(tmp_path / "data.jsonl", _rows({"FR": 300, "DE": 60, "IT": 10}))
    config = parse_config({"task": "classify", "data": {"train": str(path), "test_size": 0.3, "group_field": "country"}})
    split = make_split(config)
    counts = Counter(record.group for record in split.test)
    assert counts["FR"] >= MIN_TEST_EXAMPLES > counts["DE"] > counts["IT"] > 0
    (message,) = too_few_group_examples(config, split)
    assert f"'DE' {counts['DE']}" in message and f"'IT' {counts['IT']}" in message and "'FR'" not in message
    assert f"fewer than {MIN_TEST_EXAMPLES}" in message and "too few" in message
    assert f"split: {message}" in split_warnings(config, split)


def test_the_group_warning_counts_after_max_test_examples(tmp_path):
    path = _write(tmp_path / "data.jsonl", _rows({"FR": 400, "DE": 200}))
    config = parse_config({"task": "classify", "data": {"train": str(path), "test_size": 0.3, "group_field": "country", "max_test_examples": 60}})
    split = make_split(config)
    assert min(Counter(record.group for record in split.test).values()) >= MIN_TEST_EXAMPLES  # the whole split is big enough
    scored = Counter(record.group for record in select_test_records(split.test, 60, config.data.seed))
    (message,) = too_few_group_examples(config, split)
    small = sorted(group for group, n in scored.items() if n < MIN_TEST_EXAMPLES)
    assert small and all(f"'{group}' {scored[group]}" in message for group in small) and "data.max_test_examples" in message


def test_no_group_warning_without_groups_or_when_every_group_is_large(tmp_path):
    path = _write(tmp_path / "data.jsonl", _rows({"FR": 300, "DE": 300}))
    grouped = parse_config({"task": "classify", "data": {"train": str(path), "test_size": 0.3, "group_field": "country"}})
    assert too_few_group_examples(grouped, make_split(grouped)) == []
    plain = parse_config({"task": "classify", "data": {"train": str(path), "test_size": 0.3}})
    assert too_few_group_examples(plain, make_split(plain)) == []


def test_tunelab_runs_check_and_split_steps_say_the_groups(tmp_path, tiny_model_dir):
    from tunelab.tasks import pipeline

    path = _write(tmp_path / "data.jsonl", _rows({"FR": 300, "DE": 60, "IT": 10}))
    config = parse_config({"task": "classify", "model": str(tiny_model_dir), "name": "grouped",
                           "data": {"train": str(path), "test_size": 0.3, "max_length": 64, "group_field": "country"},
                           "train": {"output_dir": str(tmp_path / "runs")}})
    events = []
    context = pipeline.open_pipeline(config, calibrate=False, on_event=lambda step, status, details: events.append((step, status, details)))
    pipeline.check_step(context)
    said = [details["message"] for step, status, details in events if (step, status) == ("check", "event")]
    assert "data: 3 groups (country): 'FR' 300, 'DE' 60, 'IT' 10 records" in said
    split = pipeline.split_step(context)
    (warning,) = [message for message in context.warnings if "group(s)" in message]
    assert warning == "split: " + too_few_group_examples(config, split)[0]
    # Kept with the data check (data_check.json) for the report and the UI.
    assert json.loads(context.run.data_check.read_text())["groups"] == {"FR": 300, "DE": 60, "IT": 10}


def test_data_split_warns_of_the_small_groups_as_the_run_does(tmp_path):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    path = _write(tmp_path / "data.jsonl", _rows({"FR": 300, "DE": 60, "IT": 10}))
    config_path = tmp_path / "config.yaml"
    config_path.write_text(f"task: classify\ndata: {{train: {path}, test_size: 0.3, group_field: country}}\n")
    result = CliRunner().invoke(app, ["data", "split", str(config_path), "--json"])
    assert result.exit_code == 0, result.output
    config = parse_config({"task": "classify", "data": {"train": str(path), "test_size": 0.3, "group_field": "country"}})
    assert too_few_group_examples(config, make_split(config))[0] in json.loads(result.output)["warnings"]
