"""``tunelab runs``, ``tunelab show RUN``, ``tunelab compare RUN RUN ...``: read the run registry."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from tunelab.cli.common import console, print_group_lines, print_json, verdict_rich_table
from tunelab.config import Task
from tunelab.paths import human_bytes
from tunelab.registry import STATUSES, Registry, RegistryError, RunRecord, default_registry_path

REGISTRY_OPTION = typer.Option(None, "--registry", help="The registry file (default: runs/registry.db).")


def _registry_file(path: Path | None) -> Path:
    """The registry file a read-only command reads: --registry or the default. A folder is an error, not an empty
    registry (``--registry runs`` for ``runs/registry.db`` listed "no runs recorded")."""
    path = path or default_registry_path()
    if path.is_dir():
        raise RegistryError(f"{path} is a folder, not a run registry", f"pass the registry file: --registry {path / 'registry.db'}")
    return path


def open_registry(path: Path | None) -> Registry:
    """The registry of a command that reads it (``show``, ``compare``, ``aliases``) or moves an alias in it (``promote``,
    ``rollback``): never created by such a command.

    Raises:
        RegistryError: for a folder or a file that is not there.
    """
    path = _registry_file(path)
    if not path.is_file():
        raise RegistryError(f"no run registry at {path}", "run `tunelab run CONFIG` first, or pass --registry PATH")
    return Registry(path)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


def _key_metric(run: RunRecord, *, short: bool = False) -> str:
    metric = run.key_metric()
    if metric is None:
        return "-"
    name, before, after = metric
    # Only the base model's value is "before": when it was skipped the cell says so (`tunelab show` gives the reason),
    # in a narrow table by a mark explained under it.
    skipped = before is None and run.base_skipped is not None
    shown = ("n/a*" if short else "n/a (base skipped)") if skipped else _number(before)
    return f"{name} {shown} → {_number(after)}"


def _size(size: int | None) -> str:
    return "-" if size is None else human_bytes(size)


def runs(
    task: str | None = typer.Option(None, "--task", help="Only runs of this task."),
    status: str | None = typer.Option(None, "--status", help=f"Only runs with this status ({', '.join(STATUSES)})."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most this many (newest first)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    registry_path: Path | None = REGISTRY_OPTION,
) -> None:
    """List recorded runs, newest first: task, model, status, disk size, key metric before → after, verdict."""
    from tunelab.registry.cleanup import run_bytes

    if status is not None and status not in STATUSES:
        raise RegistryError(f"unknown status '{status}'", f"use one of {', '.join(STATUSES)}")
    tasks = typing.get_args(Task)
    if task is not None and task not in tasks:
        # A misspelt task matched no row and read as an empty registry.
        raise RegistryError(f"unknown task '{task}'", f"use one of {', '.join(tasks)}")
    registry_path = _registry_file(registry_path)
    registry = Registry(registry_path) if registry_path.is_file() else None
    records = registry.list_runs(task=task, status=status, limit=limit) if registry is not None else []
    served = registry.aliases_by_run() if registry is not None else {}
    sizes = {record.id: run_bytes(record) for record in records}  # None: the folder is gone
    if as_json:
        print_json([{**record.as_dict(), "aliases": served.get(record.id, []), "bytes": sizes[record.id]} for record in records])
        return
    if not records:
        console.print(f"no runs recorded in {registry_path}")
        return
    table, left_out, marked = _runs_table(f"Runs in {registry_path}", records, sizes, served)
    console.print(table)
    if marked:
        console.print("[dim]* n/a: the base model was not scored (`tunelab show RUN` says why)[/dim]")
    if left_out:
        console.print(f"[dim]not shown at {console.width} columns: {', '.join(left_out)} (`tunelab show RUN` and --json give them)[/dim]")


# What a narrower terminal gives up, in this order, until every shown cell fits whole on its row's one line (at 80
# columns the full table was mostly "class…", "finis…", "accur… n/a (base skipp…"): first what `tunelab show` and
# --json give anyway, then the key metric's long form, then the less telling columns. Name, key metric and verdict stay.
_NARROWER = ("task", "model", "short key metric", "created", "size", "alias", "status")


def _runs_table(title: str, records: list[RunRecord], sizes: dict[str, int | None], served: dict[str, list[str]]) -> tuple[Table, list[str], bool]:
    """The ``tunelab runs`` table at the console's width, the columns it leaves out, and whether a key metric is marked
    "n/a*" (its short form)."""
    from rich.cells import cell_len
    from rich.measure import Measurement

    # Which run is live: a column only where some alias serves a listed run (else a column of dashes).
    alias_column = any(record.id in served for record in records)
    cells = {
        "name": [record.name for record in records],
        "task": [record.task or "-" for record in records],
        "model": [record.model or "-" for record in records],
        "status": [record.status for record in records],
        "size": [_size(sizes[record.id]) for record in records],
        # The aliases serving the run: "alias", not "served as", keeps it within 80 columns beside status.
        **({"alias": [", ".join(served.get(record.id, [])) or "-" for record in records]} if alias_column else {}),
        "key metric": [_key_metric(record) for record in records],
        "verdict": [record.verdict or "-" for record in records],
        "created": [record.created_at[:16].replace("T", " ") for record in records],
    }
    short = [_key_metric(record, short=True) for record in records]
    marked = False  # some shown key metric is "n/a*": the note under the table explains it
    left_out: list[str] = []

    def table(whole: bool) -> Table:
        shown = Table(title=title)
        for column in cells:
            # A verdict ("no significant difference") wraps at its words; every other cell stays whole on its line.
            # Past the last step (a name longer than the terminal is wide) every cell folds: never cut to "…".
            shown.add_column(column, overflow="fold", no_wrap=whole and column != "verdict")
        for row in zip(*cells.values(), strict=True):
            shown.add_row(*row)
        return shown

    wide = console.options.update(width=10_000)  # measured unsqueezed: every cell whole on one line
    # The verdict column can narrow to its longest word; the width it may give up is not needed.
    verdicts = [*cells["verdict"], "verdict"]
    slack = max(map(cell_len, verdicts)) - max(cell_len(word) for verdict in verdicts for word in verdict.split())
    for step in (None, *_NARROWER):
        if step == "short key metric":
            marked, cells["key metric"] = short != cells["key metric"], short
        elif step in cells:
            del cells[step]
            left_out.append(step)
        elif step is not None:
            continue  # no such column here (no alias serves a listed run)
        if Measurement.get(console, wide, table(whole=True)).maximum - slack <= console.width:
            return table(whole=True), left_out, marked
    return table(whole=False), left_out, marked


def _timings_table(record: RunRecord) -> Table:
    table = Table(title="Time: estimate vs actual")
    for column in ("step", "estimated s", "actual s", "actual / estimated"):
        table.add_column(column, justify="right" if column != "step" else "left")
    for step, entry in (record.timings or {}).items():
        estimated, actual = entry.get("estimated_s"), entry.get("actual_s")
        ratio = f"{actual / estimated:.2f}" if estimated and actual is not None else "-"
        table.add_row(step, _number(estimated), _number(actual), ratio)
    return table


def _metrics_table(record: RunRecord) -> Table:
    from tunelab.registry import metric_values

    before, after = record.base_metrics(), metric_values(record.tuned_metrics)
    table = Table(title="Metrics")
    for column in ("metric", "baseline", "tuned"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    for name in sorted(set(before) | set(after)):
        table.add_row(name, _number(before.get(name)), _number(after.get(name)))
    return table


def _facts_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    for name, value in rows:
        table.add_row(name, value)
    return table


def _verdict_kind(verdict: str | None) -> str:
    from tunelab.ui.views import verdict_kind

    return verdict_kind(verdict)


def _train_rows(train: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for key, label in (("steps", "optimizer steps"), ("final_loss", "final training loss"), ("best_validation_loss", "best validation loss"),
                       ("tokens", "real tokens trained"), ("tokens_per_second", "real tokens / s"), ("precision", "precision"),
                       ("trainable_parameters", "trainable parameters"), ("seconds", "seconds")):
        value = train.get(key)
        if value is not None:
            rows.append((label, f"{value:,}" if isinstance(value, int) else _cell(value)))
    return rows


def show(
    run: str = typer.Argument(..., help="Run name, id or id prefix."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    registry_path: Path | None = REGISTRY_OPTION,
) -> None:
    """Show everything recorded about one run: verdict, metrics against every baseline, training, time, estimate, config."""
    from tunelab.estimate.summary import estimate_summary
    from tunelab.registry.cleanup import disk_use
    from tunelab.runs import RunFolder, read_near_copies

    registry = open_registry(registry_path)
    record = registry.get_run(run)
    aliases = registry.aliases_by_run().get(record.id, [])
    use = disk_use(record.run_dir) if record.run_dir else None
    size = use.bytes if use is not None else None
    # The split step's near-copy finding, from the run folder (split.json): said only when there are near-copies.
    near_copies = read_near_copies(RunFolder(Path(record.run_dir))) if record.run_dir else None
    caveat = near_copies.caveat() if near_copies is not None else None
    if as_json:
        found = {"near_copies": near_copies.to_dict()} if near_copies is not None and caveat else {}
        print_json({**record.as_dict(), "aliases": aliases, "bytes": size, "parts": dict(use.parts) if use is not None else {}, **found})
        return
    fields = [field for field in ("id", "status", "task", "model", "created_at", "updated_at", "run_dir", "data_fingerprint",
                                  "split_fingerprint", "error") if getattr(record, field) is not None]
    rows = [(field.replace("_", " "), str(getattr(record, field))) for field in fields]
    # Which alias serves it (servers following `alias:NAME` answer with this run): a user with many runs sees the live one.
    rows.insert(2, ("served as", ", ".join(aliases) or f"no alias (`tunelab promote ALIAS {record.name}` serves it)"))
    # What a clean-up would free, and where it sits (checkpoints, exports): `tunelab delete RUN` removes it.
    biggest = ", ".join(f"{name} {human_bytes(part)}" for name, part in (use.parts if use is not None else [])[:4])
    rows.insert(3, ("size", "- (its folder is gone)" if size is None else f"{human_bytes(size)}" + (f" ({biggest})" if biggest else "")))
    artifacts = dict(record.artifacts or {})
    train = artifacts.pop("train", None)
    baselines = artifacts.pop("baselines", None)
    # The artifacts repeat the record's run_dir: shown once, as "run dir". Each is labelled in words, as the record's
    # fields are ("suspect labels", never the stored key "suspect_labels").
    rows += [(name.replace("_", " "), str(value)) for name, value in artifacts.items() if isinstance(value, str | int | float) and name not in fields]
    rows += [("near-copies", caveat)] if caveat else []
    console.print(_facts_table(f"Run {record.name}", rows))
    verdict = verdict_rich_table(record.comparison)
    if verdict is not None:
        console.print(verdict)
        colour = {"paid-off": "green", "lost": "red", "too-few": "dim"}.get(_verdict_kind(record.verdict), "yellow")
        console.print(f"[bold {colour}]verdict: {record.verdict}[/]  {record.comparison.get('summary', '')}")
        print_group_lines(record.comparison)
    elif record.baseline_metrics or record.tuned_metrics:
        console.print(_metrics_table(record))
    if isinstance(baselines, dict) and baselines and verdict is None:
        console.print(_facts_table("Baselines", [(name, _cell((m or {}).get((m or {}).get("primary")))) for name, m in baselines.items()]))
    # A baseline that was not scored is said with its reason, as `tunelab run` said it: never silently missing.
    for name, reason in record.baselines_skipped.items():
        console.print(f"[yellow]{escape(name)} skipped:[/yellow] {escape(reason)}")
    if isinstance(train, dict) and train:
        console.print(_facts_table("Training", _train_rows(train)))
    if record.timings:
        console.print(_timings_table(record))
    if record.estimate:
        console.print(_facts_table("Estimate made before training", estimate_summary(record.estimate)))
    if record.config:
        console.print("[bold]Config[/bold] (resolved)")
        console.print(record.config, markup=False, highlight=False)


def _compare_files(paths: list[Path], as_json: bool) -> None:
    from tunelab.evaluation.compare import compare_files

    if len(paths) != 2:
        raise RegistryError("comparing evaluation files takes exactly two .json files")
    # JSON either way: the comparison is a nested record (the verdict line is its "summary").
    print_json(compare_files(paths[0], paths[1]).to_dict())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return _number(value)
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _groups_table(runs: list[str], groups: dict[str, list[dict[str, Any] | None]]) -> Table:
    """Each run's verdict by group (``RunComparison.groups``), one row per group: the tuned model's difference from the
    opponent that run's verdict names, its 95% interval, the outcome and n."""
    first = next(cell for cells in groups.values() for cell in cells if cell)
    table = Table(title=f"{first.get('metric')} by group: each run's tuned model against the opponent its verdict names")
    table.add_column("group")
    for i, name in enumerate(runs):
        opponents = {cells[i].get("opponent") for cells in groups.values() if cells[i]}
        table.add_column(f"{name} (against {', '.join(map(str, sorted(opponents, key=str)))})")
    colours = {"better": "green", "worse": "red"}

    def cell(group: dict[str, Any] | None) -> str:
        if group is None:
            return "-"
        difference = "-" if group.get("difference") is None else f"{group['difference']:+.3g}"
        interval = "" if group.get("low") is None else f" [{group['low']:+.3g}, {group['high']:+.3g}]"
        outcome = str(group.get("outcome"))
        shown = f"[{colours[outcome]}]{outcome}[/]" if outcome in colours else escape(outcome)
        return f"{difference}{interval} {shown}, n={group.get('n')}"

    for name, cells in groups.items():
        table.add_row(escape(name), *map(cell, cells))
    return table


