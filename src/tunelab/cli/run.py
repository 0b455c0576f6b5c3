"""``tunelab run`` (the whole lifecycle from one config), ``tunelab cancel`` (a cloud run's job at the provider) and
``tunelab sweep`` (variants + leaderboard)."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from tunelab.cli.common import (
    cancel_on_sigterm,
    config_or_resume,
    console,
    error_console,
    print_json,
    progress_display,
)
from tunelab.estimate.plan import duration, money

STEP_TITLES = {
    "check": "check data",
    "split": "split",
    "estimate": "estimate",
    "baseline": "evaluate baselines",
    "train": "train",
    "evaluate": "evaluate tuned model",
    "generation": "answer the SFT parent's test prompts",
    "report": "report",
    "register": "register",
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"
    return "-" if value is None else str(value)


def _eta(seconds: float | None) -> str:
    return "-" if seconds is None else duration(seconds)


def _event_printer(quiet: bool):
    started: dict[str, float] = {}
    # One transient bar per baseline while it runs: what it has done of what it expects, and its ETA.
    bar: dict[str, Any] = {"progress": None, "task": None}

    def stop_bar() -> None:
        if bar["progress"] is not None:
            bar["progress"].stop()
            bar["progress"] = bar["task"] = None

    def show_progress(details: dict[str, Any]) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        if bar["progress"] is None:
            bar["progress"] = Progress(
                TextColumn("    {task.fields[name]}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn(), console=error_console, transient=True,
            )
            bar["progress"].start()
            bar["task"] = bar["progress"].add_task("baseline", total=max(1, details.get("total") or 1), name=details.get("baseline"), eta="-")
        bar["progress"].update(bar["task"], completed=details.get("done", 0), total=max(1, details.get("total") or 1),
                               name=details.get("baseline"), eta=_eta(details.get("eta_s")))

    def on_event(step: str, status: str, details: dict[str, Any]) -> None:
        if quiet:
            return
        title = STEP_TITLES.get(step, step)
        if status == "baseline progress":
            if error_console.is_terminal:  # no terminal: nothing to redraw (and a stopped bar leaves an empty line)
                show_progress(details)
            return
        stop_bar()
        if status == "start":
            started[step] = time.perf_counter()
            if step == "variant":
                # Taken up from an interrupted sweep: a finished run is read back, a stopped one goes on from its checkpoint.
                continues = details.get("continues")
                again = "" if not continues else " (finished earlier: reused)" if continues == "finished" else " (stopped earlier: continued)"
                error_console.rule(f"variant {details.get('name')}: {' '.join(details.get('overrides', []))}{again}")
            else:
                error_console.print(f"[bold cyan]▶ {title}[/]")
        elif status == "baseline start":
            error_console.print(f"  [dim]… {details.get('baseline')}[/]")
        elif status == "baseline rescore":
            error_console.print(f"  [yellow]↻ {details.get('baseline')} rescored:[/] {details.get('reason')} ({details.get('cached_from', '')})")
        elif status == "baseline skipped":
            error_console.print(f"  [yellow]– {details.get('baseline')} skipped:[/] {details.get('reason')}")
        elif status == "event":  # a cloud fine-tuning job's events as the provider sends them; how the data was read
            # Without a provider's status (how the data was read) the message takes its place: aligned with the warnings.
            status_text = f"[dim]{details['status']}[/] " if details.get("status") else ""
            error_console.print(f"  {status_text}{details.get('message')}")
        elif status == "warn":
            error_console.print(f"  [yellow]warning[/] {details.get('message')}")
        elif status == "skip":
            which = f" {details['baseline']}" if details.get("baseline") else ""
            error_console.print(f"  [dim]{title}{which}: reused cached result {details.get('cached_from', '')}[/]")
        elif status == "done":
            # A step that sent no start event (register) has no time to show: it read "(-0.0 s)".
            elapsed = f"[dim]({time.perf_counter() - started[step]:.1f} s)[/] " if step in started else ""
            summary = _step_summary(step, details)
            # A step with nothing to summarize (check data) ends at its time, with no trailing space.
            error_console.print(f"  [green]✓[/] {title} {elapsed}{summary}".rstrip())

    return on_event


def shown_events(display: Any, quiet: bool):
    """Pipeline events to the progress display (a step's running line) and to the printed ✓ lines."""
    printer = _event_printer(quiet)

    def on_event(step: str, status: str, details: dict[str, Any]) -> None:
        display.on_event(step, status, details)
        printer(step, status, details)

    return on_event


def _remote_baselines_said(estimate: dict[str, Any]) -> str:
    """What the remote baselines will cost, said before the first request is sent (an unknown price as unknown)."""
    from tunelab.estimate.summary import remote_price

    return "".join(f"; baseline {remote_price(name, priced)}" for name, priced in (estimate.get("remote_baselines") or {}).items())


def _step_summary(step: str, details: dict[str, Any]) -> str:
    if step == "split":
        sizes = details.get("sizes", {})
        return ", ".join(f"{k} {v}" for k, v in sizes.items())
    if step == "estimate":
        estimate = details.get("estimate") or {}
        seconds = estimate.get("total_seconds")
        tokens = (estimate.get("tokens") or {}).get("train_tokens")
        # The machine's state decides the time here: "2 cores, 1 busy, 1 thread: about 9.5 min".
        here = estimate.get("here")
        if estimate.get("backend") == "openai":  # a provider trains it: its price, never a time "on this machine"
            usd = estimate.get("usd")
            price = money(usd) if isinstance(usd, int | float) else "price unknown"
            return f"the provider's fine-tuning: {price}, {estimate.get('training_tokens', 0):,} training tokens" + _remote_baselines_said(estimate)
        if seconds is None:  # not timed (--no-calibrate): no "about -"
            where = "time here not measured (no calibration)"
        else:
            where = f"{here}: about {duration(seconds)}" if here else f"about {duration(seconds)} on this machine"
        # What the time priced that may not run (a baseline eval.skip_hopeless may skip), as `tunelab estimate` notes it.
        notes = "".join(f"; {note}" for note in estimate.get("notes") or [])
        return where + (f", {tokens:,} training tokens" if tokens else "") + _remote_baselines_said(estimate) + notes
    if step == "baseline" and (details.get("baselines") or details.get("skipped")):
        shown = []
        for name, metrics in (details.get("baselines") or {}).items():
            primary = metrics.get("primary")
            shown.append(f"{name} {primary} = {_fmt(metrics.get(primary))}")
        shown += [f"{name} skipped" for name in details.get("skipped") or {}]
        return "; ".join(shown)
    if step in ("baseline", "evaluate"):
        metrics = details.get("metrics") or {}
        primary = metrics.get("primary")
        return f"{primary} = {_fmt(metrics.get(primary))}" if primary else ""
    if step == "train":
        result = details.get("result") or {}
        return f"{result.get('steps')} steps, loss {_fmt(result.get('final_loss'))}, {result.get('tokens_per_second', 0):.0f} tokens/s ({result.get('precision')})"
    if step == "generation":
        return f"{details.get('summary', '')}; blind A/B sheet {details.get('sheet', '')}"
    if step == "report":
        return str((details.get("files") or {}).get("markdown", ""))
    if step == "register":
        return f"id {details.get('id')} in {details.get('registry')}"
    return ""


def render_outcome(outcome: Any) -> None:
    from tunelab.cli.evaluate import print_verdict
    from tunelab.evaluation.report import calibration_line

    if outcome.comparison is not None:
        print_verdict(outcome.comparison)
    else:
        console.print(f"tuned: {outcome.tuned_metrics}")
        for name, reason in outcome.baseline_skipped.items():
            console.print(f"[yellow]{name} skipped:[/yellow] {reason}")
    calibration = calibration_line(outcome.run_dir)
    if calibration:
        console.print(calibration, markup=False, highlight=False)
    estimated = (outcome.estimate or {}).get("seconds") or {}
    if outcome.train and estimated.get("train"):
        actual = outcome.train.get("seconds")
        console.print(f"training time: estimated {duration(estimated['train'])}, actual {duration(actual)}")
    if outcome.generation:
        console.print(f"against the SFT parent on its test prompts: {outcome.generation['summary']}")
        console.print(f"blind A/B sheet for people: {outcome.generation['sheet']} (then `tunelab review score {outcome.generation['sheet']}`)")
    console.print(f"run folder: {outcome.run_dir}   report: {outcome.report.get('html', '-')}")


def run(
    config_path: Path = typer.Argument(None, metavar="CONFIG", help="Run config (YAML). Not needed with --resume."),
    overrides: list[str] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Dotted overrides, e.g. train.lr=3e-4."),
    resume: Path = typer.Option(None, "--resume", help="Continue an interrupted run folder at the step it stopped in."),
    no_calibrate: bool = typer.Option(False, "--no-calibrate", help="Skip the measured steps of the time estimate."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
    launch: str = typer.Option(
        None, "--launch", metavar="OPTIONS",
        help='Train on several processes/machines: accelerate launch options, e.g. "--num_processes 8" (DDP) or '
        '"--use_fsdp --fsdp_version 2 --num_processes 8". The other steps run in this process.',
    ),
) -> None:
    """Check data, split, estimate, evaluate the base model, train, evaluate again, report, register."""
    from tunelab.tasks.pipeline import run_pipeline

    config = config_or_resume(config_path, overrides, resume, "run")
    with progress_display(quiet=as_json) as display, cancel_on_sigterm():
        outcome = run_pipeline(
            config, resume=resume, on_event=shown_events(display, as_json), train_progress=display.training,
            eval_progress=display.advance, calibrate=not no_calibrate,
            launch=launch,
        )
    if as_json:
        print_json({
            "name": outcome.name, "run_dir": str(outcome.run_dir), "registry_id": outcome.registry_id,
            "split": outcome.split_sizes, "estimate": outcome.estimate, "train": outcome.train,
            "base": outcome.base_metrics, "baselines": outcome.baseline_metrics, "baselines_skipped": outcome.baseline_skipped,
            "tuned": outcome.tuned_metrics,
            "comparison": outcome.comparison.to_dict() if outcome.comparison else None,
            "report": outcome.report, "timings": outcome.timings, "warnings": outcome.warnings, "generation": outcome.generation,
            "suspect_labels": outcome.suspect_labels,
        })
        return
    render_outcome(outcome)


def cancel(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="The run folder of a train.backend: openai run."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
) -> None:
    """Cancel the provider's fine-tuning job of a cloud run (train.backend: openai): it stops training, and billing.

    Ctrl-C stops tunelab, not the job at the provider. A cancelled job is never started again by `tunelab run --resume`.
    """
    from tunelab.tasks.pipeline import cancel_cloud_run

    result = cancel_cloud_run(run_dir)
    if as_json:
        print_json(result.as_dict())
        return
    console.print(result.summary, markup=False, highlight=False)
    for warning in result.warnings:
        error_console.print("[yellow]warning[/] " + escape(warning))


def sweep(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="Base run config (YAML)."),
    overrides: list[str] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Overrides applied to every variant."),
    grid: list[str] = typer.Option(..., "--grid", help="KEY=V1,V2 (repeatable): every combination is run."),
    metric: str = typer.Option(None, "--metric", help="The test metric shown (default: the task's primary); variants are ranked on validation, on it only without validation rows."),
    as_json: bool = typer.Option(False, "--json", help="Print the leaderboard as JSON."),
    engine: str = typer.Option("local", "--engine", help="local: one variant after another here; ray: Ray Tune trials (pip install 'tunelab\\[ray]')."),
    address: str = typer.Option(None, "--address", help="ray: the cluster (auto, ray://HOST:10001); default: a Ray started here."),
    search: str = typer.Option("grid", "--search", help="ray: grid (every combination) or optuna (draws over the grid's ranges)."),
    trials: int = typer.Option(None, "--trials", help="ray with --search optuna: how many variants to try."),
    asha: bool = typer.Option(False, "--asha", help="ray: stop trials whose validation loss lags (ASHA)."),
    cpus_per_trial: int = typer.Option(1, "--cpus-per-trial", help="ray: CPUs (and torch threads) of each trial."),
    gpus_per_trial: float = typer.Option(0.0, "--gpus-per-trial", help="ray: GPUs of each trial."),
    max_hours: float = typer.Option(None, "--max-hours", help="ray: start no trial after this many hours."),
    max_usd: float = typer.Option(None, "--max-usd", help="ray: the same in dollars, at budget.gpu's price (or --usd-per-hour)."),
    usd_per_hour: float = typer.Option(None, "--usd-per-hour", help="ray: the hourly price of the resources the trials use."),
    name: str = typer.Option(None, "--name", help="ray: the sweep's name; run the same command again to continue it after a crash."),
) -> None:
    """Run every combination of --grid values (models, parameters, datasets) and rank the results."""
    from tunelab.tasks.sweep import leaderboard, run_sweep

    if engine == "ray":
        from tunelab.tasks.ray_sweep import RaySweepSettings, run_ray_sweep

        settings = RaySweepSettings(
            address=address, search=search, trials=trials, asha=asha, cpus_per_trial=cpus_per_trial,
            gpus_per_trial=gpus_per_trial, max_hours=max_hours, max_usd=max_usd, usd_per_hour=usd_per_hour, name=name,
            metric=metric,
        )
        # Ray Tune prints its experiment's header and folders on stdout: stdout is the leaderboard's (--json is parsed).
        with contextlib.redirect_stdout(sys.stderr):
            result = run_ray_sweep(config_path, overrides or [], grid, settings)
        rows = result.rows
        if not as_json:
            error_console.print(f"sweep {result.name}{' (continued)' if result.restored else ''}: {result.path}")
    elif engine == "local":
        # Silently dropped, --name would seem to name a sweep to continue (the same command continues it), --max-hours never stop one.
        ray_only = {"--address": address, "--search": search != "grid", "--trials": trials, "--asha": asha,
                    "--cpus-per-trial": cpus_per_trial != 1, "--gpus-per-trial": gpus_per_trial, "--max-hours": max_hours,
                    "--max-usd": max_usd, "--usd-per-hour": usd_per_hour, "--name": name}
        given = [option for option, value in ray_only.items() if value not in (None, False, 0)]
        if given:
            from tunelab.errors import ConfigError

            raise ConfigError(f"{', '.join(given)} apply to the Ray engine only", "add --engine ray, or leave them out")
        with progress_display(quiet=as_json) as display, cancel_on_sigterm():
            entries = run_sweep(config_path, overrides or [], grid, on_event=shown_events(display, as_json), train_progress=display.training,
                                eval_progress=display.advance, metric=metric)
        rows = leaderboard(entries, metric)
    else:
        from tunelab.errors import ConfigError

        raise ConfigError(f"--engine {engine!r} is not an engine", "use local or ray")
    if as_json:
        print_json(rows)
        return
    ranked_by = next((row["ranked_by"] for row in rows if row.get("ranked_by")), None)
    table = Table(title=f"sweep leaderboard (best first by {ranked_by}; the metric on test)" if ranked_by else "sweep leaderboard")
    for column in ("#", "variant", "ranked by", "metric", "strongest baseline", "tuned", "difference [95% interval]", "verdict"):
        table.add_column(column)
    for rank, row in enumerate(rows, 1):
        if row.get("after") is None:
            table.add_row(str(rank), row["overrides"], "-", "-", "-", "-", "-", f"[red]failed: {row.get('error')}[/]")
            continue
        table.add_row(str(rank), row["overrides"], _fmt(row["rank_value"]), row["metric"], f"{row.get('opponent')} {_fmt(row['before'])}",
                      _fmt(row["after"]), f"{row['difference']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}]", row["verdict"])
    console.print(table)
    best = rows[0] if rows and rows[0].get("after") is not None and rows[0].get("name") else None
    if best is not None:  # the run's name is what `promote`, `show` and `serve` take: a Ray trial's is not guessable
        console.print(f"best: {best['name']} ({best['overrides']}); serve it through an alias with "
                      f"`tunelab promote ALIAS {best['name']}`", markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("run", epilog="Every config key, its default and meaning: `tunelab config`.")(run)
    app.command("cancel")(cancel)
    app.command("sweep")(sweep)
