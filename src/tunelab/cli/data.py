"""``tunelab data check|split|show``: see exactly what the model will be trained on, before training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tunelab.cli.common import config_from_options, console, print_json
from tunelab.config import DataConfig, EvalConfig, load_config
from tunelab.errors import ConfigError, ModelError

data_app = typer.Typer(help="Check, split and show training data.", no_args_is_help=True)

TASK_HELP = "text, sft, classify or preference."


def _tokenizer(model: str | None, allow_network: bool) -> Any:
    from tunelab.runs import load_tokenizer

    return load_tokenizer(model, allow_network) if model else _default_tokenizer()


def _default_tokenizer() -> Any:
    # Use the default model's tokenizer when it is ready here; converting it (~20 s) is not worth a check.
    from tunelab.models.loader import is_cached
    from tunelab.runs import load_tokenizer, resolve_model

    try:
        source = resolve_model("default")
        return load_tokenizer("default") if is_cached(source) else None
    except ModelError:
        return None


def _render_example(example: Any) -> Text:
    # Trained spans are both highlighted and bracketed: the brackets survive pipes and no-colour terminals.
    text = Text()
    for piece, trained in example.segments:
        if trained:
            text.append("[[", style="green")
            text.append(piece, style="bold black on green")
            text.append("]]", style="green")
        else:
            text.append(piece, style="dim")
    return text


def _group_counts(counts: dict[str, int]) -> str:
    shown = ", ".join(f"{group} {n}" for group, n in list(counts.items())[:12])
    return shown + (f", ... {len(counts) - 12} more" if len(counts) > 12 else "")


def render_report(report: Any) -> None:
    """Print a CheckReport in one screen: summary, problems, lengths, labels, example."""
    from tunelab.data.formats import invalid_records

    status = "[green]OK[/green]" if report.ok else f"[red]{len(report.errors)} error(s)[/red]"
    console.print(
        f"[bold]{escape(report.path)}[/bold]  task={report.task}  files={len(report.files)}  "
        f"records={report.records}  invalid={invalid_records(report.invalid)}  → {status}"
    )
    if report.limited:
        console.print("[yellow]read only the first --limit rows[/yellow]")
    if report.errors or report.skipped:
        title = "Invalid records" if report.errors else "Skipped invalid records (--skip-invalid)"
        table = Table(title=title, show_lines=False, title_justify="left")
        table.add_column("where", style="cyan", no_wrap=True)
        table.add_column("reason")
        for error in report.errors or report.skipped:
            table.add_row(escape(error.source), escape(error.reason))
        console.print(table)
    stats = Table(title="Duplicates", title_justify="left", show_header=False)
    stats.add_row("exact duplicates", str(report.exact_duplicates))
    stats.add_row("near duplicates", str(report.near_duplicates))
    stats.add_row("conflicting " + ("labels" if report.task == "classify" else "answers"), str(report.conflicts))
    console.print(stats)
    for name, groups in (("exact", report.exact_duplicate_groups), ("near", report.near_duplicate_groups), ("conflict", report.conflict_groups)):
        for group in groups[:5]:
            labels = f"  labels: {', '.join(group.labels)}" if group.labels else ""
            console.print(f"  [dim]{name}:[/dim] {escape(', '.join(group.sources[:4]))}  “{escape(group.preview)}”{escape(labels)}")
    if report.lengths is not None:
        lengths = report.lengths
        sampled = f" (sample of {lengths.measured})" if lengths.sampled else ""
        console.print(
            f"[bold]Token lengths[/bold]{sampled}: min {lengths.min}, median {lengths.median:g}, p95 {lengths.p95}, "
            f"max {lengths.max}; {lengths.over_max_length} longer than max_length={lengths.max_length}"
        )
    if report.labels:
        tokens = {row["label"]: row["token"] for row in report.label_map}
        table = Table(title=f"Labels ({len(report.labels)}, imbalance {report.imbalance:.1f}:1)", title_justify="left")
        for column in ("label", "examples", "token"):
            table.add_column(column)
        shown = list(report.labels.items())
        for label, count in shown[:12]:
            table.add_row(escape(label), str(count), escape(repr(tokens[label])) if label in tokens else "")
        if len(shown) > 12:
            table.add_row(f"... {len(shown) - 12} more", str(sum(n for _, n in shown[12:])), "")
        console.print(table)
    if report.groups:
        # Counts only, whatever the task: the verdict is given per group, and how many each has is what decides it.
        table = Table(title=f"Groups ({len(report.groups)}, {report.group_field})", title_justify="left")
        for column in ("group", "examples"):
            table.add_column(column)
        counted = list(report.groups.items())
        for group, count in counted[:12]:
            table.add_row(escape(group), str(count))
        if len(counted) > 12:
            table.add_row(f"... {len(counted) - 12} more", str(sum(n for _, n in counted[12:])))
        console.print(table)
    if report.test is not None:
        test = report.test
        console.print(f"[bold]Test file[/bold] {escape(test.path)}: {test.records} records, {test.leaked} also in the data")
        if test.near_copies is not None and test.near_copies.count:
            found = test.near_copies
            console.print(f"  {found.count} near-copies of training examples (similarity ≥ {found.threshold:g}), e.g.:")
            for pair in found.pairs[:3]:
                # Rounded down: a pair a word apart has a cosine just under 1, and "1.00" would read as identical.
                shown = math.floor(pair.similarity * 100) / 100
                console.print(f"    {escape(pair.test)} ≈ {escape(pair.train)} ({shown:.2f}): "
                              f"{escape(repr(pair.test_text))} ≈ {escape(repr(pair.train_text))}")
        if test.groups:
            from tunelab.evaluation.compare import MIN_TEST_EXAMPLES

            # Each group's own verdict needs as many test examples as the whole one's: said before a run spends on it.
            few = [group for group, n in test.groups.items() if n < MIN_TEST_EXAMPLES]
            note = f"; under {MIN_TEST_EXAMPLES}, too few for a group's verdict: {', '.join(few)}" if few else ""
            console.print(f"  by group: {escape(_group_counts(test.groups) + note)}")
    if report.example is not None:
        console.print(f"[bold]Example[/bold] {escape(report.example.source)} (trained tokens highlighted, in [[ ]]):")
        console.print(_render_example(report.example))
        if report.example.note:
            console.print(f"[dim]{escape(report.example.note)}[/dim]")
    near_copies = report.test.near_copies if report.test is not None else None
    for warning in report.warnings:
        if near_copies is not None and warning == near_copies.warning():
            # Its pairs are listed above with their texts (the report keeps them in the line for --json and `tunelab run`).
            warning = near_copies.warning(examples=False) or warning
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    _print_notes([*report.layouts, *report.notes])


def _find_suspects(records: list[Any], eval_config: EvalConfig, seed: int, allow_network: bool) -> Any:
    from tunelab.cli.common import progress_display
    from tunelab.evaluation.baselines import find_suspect_labels

    with progress_display() as display:
        display.begin("suspect labels: embed texts, fit out-of-fold classifiers", unit="steps")
        return find_suspect_labels(records, config=eval_config, seed=seed, allow_network=allow_network, progress=_LineProgress(display))


class _LineProgress:
    """A library's progress (``expect(n)``, then called with each part done) drawn on the display's running line."""

    def __init__(self, display: Any) -> None:
        self.display = display

    def expect(self, count: int) -> None:
        self.display.expect(count)

    def __call__(self, count: int) -> None:
        self.display.advance(count)


def _cut(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def render_suspects(suspects: Any, max_suspects: int | None) -> None:
    """Print the suspect labels of a SuspectReport: the most doubtful rows, then the count and share."""
    if suspects.left_out:
        console.print(f"[dim]note: labels with a single example are not checked for suspect labels: {escape(', '.join(suspects.left_out))}[/dim]")
    if suspects.skipped:
        console.print(f"[yellow]suspect labels not checked:[/yellow] {escape(suspects.skipped)}")
        return
    folds = suspects.settings.get("folds")
    shown = suspects.top(max_suspects)
    if shown:
        # One file (the usual case): its name in the title and the line alone in the column, so the text keeps the width.
        files = {suspect.source.rpartition(":")[0] for suspect in shown}
        one_file = next(iter(files)) if len(files) == 1 and "" not in files else None
        title = f"Suspect labels (top {len(shown)})" + (f" in {one_file}" if one_file else "")
        table = Table(title=escape(title), title_justify="left")
        for column in ("line" if one_file else "where", "text", "given", "suggested", "p(given)", "p(suggested)"):
            table.add_column(column, no_wrap=column != "text", ratio=1 if column == "text" else None)
        for suspect in shown:
            where = suspect.source.rpartition(":")[2] if one_file else suspect.source
            table.add_row(escape(where), escape(_cut(suspect.text)), escape(suspect.given), escape(suspect.suggested),
                          f"{suspect.p_given:.2f}", f"{suspect.p_suggested:.2f}")
        console.print(table)
    console.print(
        f"[bold]Suspect labels[/bold]: {len(suspects.suspects)} of {suspects.records} records ({suspects.share:.1%}); "
        f"out-of-fold {escape(suspects.model)} embeddings + logistic regression, {folds} folds. "
        "Candidates for a person to look at, not errors: the exit code does not change."
    )
    if suspects.weak:
        console.print(f"[yellow]{escape(suspects.weak)}[/yellow]")


def _print_notes(notes: list[str]) -> None:
    # How a file's columns were read (an Alpaca or ShareGPT file) among them: said by check and show alike.
    for note in notes:
        console.print(f"[dim]note: {escape(note)}[/dim]")


@data_app.command("check")
def check(
    path: str = typer.Argument(..., help="A file, folder, glob or dataset name."),
    task: str = typer.Option(..., "--task", "-t", help=TASK_HELP),
    model: str | None = typer.Option(None, "--model", "-m", help="Model whose tokenizer measures lengths (default: the default model when ready)."),
    test: str | None = typer.Option(None, "--test", help="A test file to check for leakage against PATH."),
    preset: str | None = typer.Option(None, "--preset", help="A known dataset's layout (banking77, snips, ...)."),
    max_length: int | None = typer.Option(None, "--max-length", help="Longest training sequence in tokens."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Drop invalid records (each is listed); exit 0."),
    limit: int | None = typer.Option(None, "--limit", help="Read only the first N rows."),
    text_field: str | None = typer.Option(None, "--text-field"),
    prompt_field: str | None = typer.Option(None, "--prompt-field"),
    completion_field: str | None = typer.Option(None, "--completion-field"),
    messages_field: str | None = typer.Option(None, "--messages-field"),
    label_field: str | None = typer.Option(None, "--label-field"),
    group_field: str | None = typer.Option(None, "--group-field", help="sft, classify: column naming each record's group (a country, a product); a row without it is an error."),
    system_prompt: str | None = typer.Option(None, "--system-prompt"),
    allow_network: bool = typer.Option(False, "--allow-network", help="Allow hub models/datasets."),
    no_tokens: bool = typer.Option(False, "--no-tokens", help="Skip token lengths (no tokenizer, no torch: starts in well under a second)."),
    suspect_labels: bool = typer.Option(
        False, "--suspect-labels", help="classify: list rows whose label looks wrong (confident learning on out-of-fold embedding-baseline probabilities)."
    ),
    max_suspects: int | None = typer.Option(None, "--max-suspects", min=0, help="How many suspect rows to list (default 20; the count covers all)."),
    embedding_model: str | None = typer.Option(None, "--embedding-model", help="Sentence-embedding model for --suspect-labels (default: the embedding baseline's)."),
    pii: str | None = typer.Option(
        None, "--pii", help="Personal data (e-mail, phone, card, IBAN, SSN, IPv4) in the texts: warn (default) or off. Never changes the exit code."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Report every problem in a dataset; exit code 2 when there are errors (as for any bad input)."""
    from tunelab.data.check import check_data
    from tunelab.data.read import read_records

    if suspect_labels and task != "classify":
        raise ConfigError(f"--suspect-labels checks classify labels, not --task {task}")
    data = config_from_options(
        DataConfig,
        preset=preset, max_length=max_length, skip_invalid=skip_invalid, limit=limit, text_field=text_field,
        prompt_field=prompt_field, completion_field=completion_field, messages_field=messages_field,
        label_field=label_field, group_field=group_field, system_prompt=system_prompt, pii=pii,
    )  # fmt: skip
    eval_config = config_from_options(EvalConfig, embedding_model=embedding_model)
    tokenizer = None if no_tokens else _tokenizer(model, allow_network)
    # Read once: the check and the suspects see the same records.
    read = read_records(path, task, data) if suspect_labels else None
    report = check_data(path, task, data, tokenizer=tokenizer, test_path=test, read=read)
    suspects = _find_suspects(read.records, eval_config, data.seed, allow_network) if read is not None else None
    if as_json:
        summary = report.to_dict()
        if suspects is not None:
            summary["suspect_labels"] = suspects.to_dict(max_suspects)
        print_json(summary)
    else:
        render_report(report)
        if suspects is not None:
            render_suspects(suspects, max_suspects)
    if not report.ok:
        # 2 as for every user mistake: a crash exits 1, so a script (and the fuzz tests) can tell them apart.
        raise typer.Exit(2)