def compare(
    items: list[str] = typer.Argument(..., help="Two or more run names/ids, or two evaluation .json files."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    registry_path: Path | None = REGISTRY_OPTION,
) -> None:
    """Compare runs: metrics side by side and the config keys that differ (or two evaluation files)."""
    # A name ending in .json is an evaluation file, there or not: a missing one is "not found", never a run name.
    json_files = [Path(item) for item in items if item.endswith(".json")]
    if json_files:
        if len(json_files) != len(items):
            raise RegistryError("give either run names/ids or evaluation .json files, not both")
        _compare_files(json_files, as_json)
        return
    registry = open_registry(registry_path)
    comparison = registry.compare_runs(items)
    # The stored metrics carry no scoring rule: text runs scored by different rules are flagged from their evaluations
    # (imported only then: the evaluation modules load torch, which a plain compare does not wait for).
    texts = [(record.name, record.run_dir) for record in map(registry.get_run, items) if record.task == "text"]
    if len(texts) > 1:
        from tunelab.evaluation.compare import runs_scoring_warnings

        comparison.warnings += runs_scoring_warnings(texts)
    if as_json:
        print_json(comparison.as_dict())
        return
    for warning in comparison.warnings:  # first: it says how to read every table below
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    for title, metrics in (("Tuned metrics", comparison.tuned_metrics), ("Baseline metrics", comparison.baseline_metrics)):
        if not metrics:
            continue
        table = Table(title=title)
        table.add_column("metric")
        for name in comparison.runs:
            table.add_column(name, justify="right")
        for metric, values in metrics.items():
            # A preference run's base model is the reference scored as itself: where its verdict does not compare it
            # (its stored reward margin of 0), neither does this table.
            reasons = comparison.baseline_not_compared.get(metric, []) if metrics is comparison.baseline_metrics else []
            table.add_row(metric, *("not compared" if i < len(reasons) and reasons[i] else _cell(value) for i, value in enumerate(values)))
        console.print(table)
    if any(comparison.verdicts):
        table = Table(title="Verdicts")
        for name in comparison.runs:
            table.add_column(name)
        table.add_row(*(_cell(verdict) for verdict in comparison.verdicts))
        console.print(table)
    if comparison.groups:
        console.print(_groups_table(comparison.runs, comparison.groups))
    elif comparison.groups_note:
        console.print(f"[dim]by group: {escape(comparison.groups_note)}[/dim]")
    if comparison.config_differences:
        table = Table(title="Config keys that differ")
        table.add_column("key")
        for name in comparison.runs:
            table.add_column(name)
        for key, values in comparison.config_differences.items():
            table.add_row(key, *(_cell(value) for value in values))
        console.print(table)
    else:
        console.print("the configs are identical")


def _deletion_line(item: Any, verb: str) -> str:
    note = f"; {item.note}" if item.note else ""
    return f"{verb} {escape(item.name)} ({item.status}, {_size(item.bytes)}{escape(note)})"


def delete(
    runs: list[str] = typer.Argument(None, help="Run names, ids or folders (or choose them with --status / --older-than)."),
    status: str | None = typer.Option(None, "--status", help=f"Every run with this status ({', '.join(STATUSES)}), e.g. failed."),
    older_than: str | None = typer.Option(None, "--older-than", help="Every run created more than this long ago (30d, 12h, 2w)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be deleted and refused, and the bytes freed."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    force: bool = typer.Option(False, "--force", help="Also delete a distillation's teacher run (the student keeps its answers)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (needs --dry-run or --yes)."),
    registry_path: Path | None = REGISTRY_OPTION,
) -> None:
    """Delete runs: their folders (adapters, checkpoints, exports) and their registry rows, after listing what goes.
    Refused: a run an alias serves, a run a process is working in, a run another run was trained on."""
    from tunelab.config import parse_duration
    from tunelab.registry.cleanup import delete_runs, plan_deletion

    if status is not None and status not in STATUSES:
        raise RegistryError(f"unknown status '{status}'", f"use one of {', '.join(STATUSES)}")
    if as_json and not (dry_run or yes):
        raise RegistryError("--json cannot ask for confirmation", "add --dry-run to see the plan, or --yes to delete")
    seconds = parse_duration(older_than, "--older-than") if older_than is not None else None
    registry = open_registry(registry_path)
    plan = plan_deletion(registry, runs or [], status=status, older_than=seconds, force=force)
    # Refusals of runs named one by one fail the command; a filter's matches that are refused (the served run is old
    # too) are only listed, so a scheduled `--older-than 30d --yes` does not fail every time.
    failed = bool(plan.refusals) and bool(runs)
    if as_json and dry_run:
        print_json(plan.as_dict())
        raise typer.Exit(1 if failed else 0)
    if not as_json:
        for item in plan.deletions if dry_run or not yes else []:  # with --yes, what was deleted is said once, after
            console.print(_deletion_line(item, "would delete"), soft_wrap=True)
        for path in plan.leftovers if dry_run or not yes else []:
            console.print(f"would remove {escape(str(path))} (left by a delete that was stopped midway)")
        for item in plan.refusals:
            console.print(f"[yellow]refused {escape(item.name)}:[/yellow] {escape(item.reason or '')}", soft_wrap=True)
    if not plan.deletions and not plan.leftovers:
        if not as_json:
            console.print("nothing to delete")
        raise typer.Exit(1 if failed else 0)
    if dry_run:
        console.print(f"would free {human_bytes(plan.bytes)}; run again without --dry-run to delete")
        raise typer.Exit(1 if failed else 0)
    if not yes:
        count = f"{len(plan.deletions)} run" + ("s" if len(plan.deletions) != 1 else "")
        typer.confirm(f"Delete {count}, freeing {human_bytes(plan.bytes)}?", abort=True)
    result = delete_runs(registry, plan)
    if as_json:
        print_json(result.as_dict())
    else:
        for item in result.deleted:
            console.print(_deletion_line(item, "deleted"), soft_wrap=True)
        for item in result.refused:
            console.print(f"[yellow]refused {escape(item.name)}:[/yellow] {escape(item.reason or '')}", soft_wrap=True)
        console.print(f"freed {human_bytes(result.bytes)}")
    raise typer.Exit(1 if failed or result.refused else 0)


def register(app: typer.Typer) -> None:
    app.command("runs")(runs)
    app.command("show")(show)
    app.command("compare")(compare)
    app.command("delete")(delete)
