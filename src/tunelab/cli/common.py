"""Shared CLI helpers: consoles and small renderers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from tunelab.errors import ConfigError, TunelabError
from tunelab.paths import check_output_folder

console = Console()
error_console = Console(stderr=True)


Section = TypeVar("Section", bound=BaseModel)


class _FlagsTakeNoValue:
    """typer 0.29 types every flag in --help (``--json <bool>``, ``--help <bool>``), which reads as ``--json true``;
    a flag's type column is left empty, as click's own help leaves it."""

    params: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            _untyped_flag(param)

    def get_help_option(self, ctx: Any) -> Any:
        return _untyped_flag(super().get_help_option(ctx))  # type: ignore[misc]

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)  # type: ignore[misc]
        except _click_exceptions().UsageError as error:
            # click's option parser raises some errors (`--limit` without its value) knowing no command: the line of
            # :func:`usage_error` names the command they came from.
            if error.ctx is None:
                error.ctx = ctx
            raise


def _untyped_flag(param: Any) -> Any:
    if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
        param.metavar = ""  # what --help shows as the option's type
    return param


class UsageGroup(_FlagsTakeNoValue, TyperGroup):
    """A command group (``tunelab``, ``tunelab data``) whose flags show no type (:class:`_FlagsTakeNoValue`) and whose
    usage errors, and those of every command under it, are one line (:func:`usage_error`).

    Parsing the group's own options happens in ``make_context``; finding its command and parsing that command's
    arguments (a group's under it too) in ``invoke``: between them they see every usage error of the CLI."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        with _one_line_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        with _one_line_usage_errors():
            return super().invoke(ctx)


class UsageCommand(_FlagsTakeNoValue, TyperCommand):
    """A command whose usage line names its arguments as click and man pages do: ``ALIAS RUN``, ``[CONFIG]``,
    ``ITEMS...``, ``[KEY=VALUE]...``.

    typer 0.29 writes a required argument ``{alias}`` and an optional one ``[alias]``, in the parameter's own lower
    case (``{config_path}``), and wraps a metavar that already says it repeats again (``[[KEY=VALUE]...]...``);
    its errors named the Python parameter (``Missing argument 'config_path'``). An argument without a metavar gets
    its name in capitals, so its help row and its errors say what the usage line says.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument) and param.metavar is None and param.name:
                param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if not isinstance(param, TyperArgument):
                pieces.extend(param.get_usage_pieces(ctx))
                continue
            name = param.metavar or (param.name or "").upper()
            # A metavar written whole ("[KEY=VALUE]...") is shown as written.
            if param.nargs != 1 and not name.endswith("..."):
                name += "..."
            if not param.required and not name.startswith("["):
                name = f"[{name}]"
            pieces.append(name)
        return pieces

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, list(args))
        except _click_exceptions().NoSuchOption as error:
            if any(param.name == "overrides" for param in self.params):
                keys = config_keys_like(error.option_name)
                if keys:
                    value = _option_value(error.option_name, args)
                    error.message += " (config keys are set as KEY=VALUE after the config: " + " or ".join(f"{key}={value}" for key in keys) + ")"
                    error.possibilities = None  # click's look-alike options (--epoch: --search) are not what was meant
            raise


def _click_exceptions() -> Any:
    """The exceptions module of the click that typer raises from."""
    try:  # typer's own copy of click (a private module: typer 0.29 vendors click) ...
        from typer._click import exceptions
    except ImportError:  # ... a typer that moves it or uses click itself must not break every command
        from click import exceptions
    return exceptions


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    exceptions = _click_exceptions()
    try:
        yield
    # A group run without a command (`tunelab review`) prints its help through this error: it stays as it is.
    except getattr(exceptions, "NoArgsIsHelpError", ()):
        raise
    except exceptions.UsageError as error:
        raise usage_error(error) from None


def usage_error(error: Any) -> TunelabError:
    """A click usage error (unknown option or command, missing or extra argument, a value of the wrong type) as the
    CLI's one error line: ``tunelab run: no such option: --bogus (tunelab run --help)``.

    typer printed the usage line, "Try 'tunelab run --help' for help." and the message in a box, unlike every other
    error of the CLI; click's message (with its "Did you mean" suggestions) is kept whole, on one line."""
    ctx = error.ctx
    message = " ".join(error.format_message().split()).removesuffix(".")
    if message[:1].isupper() and message[1:2].islower():  # "No such option" reads on in the line; "PROMPT ..." stays
        message = message[0].lower() + message[1:]
    if ctx is None:
        return TunelabError(message)
    where = f" ({ctx.command_path} {ctx.help_option_names[0]})" if ctx.command.get_help_option(ctx) is not None else ""
    # No hint: the CLI prints a hint on a line of its own, and a usage error is one line.
    return TunelabError(f"{ctx.command_path}: {message}{where}")


def config_keys_like(option: str, *, close: bool = True) -> list[str]:
    """The config keys a name without its section was likely meant as (``--epoch``: ``train.epochs``; ``seed``: each
    seed); ``close=False``: only keys of exactly that name."""
    import difflib

    from tunelab.config import field_docs

    name = option.split("=", 1)[0].lstrip("-").replace("-", "_")
    keys = [key for key, _, _ in field_docs()]
    leaves = list(dict.fromkeys(key.rsplit(".", 1)[-1] for key in keys))
    meant = [name] if name in leaves else difflib.get_close_matches(name, leaves, n=1, cutoff=0.8) if close else []
    return [key for key in keys if meant and key.rsplit(".", 1)[-1] == meant[0]]


def _option_value(option: str, args: list[str]) -> str:
    """The value typed with an unknown option (``--lr=1e-4``, ``--epoch 3``), else ``VALUE``."""
    for index, arg in enumerate(args):
        if arg == option and index + 1 < len(args) and not args[index + 1].startswith("-"):
            return args[index + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return "VALUE"


def use_usage_command(app: typer.Typer) -> None:
    """Make every command of ``app`` and of its groups a :class:`UsageCommand`, and each group a :class:`UsageGroup`
    (one place, not each ``app.command``)."""
    if not isinstance(app.info.cls, type) or app.info.cls is TyperGroup:  # typer's default is a placeholder
        app.info.cls = UsageGroup
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):  # typer's app.command fills in TyperCommand; a command's own class stays
            info.cls = UsageCommand
    for group in app.registered_groups:
        if group.typer_instance is not None:
            use_usage_command(group.typer_instance)


def config_from_options(section: type[Section], options: Mapping[str, str] | None = None, **values: Any) -> Section:
    """A config section built from command-line options; None is an option not given (the section's default).

    ``options`` names the option of a field spelled otherwise (``{"bootstrap_samples": "--samples"}``); by default
    a field ``max_length`` is the option ``--max-length``.

    Raises:
        ConfigError: naming each option out of range (``--max-length: ...``), not a pydantic traceback.
    """
    try:
        return section(**{key: value for key, value in values.items() if value is not None})
    except ValidationError as error:
        problems = []
        for item in error.errors():
            field = str(item["loc"][0]) if item["loc"] else ""
            option = (options or {}).get(field) or "--" + "-".join(str(part) for part in item["loc"]).replace("_", "-")
            if item["type"] == "value_error":  # a field's own check says what is wrong; its input may be a secret (a key)
                problems.append(f"{option}: {str(item['msg']).removeprefix('Value error, ')}")
            else:
                problems.append(f"{option}: {item['msg']} (got {item.get('input')!r})" if item["loc"] else str(item["msg"]))
        raise ConfigError("; ".join(problems)) from None


def check_output_file(path: Path | None, option: str = "--out") -> None:
    """Stop with one line before any work when an output file option names a folder or a place no file can be
    written (the write came last, as a traceback, after an evaluation had scored every example). None: not given.

    Raises:
        ConfigError: naming the option and the folder.
    """
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; {option} takes a file name", f"e.g. {option} {path / 'out.json'}")
    check_output_folder(path)


def print_json(data: Any, *, line: bool = False) -> None:
    """Print machine-readable JSON on stdout (no colours, stable key order).

    ``line``: one compact document on one line, flushed at once: a stream of them (a loop's checks) is JSON Lines
    that a pipe reads as each arrives; indented documents one after another are neither JSON nor JSON Lines."""
    if line:
        print(json.dumps(data, default=str), flush=True)
    else:
        print(json.dumps(data, indent=2, default=str))


def _clock(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%H:%M:%S", time.gmtime(max(0.0, seconds)))


class ProgressDisplay:
    """The CLI's one progress display, for every step that runs longer than a moment.

    The library reports, the CLI renders: pipeline events open and close a step's line (a spinner and
    its elapsed time), counts reported while it runs (test examples scored, teacher requests answered)
    fill a bar with the rate and the time left, and the training loop's ``Progress`` events show steps,
    loss, real tokens/s and ETA. The line goes when its step ends, so the step's ✓ line prints normally.
    Nothing is drawn when stderr is no terminal (rich's rule for live displays).
    """

    # Steps that open a line at their "start" event, with what the line says while they run.
    STEP_LINES = {
        "check": "check data",
        "estimate": "estimate: counting tokens, timing training steps here",
        "evaluate": "evaluate tuned model",
        "generation": "answer the SFT parent's test prompts",
        "report": "report: paired bootstrap against every baseline",
        "teacher": "teacher answers",
        "compare": "compare student and teacher",
    }

    def __init__(self, *, quiet: bool = False) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.quiet = quiet
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(bar_width=28), TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(), console=error_console, transient=True,
        )
        self.task: Any = None
        self.kind: str | None = None
        self.unit = "examples"
        self.started = 0.0
        self.live = False

    # -- a line ------------------------------------------------------------------------------
    def begin(self, description: str, *, total: int | None = None, unit: str = "examples", kind: str = "step") -> None:
        """Open the line of a step (closing the one before): a spinner, or a bar when ``total`` is known."""
        self.end()
        # No terminal (piped, a log file): nothing to redraw, and rich's Progress prints an empty line when it stops.
        if self.quiet or not self.progress.console.is_terminal:
            return
        if not self.live:
            self.progress.start()
            self.live = True
        self.kind, self.unit, self.started = kind, unit, time.perf_counter()
        self.task = self.progress.add_task(description, total=total, detail=f"0/{total:,} {unit}" if total else "")

    def advance(self, count: int = 1) -> None:
        """``count`` more items of the running step done (the library's progress callback)."""
        if self.task is None:
            return
        self.progress.advance(self.task, count)
        task = self.progress.tasks[-1]
        elapsed = time.perf_counter() - self.started
        rate = task.completed / elapsed if elapsed > 0 else 0.0
        left = (task.total - task.completed) / rate if task.total and rate > 0 else None
        total = f"/{int(task.total):,}" if task.total else ""
        self.progress.update(self.task, detail=f"{int(task.completed):,}{total} {self.unit}, {rate:.1f}/s, ETA {_clock(left)}")

    def expect(self, count: int) -> None:
        """``count`` more items of the running step to come (a library that learns its work as it goes: ``Meter.expect``)."""
        if self.task is None:
            return
        task = self.progress.tasks[-1]
        self.progress.update(self.task, total=(task.total or 0) + count)

    def end(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task, self.kind = None, None

    def stop(self) -> None:
        self.end()
        if self.live:
            self.progress.stop()
            self.live = False

    # -- fed by the library ------------------------------------------------------------------
    def on_event(self, step: str, status: str, details: dict[str, Any]) -> None:
        """A pipeline event (``tasks.pipeline.EventFn``): open or close the step's line."""
        if status == "start" and step in self.STEP_LINES:
            total = details.get("n") if step in ("evaluate", "generation") else details.get("inputs") if step == "teacher" else None
            self.begin(self.STEP_LINES[step], total=total, unit="requests" if step == "teacher" else "examples")
        elif status == "baseline start":
            total = details.get("n")
            self.begin(f"baseline {details.get('baseline')}", total=total)
        elif status in ("done", "skip", "baseline done") or (status == "start" and step not in self.STEP_LINES):
            self.end()

    def training(self, event: Any) -> None:
        """The training loop's ``Progress`` events: steps, loss, real tokens/s and ETA."""
        if self.quiet:
            return
        if self.kind != "train":
            self.begin("train", total=event.total_steps, unit="steps", kind="train")
        if self.task is None:
            return
        loss = "-" if event.loss is None else f"{event.loss:.4f}"
        self.progress.update(
            self.task, completed=event.step, total=event.total_steps,
            detail=f"{event.step}/{event.total_steps} steps, loss {loss}, {event.tokens_per_second:.0f} tok/s, ETA {_clock(event.eta_seconds)}",
        )
        if event.step >= (event.total_steps or 0):
            self.end()


@contextmanager
def cancel_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM (``kill``, a job scheduler, the UI's second Cancel) stops it as Ctrl-C does.

    Without a handler SIGTERM ends Python at once: the run's row said running until the next reader marked it
    interrupted, as if the machine had gone down. Raised as ``Cancelled`` (a KeyboardInterrupt) in the main thread,
    it is cleaned up after as Ctrl-C is and its row says cancelled by SIGTERM. Once only: a SIGTERM after the first,
    or after Ctrl-C, ends the process at once, as the UI's second Cancel means to.
    """
    import signal
    import threading

    import typer

    from tunelab.errors import Cancelled

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Cancelled("SIGTERM")

    def on_sigint(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, on_sigterm)
    # An ignored SIGINT (a UI started in the background) stays ignored; Ctrl-C's own handler is replaced by the same.
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    except Cancelled as cancelled:
        error_console.print(f"cancelled ({cancelled.signal_name})")
        raise typer.Exit(128 + signal.SIGTERM) from None  # as a shell reports a process SIGTERM ended
    except KeyboardInterrupt:
        # typer ends a KeyboardInterrupt with exit code 130 and not a word: say why the command stopped, as for SIGTERM.
        error_console.print("cancelled (Ctrl-C)")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)


@contextmanager
def progress_display(*, quiet: bool = False) -> Iterator[ProgressDisplay]:
    """The one progress display (``run``, ``sweep``, ``train``, ``distill``, ``eval``, ``estimate``, ``retrain``), stopped on the way out."""
    display = ProgressDisplay(quiet=quiet)
    try:
        yield display
    finally:
        display.stop()


@contextmanager
def train_progress_bar() -> Iterator[Callable[[Any], None]]:
    """The training bar of the one progress display, for commands that only train (``train``, ``retrain``)."""
    with progress_display() as display:
        yield display.training


def config_or_resume(config_path: Any, overrides: list[str] | None, resume: Any, command: str) -> Any:
    """The config of a pipeline command (``run``, ``distill``), or None when ``--resume`` continues a run folder.

    Raises:
        ConfigError: for a config or overrides beside --resume, or neither a config nor --resume.
    """
    from tunelab.config import load_config
    from tunelab.errors import ConfigError

    if resume is not None:
        if config_path is not None or overrides:
            raise ConfigError("--resume continues a run with its own config; give no config or overrides")
        return None
    if config_path is None:
        raise ConfigError(f"give a config file: tunelab {command} CONFIG.yaml [key=value ...]")
    config = load_config(config_path, overrides or [])
    show_overridden(config_path, overrides or [])
    return config


def show_overridden(config_path: Any, overrides: list[str]) -> None:
    """One line on stderr per key the config file set that an override changed, as the run starts: which value won
    (``train.lr: 0.001 (config.yaml) -> 0.002 (command line)``). Once in a launched group (its first process)."""
    import os

    from tunelab.config import overridden_keys

    if os.environ.get("RANK", "0") != "0":
        return
    for item in overridden_keys(config_path, overrides):
        error_console.print(
            f"{item.key}: {_plain(item.file_value)} ({config_path}) -> {_plain(item.value)} (command line)",
            markup=False, highlight=False, soft_wrap=True,
        )


def _plain(value: Any) -> str:
    # As YAML writes it (a list [a, b], null), not Python's repr (['a', 'b'], None).
    return json.dumps(value, default=str) if not isinstance(value, str) else value


def group_rich_table(comparison: Any) -> Any:
    """The tuned model against the opponent the verdict names, one row per group of the test set (``data.group_field``),
    from a verdict as saved (``Verdict.to_dict``, the registry's ``comparison``); None without groups."""
    from rich.table import Table

    groups = comparison.get("groups") if isinstance(comparison, dict) else None
    if not groups:
        return None

    def number(value: float | None, sign: str = "") -> str:
        return "-" if value is None else f"{value:{sign}.4g}"

    first = groups[0]
    table = Table(title=f"{first.get('metric')} by group: tuned against {first.get('opponent')}")
    for column in ("group", "n", "tuned", str(first.get("opponent")), "difference", "95% CI", "outcome"):
        table.add_column(column, justify="left" if column in ("group", "outcome") else "right")
    colours = {"better": "green", "worse": "red"}
    for group in groups:
        interval = "-" if group.get("low") is None else f"[{group['low']:+.4g}, {group['high']:+.4g}]"
        outcome = str(group.get("outcome"))
        table.add_row(escape(str(group.get("group"))), str(group.get("n")), number(group.get("tuned")), number(group.get("opponent_value")),
                      number(group.get("difference"), "+"), interval, f"[{colours[outcome]}]{outcome}[/]" if outcome in colours else outcome)
    return table


def print_group_lines(comparison: Any) -> None:
    """Under a verdict (as saved, ``Verdict.to_dict``): its table by group and one red line for each group the tuned model
    is significantly worse on (``tunelab eval``, ``run``, ``report`` and ``show``): a verdict that paid off on average
    does not hide them."""
    groups = group_rich_table(comparison)
    if groups is not None:
        console.print(groups)
    for line in (comparison.get("group_lines") if isinstance(comparison, dict) else None) or ():
        console.print(f"[red]{escape(line)}[/red]")


def verdict_rich_table(comparison: Any, *, tuned: str = "tuned") -> Any:
    """The tuned model against every baseline, from a verdict as saved (``Verdict.to_dict``, the registry's
    ``comparison``): one column per baseline, each cell its value and the tuned model's difference with the 95%
    interval, green where the tuned model is significantly better, red where the baseline is. None without one."""
    from rich.table import Table

    from tunelab.ui.views import verdict_table

    names, lines = verdict_table(comparison if isinstance(comparison, dict) else None)
    if not lines:
        return None

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4g}"

    def signed(value: float | None) -> str:
        return "-" if value is None else f"{value:+.3g}"

    table = Table(title=f"{tuned} against {len(names)} baseline(s) on {comparison.get('n')} test examples (strongest: {comparison.get('strongest')})")
    table.add_column("metric")
    table.add_column("tuned", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    colours = {"better": "green", "worse": "red"}
    for line in lines:
        cells = []
        for cell in line.cells:
            text = f"{number(cell['value'])} (tuned {signed(cell['difference'])} [{signed(cell['low'])}, {signed(cell['high'])}])"
            if cell["not_compared"]:  # the baseline has no value of it (a preference run's reference)
                text = f"{cell['outcome']}: {cell['not_compared']}"
            if cell["missing"]:  # a metric only other comparisons have (out of scope, where this baseline was not thresholded)
                text = "n/a"
            # kind, not outcome: under MIN_TEST_EXAMPLES it is "too-few", never coloured as a win or a loss
            cells.append(f"[{colours[cell['kind']]}]{text}[/]" if cell["kind"] in colours else text)
        table.add_row(f"[bold]{line.name}[/bold]" if line.primary else line.name, number(line.tuned), *cells)
    return table
