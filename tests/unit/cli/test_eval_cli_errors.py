"""``tunelab eval``: options out of range are one line naming the option."""

import json

from typer.testing import CliRunner


def _cli(args):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, args)


def test_an_out_of_range_option_is_a_one_line_error_naming_the_option(tmp_path, tiny_model_dir):
    from tunelab.errors import ConfigError

    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) + "\n" for i in range(4)))
    cases = [
        (["--top-p", "0"], "--top-p"),  # the option allows 0, eval.top_p does not
        (["--out-of-scope-label", " "], "data.out_of_scope_label is empty"),  # checked after the model is opened
    ]
    for options, named in cases:
        result = _cli(["eval", "--data", str(data), "--task", "classify", "--model", str(tiny_model_dir), *options])
        # A ConfigError is what main() prints as one line with exit code 2 (a pydantic traceback exited 1).
        assert isinstance(result.exception, ConfigError), (options, repr(result.exception))
        assert named in str(result.exception) and "\n" not in str(result.exception), (options, str(result.exception))


def test_a_labels_file_that_is_not_a_label_map_is_one_line_naming_it(tmp_path):
    from tunelab.errors import DataError

    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) + "\n" for i in range(4)))
    wrong = tmp_path / "labels.json"
    for content in ('{"labels": ["a", "b"]}', "not json", '["a", "b"]', '{"labels": ["a"], "token_ids": [1, 2], "token_strings": ["a", "b"]}'):
        wrong.write_text(content)
        for labels in (wrong, data):  # a damaged labels.json, or the test file passed by mistake (a traceback each)
            result = _cli(["eval", "--data", str(data), "--task", "classify", "--labels", str(labels)])
            assert isinstance(result.exception, DataError), (content, labels.name, repr(result.exception))
            assert str(result.exception).startswith(f"{labels}: not a labels.json") and "\n" not in str(result.exception), str(result.exception)


def test_invalid_records_can_be_dropped_with_the_option_the_error_names(tmp_path, tiny_model_dir):
    # The error's hint said "drop them with --skip-invalid", which `tunelab eval` did not have ("No such option").
    from tunelab.errors import DataError

    data = tmp_path / "test.jsonl"
    rows = [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(4)] + [{"text": "", "label": "a"}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["eval", "--data", str(data), "--task", "classify", "--model", str(tiny_model_dir)]
    result = _cli(args)
    assert isinstance(result.exception, DataError), repr(result.exception)
    assert "--skip-invalid" in result.exception.hint
    result = _cli([*args, "--skip-invalid", "--json"])
    assert result.exit_code == 0, (result.output, repr(result.exception))
    assert f"{data}:5" in result.output  # each dropped record is listed, as the hint promises
