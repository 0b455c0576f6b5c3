"""``tunelab monitor``, ``tunelab retrain``, ``tunelab promote`` / ``rollback`` / ``aliases``: the loop after serving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from tunelab.cli.common import console, error_console, print_json
from tunelab.serve.settings import DEFAULT_LOG_PATH

_STYLE = {"ok": "green", "watch": "yellow", "drifted": "red"}


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _print_report(report: Any) -> None:
    console.print(f"window {report.window}: {report.since[:19]} to {report.until[:19]} UTC, log {report.log}")
    if not report.models:
        console.print("no served traffic in the window")
    for model in report.models:
        table = Table(title=f"{model.model} ({f'run {model.run_id}' if model.run_id else 'no run'}): {model.requests} requests, [{_STYLE[model.status]}]{model.status}[/]")
        for column in ("signal", "value", "judged", "watch / drifted", "status", "n", "detail"):
            table.add_column(column, justify="right" if column in ("value", "judged", "n") else "left")
        for s in model.signals:
            thresholds = f"{s.thresholds[0]:g} / {s.thresholds[1]:g}" if s.thresholds else "-"
            table.add_row(s.name, _number(s.value), _number(s.judged), thresholds, f"[{_STYLE[s.status]}]{s.status}[/]",
                          f"{s.n}{'*' if s.sampled else ''}", s.detail)
        console.print(table)
        for note in model.notes:
            console.print(f"note: {note}")
        for plot in model.plots:
            console.print(f"plot: {plot}")
    if report.unknown_models:
        names = ", ".join(f"{name or '(none)'} ({count})" for name, count in report.unknown_models.items())
        console.print(f"requests for names not served here, refused with 404: {names}", markup=False)
    if any(s.sampled for m in report.models for s in m.signals):
        console.print("* text signals on a seeded sample of the window's requests (monitor.sample); counts, labels, confidence, latency and errors are exact")
    console.print(f"status: [{_STYLE[report.status]}]{report.status}[/]")


def _print_retrain(outcome: dict[str, Any]) -> None:
    if "skipped" in outcome:
        console.print(f"retrain of {outcome.get('model')}: skipped: {outcome['skipped']}")
        return
    challenger, champion = outcome["challenger"]["name"], outcome["champion"]["name"]
    mark = "[green]promoted[/green]" if outcome["promoted"] else "[yellow]kept the champion[/yellow]"
    if outcome["promoted"] and not outcome.get("alias_change"):
        # It won, but nothing serves it: "promoted" would say the server moved to it.
        alias = outcome.get("alias")
        mark = (f"[green]the challenger wins[/green]; alias {alias} still serves {champion} (--no-promote)" if alias else
                f"[green]the challenger wins[/green]; no alias moved (`tunelab promote ALIAS {challenger}` serves it)")
    console.print(f"retrain: challenger {challenger} vs champion {champion}: {mark}")
    sizes = outcome["sizes"]
    console.print(f"  data: old train {sizes['old_train']}, new train {sizes['new_train']}, fresh test {sizes['test']} (recent slice {sizes['recent_test']})")
    for warning in outcome.get("warnings") or []:
        console.print(f"  [yellow]warning[/yellow] {warning}")
    if outcome["new_labels"]:
        console.print(f"  new labels: {', '.join(outcome['new_labels'])}")
    for name, comparison in (("whole test set", outcome["overall"]), ("recent slice", outcome["recent"])):
        console.print(f"  {name}: {comparison['summary']}")
    for reason in outcome["reasons"]:
        console.print(f"  {'why' if outcome['promoted'] else 'why not'}: {reason}", markup=False)  # a reason may name a group: data, not markup
    if outcome.get("alias_change"):
        change = outcome["alias_change"]
        console.print(f"  alias {change['name']}: {change['previous_run_id'] or '(new)'} -> {change['run_id']}")
        if change["previous_run_id"] is None:
            # Made by this promotion (the alias defaults to the served name): a server serving a fixed run does not move.
            console.print(f"  [yellow]note[/yellow] no server followed alias {change['name']} before: serve it with "
                          f"`tunelab serve --adapter NAME=alias:{change['name']}` for the winner to answer")


def monitor(
    log_db: Path = typer.Option(DEFAULT_LOG_PATH, "--log-db", help="The server's request log."),
    config_path: Path | None = typer.Option(None, "--config", help="A YAML file with a monitor: section (a run config works)."),
    registry_path: Path | None = typer.Option(None, "--registry", help="The run registry (default: runs/registry.db)."),
    model: str | None = typer.Option(None, "--model", help="Only this served name."),
    run_dir: Path | None = typer.Option(None, "--run", help="Compare with this run folder (default: the logged run's)."),
    window: str | None = typer.Option(None, "--window", help="Traffic judged: the last 90s / 30m / 6h / 7d (default 7d)."),
    plots: Path | None = typer.Option(None, "--plots", help="Write PNG plots into this folder."),
    every: str | None = typer.Option(None, "--every", help="Keep checking at this interval (6h ...): a long-running loop."),
    retrain_on: str | None = typer.Option(None, "--retrain-on", help="With --every: retrain when the status reaches drift / watch (never)."),
    alias: str | None = typer.Option(None, "--alias", help="With --retrain-on: the alias a winning challenger moves (default: the served name)."),
    data: list[Path] = typer.Option([], "--data", help="With --retrain-on: new labelled files besides the logged feedback."),
    iterations: int | None = typer.Option(None, "--iterations", min=1, help="With --every: stop after this many checks."),
    as_json: bool = typer.Option(
        False, "--json",
        help="Machine-readable output (for alerting): one JSON document; with --every, one compact JSON document per check, "
        "one per line (JSON Lines), printed as each check ends.",
    ),
) -> None:
    """Judge live traffic against each served run's training data; exit code 3 when a signal drifted.

    With --every it keeps checking; --json then prints JSON Lines: one line per check, {"report": ..., "retrains": [...]}.
    """
    from tunelab.monitor import load_monitor_config, run_monitor
    from tunelab.registry.store import default_registry_path

    config = load_monitor_config(config_path, {"window": window, "every": every, "retrain_on": retrain_on})
    registry_path = registry_path or default_registry_path()
    if every is None and retrain_on is None:
        report = run_monitor(log_db, config, registry_path=registry_path, model=model, run_dir=run_dir, plots_dir=plots)
        if as_json:
            print_json(report.as_dict())
        else:
            _print_report(report)
        raise typer.Exit(report.exit_code)

    from tunelab.tasks.schedule import monitor_loop

    def on_tick(tick: Any) -> None:
        if as_json:
            # One line per check (JSON Lines): a consumer reads each check as it comes from a loop that never ends.
            print_json({"report": tick.report.as_dict(), "retrains": tick.retrains}, line=every is not None)
        else:
            _print_report(tick.report)
            for outcome in tick.retrains:
                _print_retrain(outcome)

    if every is None:
        error_console.print("note: --retrain-on without --every checks once")
        iterations = 1
    monitor_loop(log_db, config, on_tick=on_tick, iterations=iterations, registry_path=registry_path, model=model, alias=alias,
                 data=data or None, plots_dir=plots)


def retrain(
    run: str = typer.Argument(..., help="The champion: run id or name, run folder, or alias:NAME."),
    data: list[Path] = typer.Option([], "--data", help="New labelled records (repeatable)."),
    log_db: Path | None = typer.Option(None, "--log-db", help="Add the labelled feedback of this request log."),
    served_model: str | None = typer.Option(None, "--served-model", help="Only the feedback on this served name."),
    alias: str | None = typer.Option(None, "--alias", help="Move this alias when the challenger wins (default: NAME of alias:NAME)."),
    margin: float | None = typer.Option(None, "--margin", min=0.0, help="Non-inferiority margin on the primary metric (default monitor.margin)."),
    recent_share: float = typer.Option(0.5, "--recent-share", min=0.05, max=0.95, help="Share of the new records held out as the recent test slice."),
    registry_path: Path | None = typer.Option(None, "--registry", help="The run registry (default: runs/registry.db)."),
    name: str | None = typer.Option(None, "--name", help="The challenger's run name."),
    no_promote: bool = typer.Option(False, "--no-promote", help="Decide, but do not move the alias."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Train a challenger on the champion's data + new labelled data; promote it only if it wins."""
    from tunelab.cli.common import cancel_on_sigterm, progress_display
    from tunelab.cli.runs import open_registry
    from tunelab.tasks.retrain import retrain as run_retrain

    # The champion is read from an existing registry only: a mistyped --registry would otherwise become a new, empty one.
    registry_path = open_registry(registry_path).path
    with progress_display(quiet=as_json) as display, cancel_on_sigterm():

        def on_event(step: str, status: str, details: dict[str, Any]) -> None:
            if step == "champion" and status == "start":
                display.begin("evaluate the champion", total=details.get("n"))
            else:
                display.on_event(step, status, details)
            if not as_json and status == "done" and step in ("data", "split", "train", "evaluate", "champion"):
                error_console.print(f"  {step} done")

        outcome = run_retrain(
            run, data, registry_path=registry_path, log_path=log_db, served_model=served_model, alias=alias, margin=margin,
            recent_share=recent_share, name=name, promote=not no_promote, on_event=on_event, train_progress=display.training,
            eval_progress=display.advance,
        )
    if as_json:
        print_json(outcome.as_dict())
    else:
        _print_retrain(outcome.as_dict())


