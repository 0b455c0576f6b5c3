"""``tunelab advise CONFIG [--budget-minutes N]``: should I fine-tune at all? (``tunelab.tasks.advise``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from tunelab.cli.common import console, error_console, print_json, train_progress_bar
from tunelab.estimate.plan import duration


def _score(value: Any, low: Any = None, high: Any = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.3f}" if abs(value) < 100 else f"{value:,.1f}"
    if low is not None and high is not None:
        text += f" [{low:.3f}, {high:.3f}]" if abs(value) < 100 else f" [{low:,.1f}, {high:,.1f}]"
    return text


def _usd(value: Any) -> str:
    if value is None:
        return "?"
    if 0 < value < 0.01:
        return "< 0.01"
    return f"{value:,.2f}"


def _event_printer(quiet: bool):
    started: dict[str, float] = {}

    def on_event(step: str, status: str, details: dict[str, Any]) -> None:
        if quiet:
            return
        if status == "warn":  # personal data in the rows a remote opponent is asked, with its host: before the first request
            error_console.print(f"  [yellow]warning:[/] {escape(details['message'])}", soft_wrap=True)
            return
        key = f"{step}:{details.get('baseline', '')}"
        if status == "start":
            started[key] = time.perf_counter()
            return
        elapsed = time.perf_counter() - started.get(key, time.perf_counter())
        if step == "split":
            error_console.print(f"  [green]✓[/] split: train {details['train']}, validation {details['validation']} (scored on)")
        elif step == "baseline":
            error_console.print(f"  [green]✓[/] {details['baseline']} on the validation rows [dim]({elapsed:.1f} s)[/] {_score(details.get('score'))}")
        elif step == "estimate":
            error_console.print(f"  [green]✓[/] estimate [dim]({elapsed:.1f} s)[/] a full run here: about {duration(details.get('seconds'))}")
        elif step == "plan":
            if details.get("sizes"):
                error_console.print(f"  [green]✓[/] curve: {len(details['sizes'])} short runs on {', '.join(map(str, details['sizes']))} "
                                    f"{details.get('noun', 'examples')}, about {duration(details.get('estimated_seconds'))}")
            else:
                error_console.print(f"  [yellow]no curve[/] {details.get('reason')}")
        elif step == "point":
            error_console.print(f"  [green]✓[/] {details['size']} {details.get('noun', 'examples')} [dim]({duration(details['seconds'])}, estimated "
                                f"{duration(details.get('estimated_seconds'))})[/] {_score(details.get('score'))}")

    return on_event


def render_advice(data: dict[str, Any]) -> None:
    """The table and the recommendation, from an ``advice.json`` dict."""
    metric = data["metric"]
    # What the sizes count: training examples, or a text run's training windows (advice.json before them: examples).
    unit, noun = data.get("size_unit", "training examples"), data.get("size_noun", "examples")
    # One validation row resamples to itself: its "interval" has no width and says nothing, so none is shown.
    one_row = data["validation_size"] < 2
    interval = "one row: no interval" if one_row else "95% interval"
    curves = {c["name"]: c for c in data["curves"]}
    opponents = Table(title=f"Opponents on {data['validation_size']} validation rows ({metric}, {interval})")
    for column in ("baseline", metric, "learns from data", "time here"):
        opponents.add_column(column, justify="left" if column == "baseline" else "right")
    for o in data["opponents"]:
        learns = ("yes (curve)" if o["name"] in curves else "yes") if o["learns"] else "no"
        score = _score(o["score"]) if one_row else _score(o["score"], o["low"], o["high"])
        opponents.add_row(o["name"], score, learns, duration(o["seconds"]))
    console.print(opponents)

    if data["points"]:
        points = Table(title=f"Learning curve: the recipe on nested subsets of the {data['train_size']:,} {unit}")
        learning = [name for name in curves if name != "tuned"]
        for column in (noun, f"tuned {metric}", *learning, "time (estimated)"):
            points.add_column(column, justify="right")
        for p in data["points"]:
            extra = []
            for name in learning:
                sizes = curves[name]["sizes"]
                extra.append(_score(curves[name]["scores"][sizes.index(p["size"])]) if p["size"] in sizes else "-")
            points.add_row(f"{p['size']:,}", _score(p["score"]), *extra, f"{duration(p['seconds'])} ({duration(p['estimated_seconds'])})")
        console.print(points)
        tuned = curves.get("tuned")
        if tuned and tuned["law"]:
            law = tuned["law"]
            sign = "-" if data["higher_is_better"] else "+"
            console.print(f"fit: {metric}(n) = {law['a']:.4g} {sign} {law['b']:.4g} · n^-{law['c']:.3g}")

    projection, crossing = data.get("projection"), data.get("crossing")
    if projection:
        tuned_score = _score(projection["tuned"]) if one_row else _score(projection["tuned"], projection["tuned_low"], projection["tuned_high"])
        console.print(
            f"projected with all {data['train_size']:,} {unit}: tuned {tuned_score}"
            f" vs {projection['opponent']}{' (its curve)' if projection.get('opponent_learns') else ''} {_score(projection['opponent_score'])}: "
            f"difference {projection['difference']:+.3f}{'' if projection.get('higher_is_better', True) else ' (lower is better: > 0 is the tuned model lower)'}"
            + ("" if one_row else f" [{projection['low']:+.3f}, {projection['high']:+.3f}]")
        )
    if crossing:
        if crossing["size"] is None and crossing.get("behind_from") is not None:
            console.print(f"crossing: level or ahead of {crossing['opponent']} only up to about {crossing['behind_from']:,.0f} {unit}, "
                          f"behind from there to {crossing['limit']:,.0f}")
        elif crossing["size"] is None:
            console.print(f"crossing: not within 10x your data (up to {crossing['limit']:,.0f} {unit})")
        elif crossing["ahead_at_start"]:
            console.print(f"crossing: level or ahead of every opponent from the smallest size measured ({crossing['start']:,.0f})")
        else:
            spread = f"{crossing['low']:,.0f} to " + (f"{crossing['high']:,.0f}" if crossing["high"] is not None else "beyond 10x")
            console.print(f"crossing: the tuned curve reaches {crossing['opponent']} at about {crossing['size']:,.0f} {unit} (95%: {spread})")

    options = Table(title=f"Each way forward (re-tuning once every {data['retrain_every']})")
    for column in ("option", metric, "time", "USD", "re-tune / month"):
        options.add_column(column, justify="left" if column == "option" else "right")
    for row in data["options"]:
        retune_time = duration(row["retune_seconds_per_month"]) if row["retune_seconds_per_month"] is not None else "-"
        retune = f"{retune_time}, USD {_usd(row['retune_usd_per_month'])}"
        if row["score"] is None:
            score = row["score_note"]
        else:
            score = _score(row["score"]) if one_row else _score(row["score"], row["score_low"], row["score_high"])
        options.add_row(row["name"], score,
                        duration(row["seconds"]) if row["seconds"] is not None else "?", _usd(row["usd"]), retune)
    console.print(options)
    console.print("[dim]? unknown (see the notes); time here is this machine's, on the GPU compute only; inference costs are not included[/]")
    console.print(f"[bold]recommendation: {data['recommendation']}[/]")
    console.print(data["reason"])
    notes = list(data["flags"]) + [f"{row['name']}: {note}" for row in data["options"] for note in row["notes"]] + list(data.get("warnings", []))
    for note in notes:
        console.print(f"[dim]note:[/] {note}")
    console.print(f"advice: {Path(data['folder']) / 'advice.json'} ({duration(data['seconds'])})")


def advise(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="The run config (YAML) you would give `tunelab run`."),
    overrides: list[str] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Dotted overrides, e.g. data.seed=1."),
    budget_minutes: float = typer.Option(10.0, "--budget-minutes", min=0.1, help="How long the advice may take (the learning curve gets what fits)."),
    label_usd: float | None = typer.Option(None, "--label-usd", min=0.0, help="What labelling one more example costs you (USD)."),
    local_usd_per_hour: float | None = typer.Option(None, "--local-usd-per-hour", min=0.0, help="What this machine costs an hour (USD)."),
    retrain_every: str = typer.Option("30d", "--retrain-every", help="Re-tuning cadence the monthly costs assume (6h, 7d, 30d)."),
    no_calibrate: bool = typer.Option(False, "--no-calibrate", help="Skip the timed steps: times stay unknown and the budget cannot plan the curve."),
    as_json: bool = typer.Option(False, "--json", help="Print the advice as JSON."),
) -> None:
    """Should I fine-tune at all? Baselines, a learning curve from short runs, the cost of each way, one recommendation."""
    from tunelab.config import load_config
    from tunelab.tasks.advise import advise as run_advise

    config = load_config(config_path, overrides or [])
    with train_progress_bar() as on_progress:
        advice = run_advise(config, budget_minutes=budget_minutes, label_usd_per_example=label_usd, local_usd_per_hour=local_usd_per_hour,
                            retrain_every=retrain_every, calibrate=not no_calibrate, on_event=_event_printer(as_json),
                            train_progress=on_progress)
    data = advice.to_dict()
    if as_json:
        print_json(data)
    else:
        render_advice(data)


def register(app: typer.Typer) -> None:
    app.command("advise")(advise)
