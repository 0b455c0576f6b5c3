"""A new user's mistakes on the command line: each is one line and exit code 2 (a TunelabError), never a traceback."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunelab.cli.main import _register_commands, app
from tunelab.errors import TunelabError
from tunelab.evaluation.result import EvalResult


@pytest.fixture(scope="module", autouse=True)
def _commands():
    _register_commands()


def _cli(*args: str):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def _sft_result(name: str) -> EvalResult:
    rows = [{"id": f"q{i}", "source": "", "prompt": f"question {i}", "reference": "r", "prediction": f"{name} answer {i}", "scores": {}}
            for i in range(6)]
    return EvalResult("sft", name, len(rows), {}, rows)


def test_an_output_file_that_is_a_folder_is_one_line_before_any_work(tmp_path, tiny_model_dir):
    # --out naming a folder was an IsADirectoryError traceback (exit 1), for eval only after every example was scored.
    folder = tmp_path / "out"
    folder.mkdir()
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) + "\n" for i in range(4)))
    base, tuned = _sft_result("base").save(tmp_path / "base.json"), _sft_result("tuned").save(tmp_path / "tuned.json")
    sheet = tmp_path / "sheet.csv"
    assert _cli("review", "export", "--base", base, "--tuned", tuned, "--out", sheet).exit_code == 0
    lines = sheet.read_text().splitlines()
    sheet.write_text("\n".join([lines[0], *(line + "A" for line in lines[1:3]), *lines[3:]]) + "\n")  # two rows judged
    for args in (
        ["eval", "--data", data, "--task", "classify", "--model", tiny_model_dir, "--baselines", "none", "--out", folder],
        ["review", "export", "--base", base, "--tuned", tuned, "--out", folder],
        ["review", "pairs", sheet, "--out", folder],
    ):
        result = _cli(*args)
        assert isinstance(result.exception, TunelabError), (args[:2], repr(result.exception))
        message = str(result.exception)
        assert f"{folder} is a folder" in message and "--out" in message and "\n" not in message, message
    assert list(folder.iterdir()) == []