def promote(
    alias: str = typer.Argument(..., help="The alias, e.g. router."),
    run: str = typer.Argument(..., help="The run it should point at (id or name)."),
    reason: str | None = typer.Option(None, "--reason", help="Kept in the alias history."),
    force: bool = typer.Option(
        False, "--force", help="Promote even when RUN may be worse than the run ALIAS serves, or the two cannot be compared (kept in the history)."
    ),
    registry_path: Path | None = typer.Option(None, "--registry", help="The run registry (default: runs/registry.db)."),
) -> None:
    """Point ALIAS at RUN (servers following alias:ALIAS pick it up without a restart); a run they could not serve is refused,
    and so is a run not shown to be as good as the one ALIAS serves (both runs' test evaluations, paired bootstrap)."""
    from tunelab.cli.runs import open_registry
    from tunelab.tasks.retrain import promote_checked

    # An existing registry only: a mistyped --registry would otherwise become a new, empty one.
    change = promote_checked(open_registry(registry_path), alias, run, reason=reason or "manual promote", force=force)
    if change.details:
        console.print(escape(change.details["summary"]), style="yellow" if change.details.get("forced") else None)
    console.print(f"alias {alias}: {change.previous_run_id or '(new)'} -> {change.run_id}")


def rollback(
    alias: str = typer.Argument(..., help="The alias to move back."),
    reason: str | None = typer.Option(None, "--reason", help="Kept in the alias history."),
    registry_path: Path | None = typer.Option(None, "--registry", help="The run registry (default: runs/registry.db)."),
) -> None:
    """Point ALIAS back at the run it served before the current one (refused when a server could no longer serve it)."""
    from tunelab.cli.runs import open_registry
    from tunelab.tasks.retrain import rollback as rollback_run

    change = rollback_run(open_registry(registry_path), alias, reason=reason)
    console.print(f"alias {alias}: {change.previous_run_id} -> {change.run_id} (rollback)")


