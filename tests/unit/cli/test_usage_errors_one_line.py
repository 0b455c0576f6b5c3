"""A usage error of any command (unknown option or command, missing or extra argument, a value of the wrong type) is
one ``error:`` line on stderr naming the command, the problem and where to get help, with click's exit code 2.

typer printed the usage line, a "Try '... --help'" line and the message in a three-line box (wrapped inside the box
on a narrow terminal), unlike every other error of the CLI. Each case runs the real entry point in a fresh interpreter,
so what is checked is exactly what a user's terminal shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[3] / "src"


def _tunelab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # COLUMNS=60: typer's error box wrapped a long message over several lines; one line must stay one line.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), HF_HUB_OFFLINE="1", COLUMNS="60")
    return subprocess.run([sys.executable, "-m", "tunelab.cli.main", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["run", "--bogus"], [" run: ", "no such option", "--bogus", "run --help)"]),
        (["--bogus"], ["no such option", "--bogus", "main --help)"]),
        (["runz"], ["no such command 'runz'", "Did you mean 'run', 'runs'?", "main --help)"]),
        (["generate"], [" generate: ", "missing argument 'PROMPT'", "generate --help)"]),
        (["serve", "--port", "abc"], [" serve: ", "invalid value for '--port'", "serve --help)"]),
        (["show", "demo", "extra"], [" show: ", "unexpected extra argument", "(extra)", "show --help)"]),
        (["review", "bogus"], [" review: ", "no such command 'bogus'", "review --help)"]),
        (["ui", "--bogus"], [" ui: ", "no such option", "--bogus", "ui --help)"]),
        # click's parser raises this one without the command it parsed: the line still names it.
        (["runs", "--limit"], [" runs: ", "option '--limit' requires an argument", "runs --help)"]),
        (["run", "config.yaml", "--epoch", "3"], [" run: ", "--epoch", "config keys are set as KEY=VALUE after the config: train.epochs=3"]),
    ],
    ids=["unknown-option", "root-unknown-option", "unknown-command", "missing-argument", "bad-value", "extra-argument",
         "group-unknown-command", "ui-unknown-option", "option-without-value", "config-key-as-option"],
)
def test_a_usage_error_is_one_line_naming_the_command_and_the_problem(args, named, tmp_path):
    result = _tunelab(*args, cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: ") and "Usage:" not in line and "Try '" not in line, line
    for text in named:
        assert text in line, (text, line)
    assert result.stdout == ""


def test_a_group_without_a_command_still_shows_its_help(tmp_path):
    # Not a usage error to rewrite: a bare group (`tunelab review`) prints its help, as it did.
    result = _tunelab("review", cwd=tmp_path)
    assert "Usage:" in result.stdout and "export" in result.stdout, result.stdout
    assert "error:" not in result.stderr, result.stderr
