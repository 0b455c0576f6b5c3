"""``--group-field`` on ``tunelab data check`` and ``tunelab eval``: a row without its group is an error at its line;
the evaluation's verdict carries the groups (``--json``) and the table by group."""

import json

from typer.testing import CliRunner


def _cli(args):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, args)


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_data_check_names_the_row_without_a_group(tmp_path):
    rows = [{"text": f"text {i}", "label": "ab"[i % 2], "country": "FR"} for i in range(3)] + [{"text": "no country", "label": "a"}]
    path = _write(tmp_path / "data.jsonl", rows)
    result = _cli(["data", "check", str(path), "--task", "classify", "--group-field", "country", "--no-tokens", "--json"])
    assert result.exit_code == 2, result.output
    (error,) = json.loads(result.output)["errors"]
    assert error["source"] == f"{path}:4" and "'country'" in error["reason"]
    assert _cli(["data", "check", str(path), "--task", "classify", "--no-tokens"]).exit_code == 0  # without the key: no group asked



def test_data_check_counts_each_group_in_the_data_and_the_test_file(tmp_path):
    # --group-field only checked that each row had one: how many test examples a group's verdict rests on went unsaid.
    data = _write(tmp_path / "data.jsonl", [{"text": f"text {i}", "label": "ab"[i % 2], "country": "FR" if i < 6 else "DE"} for i in range(8)])
    test = _write(tmp_path / "test.jsonl", [{"text": f"test {i}", "label": "ab"[i % 2], "country": "FR" if i < 31 else "DE"} for i in range(33)])
    args = ["data", "check", str(data), "--task", "classify", "--group-field", "country", "--test", str(test), "--no-tokens"]
    shown = _cli([*args, "--json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert report["groups"] == {"FR": 6, "DE": 2} and report["test"]["groups"] == {"FR": 31, "DE": 2}
    text = " ".join(_cli(args).output.split())
    assert "Groups (2, country)" in text and "FR │ 6" in text and "DE │ 2" in text  # the table, most first
    assert "by group: FR 31, DE 2; under 30, too few for a group's verdict: DE" in text


def test_eval_reports_each_group_against_the_baseline(tmp_path, tiny_model_dir):
    words = {"a": "refund money back", "b": "login password locked"}
    train = _write(tmp_path / "train.jsonl", [{"text": f"{words['ab'[i % 2]]} {i}", "label": "ab"[i % 2]} for i in range(40)])
    test = _write(tmp_path / "test.jsonl", [{"text": f"{words['ab'[i % 2]]} t{i}", "label": "ab"[i % 2], "country": "FR" if i < 36 else "DE"}
                                             for i in range(44)])
    result = _cli(["eval", "--data", str(test), "--task", "classify", "--model", str(tiny_model_dir), "--train", str(train),
                   "--baselines", "classical", "--group-field", "country", "--samples", "100", "--json"])
    assert result.exit_code == 0, (result.output, repr(result.exception))
    verdict = json.loads(result.output)["verdict"]
    groups = {group["group"]: group for group in verdict["groups"]}
    assert list(groups) == ["FR", "DE"] and groups["FR"]["n"] == 36 and groups["FR"]["opponent"] == "classical"
    assert groups["DE"]["outcome"] == "too few (n=8)" and groups["DE"]["low"] is None
