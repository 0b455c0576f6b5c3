"""A new user's mistakes on the command line: each is one line and exit code 2 (a TunelabError), never a traceback."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunelab.cli.main import _register_commands, app
from tunelab.errors import TunelabError
from tunelab.evaluation.result import EvalResult
from tunelab.registry import Registry


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


def test_a_registry_folder_is_an_error_not_an_empty_registry(tmp_path):
    # `--registry runs` (the folder, not runs/registry.db) listed "no runs recorded" with exit 0, and `show` said to
    # run `tunelab run` first, although the folder's registry held runs.
    Registry(tmp_path / "registry.db").create_run(name="demo", task="classify", status="finished")
    for args in (["runs"], ["runs", "--json"], ["show", "demo"], ["compare", "demo", "demo"], ["aliases"]):
        result = _cli(*args, "--registry", tmp_path)
        assert isinstance(result.exception, TunelabError), (args, result.output, repr(result.exception))
        assert f"{tmp_path} is a folder" in str(result.exception) and str(tmp_path / "registry.db") in str(result.exception), args


def test_aliases_of_a_missing_registry_or_alias_say_so(tmp_path):
    # `tunelab aliases` printed nothing at all (exit 0) for a registry without aliases or an alias never set, and
    # created the registry file (and its folders) it was asked to read.
    missing = tmp_path / "nowhere" / "registry.db"
    result = _cli("aliases", "--registry", missing)
    assert isinstance(result.exception, TunelabError) and "no run registry" in str(result.exception), repr(result.exception)
    assert not missing.parent.exists()
    registry = Registry(tmp_path / "registry.db")
    registry.create_run(name="demo", task="classify", status="finished")
    empty = _cli("aliases", "--registry", registry.path)
    assert empty.exit_code == 0 and "no aliases" in empty.output, empty.output
    assert json.loads(_cli("aliases", "--registry", registry.path, "--json").output) == {}
    unknown = _cli("aliases", "prod", "--registry", registry.path)
    assert isinstance(unknown.exception, TunelabError) and "no alias 'prod'" in str(unknown.exception), repr(unknown.exception)
    # A run with no run folder is one no server could follow the alias to: refused (it was promoted before).
    refused = _cli("promote", "prod", "demo", "--registry", registry.path)
    assert isinstance(refused.exception, TunelabError) and "run demo" in str(refused.exception), repr(refused.exception)
    registry.set_alias("prod", "demo")
    history = _cli("aliases", "prod", "--registry", registry.path)
    assert history.exit_code == 0 and "promote" in history.output, history.output


@pytest.mark.parametrize("args", [("promote", "prod", "demo"), ("rollback", "prod"), ("retrain", "alias:prod", "--data", "new.jsonl")])
def test_promote_and_rollback_of_a_missing_registry_say_so_and_create_nothing(tmp_path, args):
    # A mistyped --registry made an empty registry file (and its folders), then failed with "no run 'demo'".
    missing = tmp_path / "nowhere" / "registry.db"
    result = _cli(*args, "--registry", missing)
    assert isinstance(result.exception, TunelabError), (result.output, repr(result.exception))
    assert f"no run registry at {missing}" in str(result.exception), repr(result.exception)
    assert not missing.parent.exists()


def test_runs_keeps_whole_run_names_at_80_columns(tmp_path, monkeypatch):
    # Piped (or in an 80-column terminal) the name column was cut to "classify…": the one thing `tunelab show` needs.
    from tunelab.cli.common import console

    monkeypatch.setattr(console, "width", 80)
    registry = Registry(tmp_path / "registry.db")
    names = ["classify-default-20261204-195653", "café-日本-sft-lora-r16-long-name"]
    for name in names:
        registry.create_run(name=name, task="classify", model="/some/where/models/SmolLM2-135M-Instruct", status="finished",
                            comparison={"verdict": "no significant difference"})
    result = _cli("runs", "--registry", registry.path)
    assert result.exit_code == 0, result.output
    first_column = "".join(line.split("│")[1].strip() for line in result.output.splitlines() if line.startswith("│"))
    for name in names:
        assert name in first_column, (name, result.output)
    # The model, never cut either: at 80 columns its column is left out, and said so (`tunelab show` and --json give it).
    assert "…" not in result.output and "model" in next(line for line in result.output.splitlines() if "not shown" in line)


def test_a_step_without_a_start_event_shows_no_negative_time():
    # `tunelab run` printed "✓ register (-0.0 s)": the register step sends no start event.
    from tunelab.cli.common import error_console
    from tunelab.cli.run import _event_printer

    with error_console.capture() as captured:
        _event_printer(quiet=False)("register", "done", {"id": "abc", "registry": "runs/registry.db"})
    assert "register" in captured.get() and "-0.0" not in captured.get(), captured.get()


def test_progress_lines_leave_no_blank_lines_when_stderr_is_no_terminal(monkeypatch):
    # Piped or logged (`tunelab run ... 2>run.log`), each step's progress line left an empty line behind (rich's
    # Progress prints one on stop when the console is no terminal): "… base", "", "– base skipped".
    import io

    from rich.console import Console

    from tunelab.cli import common, run

    out = io.StringIO()
    logged = Console(file=out, force_terminal=False, width=100)
    monkeypatch.setattr(common, "error_console", logged)
    monkeypatch.setattr(run, "error_console", logged)
    with common.progress_display() as display:
        events = run.shown_events(display, quiet=False)
        events("baseline", "start", {})
        events("baseline", "baseline start", {"baseline": "base", "n": 8})
        events("baseline", "baseline progress", {"baseline": "base", "done": 4, "total": 8})
        display.advance(4)
        events("baseline", "baseline skipped", {"baseline": "base", "reason": "it cannot win"})
        events("baseline", "done", {})
    lines = out.getvalue().splitlines()
    assert lines and all(line.strip() for line in lines), lines


def _one_line_error(result, *named: str) -> str:
    """The TunelabError a command stopped on (exit code 2 from main), one line, naming each of ``named``."""
    assert isinstance(result.exception, TunelabError), (result.output, repr(result.exception))
    message = str(result.exception)
    assert all(part in message for part in named) and "\n" not in message, message
    return message


def test_a_folder_given_as_the_config_says_it_is_a_folder(tmp_path):
    # `tunelab run /tmp` said "config file not found: /tmp" about a folder that is there.
    message = _one_line_error(_cli("run", tmp_path), f"{tmp_path} is a folder, not a config file")
    assert "not found" not in message


def test_a_file_that_is_no_model_says_so_not_that_it_is_missing(tmp_path):
    # `tunelab generate --model train.jsonl` said "model path not found" about a file that is there.
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"text": "a", "label": "b"}) + "\n")
    message = _one_line_error(_cli("generate", "--model", data, "hello"), f"{data} is a file but not a model")
    assert "not found" not in message


def test_a_run_folder_that_is_not_there_is_named_as_missing(tmp_path):
    # `run --resume runs/nope` said the folder "has no pipeline.json"; `report nope` said to evaluate the run first.
    # `distill --resume` shared the first.
    missing = tmp_path / "runs" / "nope"
    for args in (["run", "--resume", missing], ["distill", "--resume", missing], ["report", missing]):
        message = _one_line_error(_cli(*args), f"no run folder {missing}")
        assert "pipeline.json" not in message and "distill_config" not in message and "evaluate" not in message, (args, message)
    assert not missing.exists()


def test_runs_refuses_a_limit_below_one(tmp_path):
    # `tunelab runs --limit -1` (and 0) listed every run.
    registry = Registry(tmp_path / "registry.db")
    registry.create_run(name="demo", task="classify", status="finished")
    for limit in ("0", "-1"):
        result = _cli("runs", "--limit", limit, "--registry", registry.path)
        _one_line_error(result, "--limit")
        assert "demo" not in result.output, result.output


def test_runs_refuses_an_unknown_task(tmp_path):
    # `tunelab runs --task clasify` said "no runs recorded", as if the registry were empty; --status was checked already.
    registry = Registry(tmp_path / "registry.db")
    registry.create_run(name="demo", task="classify", status="finished")
    result = _cli("runs", "--task", "clasify", "--registry", registry.path)
    assert isinstance(result.exception, TunelabError) and result.exception.exit_code == 2, result.output
    assert "clasify" in result.exception.message and "classify" in (result.exception.hint or "")
    assert "demo" in _cli("runs", "--task", "classify", "--registry", registry.path).output


def test_show_lists_the_run_folder_once(tmp_path, monkeypatch):
    # A finished run's artifacts repeat its run_dir: `tunelab show` printed both "run dir" and "run_dir".
    from tunelab.cli.common import console

    monkeypatch.setattr(console, "width", 250)
    registry = Registry(tmp_path / "registry.db")
    folder = str(tmp_path / "runs" / "demo")
    registry.create_run(name="demo", task="classify", status="finished", run_dir=folder, artifacts={"run_dir": folder, "report_md": "r.md"})
    result = _cli("show", "demo", "--registry", registry.path)
    assert result.exit_code == 0, result.output
    assert result.output.count(folder) == 1 and "run_dir" not in result.output and "report md" in result.output, result.output


def test_distill_without_a_teacher_is_refused_before_anything_is_written(tmp_path):
    # The data was split and runs/<name>/distill_config.json written before "distill.teacher is required".
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": "a"}) + "\n" for i in range(10)))
    config = tmp_path / "config.yaml"
    config.write_text(f"task: sft\nname: student\ndata:\n  train: {data.name}\ntrain:\n  output_dir: {tmp_path / 'runs'}\n")
    _one_line_error(_cli("distill", config), "distill.teacher is required")
    assert not (tmp_path / "runs").exists()


def test_python_dash_m_tunelab_is_the_cli():
    """`accelerate launch -m tunelab train CONFIG` and `python -m tunelab` run the same CLI as the `tunelab` command."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tunelab", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tunelab" in done.stdout and "train" in done.stdout


