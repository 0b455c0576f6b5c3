"""``tunelab distill``: a teacher's answers into a small student, and the student-vs-teacher table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tunelab.cli.common import (
    cancel_on_sigterm,
    config_or_resume,
    console,
    error_console,
    print_json,
    progress_display,
)


def _fmt(value: Any) -> str:
    if value is None:
        return "unknown"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_distill(report: dict[str, Any]) -> Table:
    """Teacher, student (and the untuned student) against the references, then cost and latency."""
    refs = report["against_references"]
    who = [name for name in ("teacher", "student", "untuned_student") if name in refs]
    table = Table(title=f"student {report['student']} vs teacher {report['teacher']} on {report['n']} held-out examples")
    table.add_column("")
    for name in who:
        table.add_column(name.replace("_", " "), justify="right")
    for metric in refs["teacher"]:
        table.add_row(f"{metric} vs references", *(_fmt(refs[name].get(metric)) for name in who))
    cost, latency = report["cost_per_1000_requests_usd"], report["latency_s"]
    table.add_row("cost / 1,000 requests (USD)", _fmt(cost["teacher"]), _fmt(cost["student"]), *([""] * (len(who) - 2)))
    table.add_row("latency (s)", _fmt(latency["teacher"]), _fmt(latency["student"]), *([""] * (len(who) - 2)))
    return table


def distill(
    config_path: Path = typer.Argument(None, metavar="CONFIG", help="Run config (YAML) with a distill: section. Not needed with --resume."),
    overrides: list[str] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Dotted overrides, e.g. distill.teacher=runs/big."),
    resume: Path = typer.Option(None, "--resume", help="Continue a distillation run folder (answers already in distill.jsonl are not asked again)."),
    no_calibrate: bool = typer.Option(False, "--no-calibrate", help="Skip the measured steps of the time estimate."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """The teacher answers your prompts (or labels your texts), the student learns them, and both are scored on held-out data."""
    from tunelab.tasks.distill import distill_run_dir

    config = config_or_resume(config_path, overrides, resume, "distill")
    try:
        outcome = _distill(config, resume, no_calibrate, as_json)
    except (KeyboardInterrupt, typer.Exit):  # Ctrl-C, or SIGTERM as cancel_on_sigterm ends it
        # Ctrl-C said nothing at all and SIGTERM ended Python at once: say that the answers are kept and how to go on.
        run_dir = Path(resume) if resume is not None else distill_run_dir(config)
        if run_dir.is_dir():
            error_console.print(f"the teacher's answers so far are kept: `tunelab distill --resume {run_dir}` continues", soft_wrap=True)
        raise
    _print_outcome(outcome, as_json)


def _distill(config: Any, resume: Path | None, no_calibrate: bool, as_json: bool) -> Any:
    """``run_distill`` under the progress display, Ctrl-C and SIGTERM cancelling it as they cancel ``tunelab run``."""
    from tunelab.cli.run import shown_events
    from tunelab.estimate.plan import money
    from tunelab.tasks.distill import run_distill

    with progress_display(quiet=as_json) as display, cancel_on_sigterm():
        shown = shown_events(display, as_json)

        def on_event(step: str, status: str, details: dict[str, Any]) -> None:
            if step == "teacher" and status == "estimate":  # before the first request, also with --json (on stderr)
                error_console.print(details["line"], markup=False, highlight=False, soft_wrap=True)
                return
            if step == "teacher" and status == "start":
                display.on_event(step, status, details)
                if not as_json:
                    error_console.print(f"[bold cyan]▶ teacher[/] {details['teacher']} answers {details['inputs']} inputs")
                return
            if step == "teacher" and status == "done":
                display.on_event(step, status, details)
                if not as_json:
                    usage = details["usage"]
                    cost = "cost unknown" if usage["cost_usd"] is None else f"cost {money(usage['cost_usd'])}"
                    error_console.print(f"  [green]✓[/] {details['accepted']} answers kept, {len(details['rejected'])} rejected "
                                        f"({usage['input_tokens']:,} tokens in, {usage['output_tokens']:,} out, {cost}; "
                                        f"{usage['cached']} from the request cache)")
                    for item in details["rejected"][:10]:
                        error_console.print(f"  [yellow]rejected[/] {item['source']}: {item['reason']}")
                    if details.get("warning"):
                        error_console.print(f"  [yellow]warning[/] {details['warning']}")
                return
            shown(step, status, details)

        return run_distill(config, resume=resume, on_event=on_event, ask_progress=display.advance,
                           train_progress=display.training, eval_progress=display.advance, calibrate=not no_calibrate)


def _print_outcome(outcome: Any, as_json: bool) -> None:
    if as_json:
        print_json({"run_dir": str(outcome.run_dir), "distill_file": str(outcome.distill_file), "asked": outcome.asked,
                    "accepted": outcome.accepted, "rejected": outcome.rejected, "report": outcome.report, "warnings": outcome.warnings})
        return
    console.print(render_distill(outcome.report))
    vs = outcome.report["student_vs_teacher"]
    console.print("student against the teacher's answers: " + ", ".join(f"{k} {_fmt(v)}" for k, v in vs.items() if k != "n"))
    colour = "green" if outcome.report["non_inferior"] else "yellow"
    # One sentence, unbroken by the console's width (it is the line a user copies into a note or an issue).
    console.print(f"[bold {colour}]{outcome.report['statement']}[/]", soft_wrap=True)
    if outcome.rejected:
        console.print(f"{len(outcome.rejected)} teacher answers were rejected and left out (listed in {outcome.distill_file})")
    from tunelab.runs import RunFolder

    console.print(f"run folder: {outcome.run_dir}   report: {RunFolder(outcome.run_dir).distill_report_md}")


def register(app: typer.Typer) -> None:
    app.command("distill", epilog="The distill: keys: `tunelab config`.")(distill)
