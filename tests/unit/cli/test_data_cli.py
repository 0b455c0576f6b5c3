"""``tunelab data check / show / split``: exit codes, JSON and the rendered examples."""

import json

from typer.testing import CliRunner


def _write_jsonl(path, rows, extra_lines=()):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "".join(line + "\n" for line in extra_lines))
    return path


def _cli(args):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, args)


def test_cli_exit_codes(tmp_path, tiny_model_dir):
    good = _write_jsonl(tmp_path / "good.jsonl", [{"prompt": f"q{i}", "completion": "a"} for i in range(3)])
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "completion": "a"}], ["{broken"])
    model = ["--model", str(tiny_model_dir)]
    result = _cli(["data", "check", str(good), "--task", "sft", *model])
    assert result.exit_code == 0, result.output
    assert "[[a<|im_end|>]]" in result.output and "Token lengths" in result.output
    result = _cli(["data", "check", str(bad), "--task", "sft", "--json", *model])
    assert result.exit_code == 2
    report = json.loads(result.output)
    assert report["errors"][0]["source"] == f"{bad}:2" and "[[a<|im_end|>]]" in report["example"]["bracketed"]
    assert _cli(["data", "check", str(bad), "--task", "sft", "--skip-invalid", *model]).exit_code == 0
    result = _cli(["data", "show", str(good), "--task", "sft", "-n", "2", "--json", *model])
    assert result.exit_code == 0 and len(json.loads(result.output)) == 2
    config = tmp_path / "run.yaml"
    config.write_text(f"task: sft\ndata:\n  train: {good.name}\n  test_size: 0.34\n  validation_size: 0\n")
    result = _cli(["data", "split", str(config), "--json", "--save", str(tmp_path / "split.json")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sizes"] == {"train": 2, "validation": 0, "test": 1}
    assert (tmp_path / "split.json").is_file()


def test_an_out_of_range_option_is_a_one_line_error_naming_the_option(tmp_path):
    from tunelab.errors import ConfigError

    good = _write_jsonl(tmp_path / "good.jsonl", [{"text": "hello", "label": "a"}, {"text": "bye", "label": "b"}])
    for args in (["check", "--no-tokens", "--max-length", "0"], ["check", "--no-tokens", "--limit", "-1"], ["show", "--max-length", "2"]):
        command, *options = args
        result = _cli(["data", command, str(good), "--task", "classify", *options])
        # A ConfigError is what main() prints as one line with exit code 2 (a pydantic traceback exited 1).
        assert isinstance(result.exception, ConfigError), (args, repr(result.exception))
        assert str(result.exception).startswith(options[-2]), (args, str(result.exception))
        assert "\n" not in str(result.exception)


def test_data_split_says_before_compute_when_the_test_split_is_too_small_for_a_verdict(tmp_path):
    # `tunelab run` warns at its split step; `tunelab data split`, the command that shows the split before
    # any compute, printed "test 2" and nothing about the verdict that run would end with.
    from tunelab.evaluation.compare import MIN_TEST_EXAMPLES

    rows = [{"text": f"request number {i}", "label": "a" if i % 2 else "b"} for i in range(20)]
    _write_jsonl(tmp_path / "tiny.jsonl", rows)
    config = tmp_path / "run.yaml"
    config.write_text("task: classify\ndata:\n  train: tiny.jsonl\n")
    result = _cli(["data", "split", str(config), "--save", str(tmp_path / "split.json")])
    assert result.exit_code == 0, result.output
    assert f"a verdict needs at least {MIN_TEST_EXAMPLES}" in " ".join(result.output.split())
    result = _cli(["data", "split", str(config), "--json"])
    assert any(f"a verdict needs at least {MIN_TEST_EXAMPLES}" in warning for warning in json.loads(result.output)["warnings"])
    # The saved split is the one `tunelab run` saves: the warning is about this config's verdict, not the split.
    assert json.loads((tmp_path / "split.json").read_text())["warnings"] == []


def test_a_header_without_the_field_is_one_line_in_data_check_and_in_run(tmp_path):
    # One "missing field 'text'" per row (20 listed, then "... and N more") for a file whose header names other columns.
    from tunelab.config import parse_config
    from tunelab.data.read import read_records
    from tunelab.errors import DataError
    from tunelab.tasks.pipeline import refuse_invalid

    path = tmp_path / "train.csv"
    path.write_text("review,category\n" + "".join(f"the app crashed again {i},bug\n" for i in range(30)))
    result = _cli(["data", "check", str(path), "--task", "classify", "--no-tokens", "--json"])
    assert result.exit_code == 2, result.output
    report = json.loads(result.output)
    # The file's one error, then what follows from it (no usable records): no error per row.
    assert {error["source"] for error in report["errors"]} == {str(path)} and len(report["errors"]) == 2, report["errors"][:3]
    assert "no column" in report["errors"][0]["reason"] and "review, category" in report["errors"][0]["reason"]
    result = _cli(["data", "check", str(path), "--task", "classify", "--no-tokens"])
    assert "invalid=30" in result.output and "missing field" not in result.output, result.output
    config = parse_config({"task": "classify", "data": {"train": str(path)}})
    try:
        refuse_invalid(config, read_records(str(path), "classify", config.data).errors)
    except DataError as error:
        assert error.message.startswith(f"30 invalid record(s) in {path}: {path}: no column") and "more" not in error.message, error.message
        # data.skip_invalid would drop every row of the file: the hint points at the mapping the error names instead.
        assert "set data.skip_invalid: true" not in error.hint and "would drop every row" in error.hint, error.hint
    else:
        raise AssertionError("refused nothing")