@pytest.mark.parametrize("command", ["run", "train", "distill"])
def test_a_key_the_config_and_an_override_both_set_says_which_won(tmp_path, command):
    # `tunelab run config.yaml train.lr=0.002` over a file's `lr: 0.001` trained at 0.002 without a word about it.
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"task: sft\ndata:\n  train: {tmp_path / 'missing.jsonl'}\ntrain:\n  lr: 0.001\n  epochs: 2\n"
                   f"  output_dir: {tmp_path / 'runs'}\n")
    result = _cli(command, cfg, "train.lr=0.002", "train.batch_size=2")
    assert isinstance(result.exception, TunelabError), result.output  # the missing data, after the config was read
    lines = [line for line in result.output.splitlines() if "(command line)" in line]
    assert lines == [f"train.lr: 0.001 ({cfg}) -> 0.002 (command line)"], result.output


def test_review_export_of_a_run_folder_that_is_not_there_names_it_and_creates_nothing(tmp_path):
    # `tunelab review export nope` made an empty folder nope/ (for its default sheet) and then said
    # "evaluation file not found: nope/eval/base.json", as if the run were there without its evaluation.
    missing = tmp_path / "nope"
    message = _one_line_error(_cli("review", "export", missing), f"no run folder {missing}")
    assert "eval" not in message
    assert not missing.exists()