@data_app.command("show")
def show(
    path: str = typer.Argument(..., help="A file, folder, glob or dataset name."),
    task: str = typer.Option(..., "--task", "-t", help=TASK_HELP),
    count: int = typer.Option(3, "-n", help="How many examples."),
    model: str = typer.Option("default", "--model", "-m", help="Model whose chat template and tokenizer are used."),
    preset: str | None = typer.Option(None, "--preset"),
    max_length: int | None = typer.Option(None, "--max-length"),
    system_prompt: str | None = typer.Option(None, "--system-prompt"),
    allow_network: bool = typer.Option(False, "--allow-network"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (\\[\\[trained]] spans bracketed)."),
) -> None:
    """Render the first N examples exactly as they will be trained, trained tokens highlighted."""
    from tunelab.data.check import render_example
    from tunelab.data.formats import invalid_records
    from tunelab.data.labels import LabelMap
    from tunelab.data.read import read_records
    from tunelab.data.records import ClassifyRecord
    from tunelab.runs import load_tokenizer

    data = config_from_options(DataConfig, preset=preset, max_length=max_length, system_prompt=system_prompt, skip_invalid=True)
    result = read_records(path, task, data)
    tokenizer = load_tokenizer(model, allow_network)
    classify_records = [r for r in result.records if isinstance(r, ClassifyRecord)]
    label_map = LabelMap.for_records(classify_records, tokenizer) if classify_records else None
    examples = [render_example(record, tokenizer, data, label_map) for record in result.records[:count]]
    if as_json:
        print_json([{"source": e.source, "bracketed": e.bracketed(), "note": e.note} for e in examples])
        return
    for example in examples:
        console.rule(escape(example.source))
        console.print(_render_example(example))
        if example.note:
            console.print(f"[dim]{escape(example.note)}[/dim]")
    _print_notes(result.layouts)
    if result.errors:
        console.print(f"[yellow]{invalid_records(result.errors)} invalid record(s) not shown; run `tunelab data check`[/yellow]")


@data_app.command("split")
def split(
    config: Path = typer.Argument(..., help="A run config (YAML)."),
    overrides: list[str] = typer.Argument(None, metavar="[KEY=VALUE]...", help="key=value overrides, e.g. data.seed=1."),
    save: Path | None = typer.Option(None, "--save", help="Write split.json here."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Split the config's data into train/validation/test and print the sizes (and warnings)."""
    from tunelab.data.split import make_split
    from tunelab.tasks.pipeline import near_copy_warning, too_few_group_examples, too_few_test_examples

    run_config = load_config(config, overrides or [])
    result = make_split(run_config)
    if save is not None:
        result.save(save)  # as `tunelab run` saves it: the verdict's warning below is shown, not saved
    small = too_few_test_examples(run_config, result)
    if small:
        # Before any compute, as `tunelab run`'s split step says it: this split's test set cannot give a verdict.
        result.warnings.append(small)
    result.warnings.extend(too_few_group_examples(run_config, result))  # each group too small for its own verdict
    near = near_copy_warning(result)
    if near:
        result.warnings.append(near)  # as the run's split step says it: test requests a word or a number from training
    if as_json:
        summary = result.to_dict()
        for side in ("train", "validation", "test"):
            summary[side] = len(summary[side])
        print_json(summary)
        return
    table = Table(title=f"Split of {escape(run_config.data.train or '')}", title_justify="left")
    for column in ("side", "records", "from"):
        table.add_column(column)
    sizes = result.sizes()
    table.add_row("train", str(sizes["train"]), escape(run_config.data.train or ""))
    table.add_row("validation", str(sizes["validation"]), escape(result.validation_from))
    table.add_row("test", str(sizes["test"]), escape(result.test_from))
    console.print(table)
    console.print(f"seed {result.seed}, data fingerprint {result.data_fingerprint}, split fingerprint {result.fingerprint}")
    for error in result.skipped:
        console.print(f"[yellow]skipped:[/yellow] {escape(str(error))}")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    if save is not None:
        console.print(f"saved {escape(str(save))}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