def aliases(
    alias: str | None = typer.Argument(None, help="Show this alias's history."),
    registry_path: Path | None = typer.Option(None, "--registry", help="The run registry (default: runs/registry.db)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List aliases and the runs they point at, or one alias's history."""
    from tunelab.cli.runs import open_registry
    from tunelab.registry import RegistryError

    registry = open_registry(registry_path)
    if alias is None:
        current = registry.aliases()
        if as_json:
            print_json(current)
            return
        if not current:
            console.print(f"no aliases in {registry.path} (set one with `tunelab promote ALIAS RUN`)")
        for name, run_id in current.items():
            console.print(f"{name} -> {run_id} ({registry.get_run(run_id).name})")
        return
    history = [change.as_dict() for change in registry.alias_history(alias)]
    if not history:
        raise RegistryError(f"no alias '{alias}' in {registry.path}", f"set it with `tunelab promote {alias} RUN`")
    if as_json:
        print_json(history)
        return
    names: dict[str, str] = {}
    # A deleted run's name as the history kept it (rows written before the registry kept names have none).
    kept = {change["run_id"]: change["run_name"] for change in history if change.get("run_name")}

    def named(run_id: str | None) -> str:
        if run_id is None:
            return "-"
        if run_id not in names:
            try:
                names[run_id] = f"{registry.get_run(run_id).name} ({run_id})"
            except RegistryError:
                names[run_id] = f"{kept[run_id]} ({run_id}, no longer in the registry)" if run_id in kept else f"{run_id} (no longer in the registry)"
        return names[run_id]

    for change in history:
        console.print(f"{change['created_at']}  {change['action']:8}  {named(change['previous_run_id'])} -> {named(change['run_id'])}  "
                      f"{change['reason'] or ''}", markup=False, highlight=False, soft_wrap=True)
        # How `tunelab promote` judged the run (compared, forced, a return to an earlier run): else a forced promotion
        # reads as a judged one here.
        summary = (change["details"] or {}).get("summary")
        if summary:
            console.print(f"  {summary}", markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("monitor")(monitor)
    app.command("retrain")(retrain)
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("aliases")(aliases)
