"""Every command's usage line and argument errors read as a new user expects: ``ALIAS RUN``, ``[CONFIG]``,
``[KEY=VALUE]...``.

typer 0.29 writes a required argument as ``{name}`` and an optional one as ``[name]`` in lower case
(``tunelab promote [OPTIONS] {alias} {run}``, ``tunelab run [OPTIONS] [CONFIG] [[KEY=VALUE]...]...``), and a
missing one as ``Missing argument 'config_path'.``, a Python parameter name. (A usage error is a ``TunelabError``
since: the CLI prints it as its one ``error:`` line, see test_usage_errors_one_line.py.)
"""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from tunelab.cli.main import _register_commands, app
from tunelab.errors import TunelabError


@pytest.fixture(scope="module", autouse=True)
def _commands():
    _register_commands()


def _cli(*args: str):
    return CliRunner().invoke(app, list(args), terminal_width=200)


def _commands_of(command, path: tuple[str, ...] = ()):
    for name, sub in getattr(command, "commands", {}).items():
        if hasattr(sub, "commands"):
            yield from _commands_of(sub, (*path, name))
        else:
            yield (*path, name)


def _usage(*path: str) -> str:
    result = _cli(*path, "--help")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "Usage:" in line)
    return line.split("[OPTIONS]", 1)[1].strip()


@pytest.mark.parametrize(
    ("path", "arguments"),
    [
        (("promote",), "ALIAS RUN"),
        (("rollback",), "ALIAS"),
        (("aliases",), "[ALIAS]"),
        (("show",), "RUN"),
        (("cancel",), "RUN"),
        (("export",), "RUN OUT"),
        (("generate",), "PROMPT"),
        (("compare",), "ITEMS..."),
        (("config",), "[SECTION]"),
        (("run",), "[CONFIG] [KEY=VALUE]..."),
        (("train",), "[CONFIG] [KEY=VALUE]..."),
        (("sweep",), "CONFIG [KEY=VALUE]..."),
        (("estimate",), "CONFIG [KEY=VALUE]..."),
        (("data", "split"), "CONFIG [KEY=VALUE]..."),
    ],
)
def test_usage_lines_name_arguments_in_capitals_without_braces(path, arguments):
    assert _usage(*path) == arguments


def test_no_usage_line_has_braces_doubled_brackets_or_lower_case_arguments():
    root = typer.main.get_command(app)
    commands = list(_commands_of(root))
    assert len(commands) > 25  # the walk reached every command
    wrong = []
    for path in commands:
        arguments = _usage(*path)
        if re.search(r"[{}]|\[\[|\]\.\.\.\]|[a-z]", arguments.replace("COMMAND [ARGS]...", "")):
            wrong.append(f"{' '.join(path)}: {arguments}")
    assert wrong == []


@pytest.mark.parametrize(
    ("args", "name"),
    [(["generate"], "PROMPT"), (["estimate"], "CONFIG"), (["report"], "RUN"), (["data", "check"], "PATH"), (["promote"], "ALIAS")],
)
def test_a_missing_argument_is_named_as_the_usage_line_names_it(args, name):
    result = _cli(*args)
    assert isinstance(result.exception, TunelabError), result.output
    assert f"missing argument '{name}'" in str(result.exception), result.exception


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["run", "config.yaml", "--epoch", "3"], "train.epochs=3"),
        (["train", "config.yaml", "--lr=1e-4"], "train.lr=1e-4"),
        (["sweep", "config.yaml", "--epochs"], "train.epochs=VALUE"),
        (["estimate", "config.yaml", "--seed", "1"], "data.seed=1 or train.seed=1 or eval.seed=1"),
    ],
)
def test_a_config_key_given_as_an_option_points_to_its_override(args, said):
    # `tunelab run config.yaml --epoch 3` said "No such option: --epoch" (sweep's even offered --search): a config key
    # is set as key=value after the config.
    result = _cli(*args)
    assert isinstance(result.exception, TunelabError), result.output
    message = str(result.exception)
    assert f"config keys are set as KEY=VALUE after the config: {said}" in message, message
    assert "--search" not in message


def test_an_unknown_option_of_a_command_without_overrides_gets_no_config_hint():
    result = _cli("show", "demo", "--epoch", "3")
    assert isinstance(result.exception, TunelabError), result.output
    assert "no such option: --epoch" in str(result.exception) and "KEY=VALUE" not in str(result.exception)


def test_no_flag_is_shown_as_taking_a_value():
    # typer 0.29 typed every flag in --help as `--json <bool>` (`--help <bool>`, `--version <bool>`), which reads as
    # `--json true`; a flag takes no value.
    root = typer.main.get_command(app)
    shown = [(), *(path for path in _commands_of(root)), ("data",), ("review",)]
    wrong = [" ".join(path) for path in shown if "<bool>" in _cli(*path, "--help").output]
    assert wrong == []
    assert re.search(r"--limit\s+<int", _cli("runs", "--help").output)  # an option that takes a value keeps its type