def test_a_rescored_baseline_is_said_in_the_run_output():
    # After an upgrade that changes how baselines prompt or score, `tunelab run` rescored a cached baseline without a word.
    from tunelab.cli.common import error_console
    from tunelab.cli.run import _event_printer

    with error_console.capture() as captured:
        _event_printer(quiet=False)("baseline", "baseline rescore", {
            "baseline": "few_shot", "cached_from": "runs/x/baselines/few_shot-1.json", "reason": "scored by another tunelab version"})
    assert "few_shot" in captured.get() and "rescor" in captured.get() and "another tunelab version" in captured.get(), captured.get()


def test_a_data_line_is_indented_as_the_warnings_and_a_bare_step_ends_without_a_space():
    # `tunelab run` on grouped data printed "   data: 3 groups (country): ..." one column to the right of the
    # "  warning split: ..." lines (an empty status still took its place), and "  ✓ check data (0.0 s) " with a
    # trailing space when the step has nothing to summarize.
    from tunelab.cli.common import error_console
    from tunelab.cli.run import _event_printer

    printer = _event_printer(quiet=False)
    with error_console.capture() as captured:
        printer("check", "start", {})
        printer("check", "event", {"message": "data: 3 groups (country): 'DE' 77, 'FR' 77, 'IT' 35 records"})
        printer("check", "warn", {"message": "split: something"})
        printer("check", "done", {})
    lines = captured.get().splitlines()
    assert lines[1].startswith("  data: "), lines
    assert lines[2].startswith("  warning "), lines
    assert lines[3] == lines[3].rstrip(), lines
