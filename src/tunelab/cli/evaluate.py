"""``tunelab eval``, ``tunelab report`` and ``tunelab review``: score a model, report a run, blind A/B review."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from tunelab.cli.common import (
    check_output_file,
    config_from_options,
    console,
    error_console,
    print_group_lines,
    print_json,
    progress_display,
    verdict_rich_table,
)
from tunelab.errors import ConfigError, DataError

review_app = typer.Typer(help="Blind human A/B review of base vs tuned outputs.", no_args_is_help=True)

HIDDEN_METRICS = {"primary", "per_class", "confusion_matrix", "unknown_label_examples"}
# The config fields whose option is spelled otherwise (a field max_length is the option --max-length).
EVAL_OPTIONS = {"system_prompt": "--system", "max_test_examples": "--limit", "bootstrap_samples": "--samples"}


def _metrics_table(result) -> Table:
    table = Table(title=f"{result.task} evaluation of {result.model} on {result.n} examples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        if name in HIDDEN_METRICS:
            continue
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        table.add_row(f"[bold]{name}[/bold]" if name == result.metrics.get("primary") else name, shown)
    return table


def render_usage(usage: dict) -> str:
    """One line on what a remote model's requests used and cost (an unknown price is shown as unknown)."""
    cost = "unknown (no price in the table)" if usage.get("cost_usd") is None else f"${usage['cost_usd']:.4f}"
    paid = "" if usage.get("paid_usd") is None else f", paid now ${usage['paid_usd']:.4f}"
    latency = "" if usage.get("latency_median_s") is None else f", median latency {usage['latency_median_s'] * 1000:.0f} ms"
    return (f"remote: {usage['requests']} requests ({usage['cached']} from the cache, {usage['failed']} failed), "
            f"{usage['input_tokens']} input + {usage['output_tokens']} output tokens, cost {cost}{paid}{latency}")


def render_comparison(comparison) -> Table:
    """A rich table of a ``tunelab.evaluation.Comparison`` (also used by ``tunelab compare``)."""
    table = Table(title=f"{comparison.name_b} vs {comparison.name_a} ({comparison.task}, n={comparison.n})")
    for column in ("metric", "before (A)", "after (B)", "difference", "95% CI", "outcome"):
        table.add_column(column, justify="left" if column in ("metric", "outcome") else "right")
    colours = {"better": "green", "worse": "red"}
    for m in comparison.metrics:
        name = f"[bold]{m.name}[/bold]" if m.name == comparison.primary else m.name
        outcome = f"[{colours[m.outcome]}]{m.outcome}[/]" if m.outcome in colours else m.outcome
        if m.not_compared:  # one side has no value of it (a preference run's reference): no difference, no interval
            table.add_row(name, _number(m.before), _number(m.after), "-", "-", f"{outcome}: {m.not_compared}")
            continue
        table.add_row(name, f"{m.before:.4g}", f"{m.after:.4g}", f"{m.difference:+.4g}", f"[{m.low:+.4g}, {m.high:+.4g}]", outcome)
    return table


def _number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "-"


def print_verdict(verdict) -> None:
    """The verdict table, its warnings and the one-line verdict (``tunelab eval``, ``report`` and ``run``)."""
    console.print(verdict_rich_table(verdict.to_dict(), tuned=verdict.tuned))
    for name, reason in getattr(verdict, "skipped", {}).items():
        console.print(f"[yellow]{name} skipped:[/yellow] {reason}")
    for warning in verdict.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    from tunelab.ui.views import verdict_kind  # the one colour rule, as `tunelab runs` shows it

    colour = {"paid-off": "green", "lost": "red", "too-few": "dim"}.get(verdict_kind(verdict.verdict), "yellow")
    console.print(f"[bold {colour}]verdict: {verdict.verdict}[/]  {verdict.summary}")
    print_group_lines(verdict.to_dict())


def _baseline_names(option: str | None, task: str, train: Path | None) -> list[str]:
    from tunelab.config import TASK_BASELINES

    if option is None:
        return list(TASK_BASELINES.get(task, ())) if train is not None else []
    if option.strip() in ("", "none"):
        return []
    if option.strip() == "all":
        return list(TASK_BASELINES.get(task, ()))
    return list(dict.fromkeys(name.strip() for name in option.split(",") if name.strip()))


def _predictions_files(options: list[str]) -> dict[str, str]:
    """``--predictions FILE`` / ``NAME=FILE`` as {name: file}; a name is the file's stem unless given."""
    from tunelab.config import file_stem

    files: dict[str, str] = {}
    for option in options:
        name, _, path = option.rpartition("=") if "=" in option and not Path(option).exists() else ("", "", option)
        name = name.strip() or file_stem(path)
        if name in files:
            raise ConfigError(f"--predictions: two files named {name}", "name one of them: --predictions NAME=FILE")
        files[name] = path
    return files


def _predictions_entries(files: dict[str, str], options: list[str]) -> dict[str, dict[str, str]]:
    """The ``eval.predictions`` entries of ``--predictions`` files with their ``--predictions-field NAME.FIELD=VALUE``s.

    One option per field, keyed by the file's name, like the config's dotted ``KEY=VALUE`` overrides: with several
    files each column is named for one of them, never guessed; NAME may be left out when there is one file.

    Raises:
        ConfigError: one line naming the option as given.
    """
    from pydantic import ValidationError

    from tunelab.config import PredictionsConfig

    entries: dict[str, dict[str, str]] = {name: {"path": path} for name, path in files.items()}
    named = ", ".join(files) or "none"
    for option in options:
        said = f"--predictions-field {option}"
        key, equals, value = option.partition("=")
        if not equals or not key.strip():
            raise ConfigError(f"{said}: give [NAME.]FIELD=VALUE", "e.g. --predictions-field current.text_field=request")
        # Fields have no dots, names may (current.v2): the last dot splits them.
        name, _, field = key.strip().rpartition(".")
        if not name:
            if len(files) != 1:
                raise ConfigError(f"{said}: name the file ({named}): NAME.{key.strip()}={value}")
            name = next(iter(files))
        if name not in files:
            raise ConfigError(f"{said}: no --predictions file is named {name} (named: {named})")
        if field == "path" or field not in PredictionsConfig.model_fields:
            fields = ", ".join(f for f in PredictionsConfig.model_fields if f != "path")
            raise ConfigError(f"{said}: {field} is no field of a predictions file (fields: {fields})")
        entries[name][field] = value
    for name, entry in entries.items():
        try:
            PredictionsConfig(**entry)
        except ValidationError as error:
            item = error.errors()[0]
            field = str(item["loc"][0]) if item["loc"] else ""
            option = next((o for o in options if o.partition("=")[0].strip() in (f"{name}.{field}", field)), f"{name}.{field}")
            raise ConfigError(f"--predictions-field {option}: {str(item['msg']).removeprefix('Value error, ')}") from None
    return entries


def evaluate_command(
    data: str = typer.Option(..., "--data", "-d", help="Test file (any format `tunelab data check` reads)."),
    task: str = typer.Option(..., "--task", "-t", help="text, sft or classify."),
    model: str = typer.Option("default", "--model", "-m", help="default, a model or run folder, a .gguf, or a hub id."),
    adapter: Path = typer.Option(None, "--adapter", help="A run folder: evaluate its tuned model (overrides --model)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the evaluation (metrics + every prediction) to this JSON file."),
    baseline: bool = typer.Option(
        None, "--baseline/--trained-prompt", help="classify: zero-shot prompt listing the labels (default: when the model has no labels.json)."
    ),
    labels: Path = typer.Option(None, "--labels", help="classify: a run's labels.json, so a base model is scored over the same label tokens."),
    preset: str = typer.Option(None, "--preset", help="Column mapping of a known dataset (banking77, scitldr, ...)."),
    system: str = typer.Option(None, "--system", help="System message before every prompt (default: a run's own data.system_prompt)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Evaluate a seeded sample of at most N examples."),
    max_new_tokens: int = typer.Option(
        None, "--max-new-tokens", min=1, show_default=False, help="sft: longest answer in tokens (default 128, a run's own eval.max_new_tokens)."
    ),
    max_length: int = typer.Option(
        None, "--max-length", min=8, show_default=False,
        help="Longest prompt / perplexity window in tokens (default 512, a run's own data.max_length).",
    ),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Examples per forward pass."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample (and of sampling when temperature > 0)."),
    temperature: float = typer.Option(
        None, "--temperature", min=0.0, show_default=False, help="sft: 0 is greedy (the default; a run's own eval.temperature)."
    ),
    top_p: float = typer.Option(None, "--top-p", min=0.0, max=1.0, show_default=False, help="sft: nucleus mass (default 1, a run's own eval.top_p)."),
    allow_network: bool = typer.Option(False, "--allow-network", help="Allow downloading a hub model."),
    train: Path = typer.Option(None, "--train", help="Training file the classical, few-shot and retrieval baselines learn from."),
    baselines: str = typer.Option(
        None, "--baselines", help="Comma list of base, classical, embedding, few_shot, retrieval, or all / none (default: all that apply with --train, else none)."
    ),
    out_of_scope_label: str = typer.Option(
        None, "--out-of-scope-label", help="classify: label of out-of-scope queries (default: the run's out_of_scope.json)."
    ),
    validation: Path = typer.Option(
        None, "--validation", help="classify with an out-of-scope label: validation file each baseline's threshold is chosen on."
    ),
    predictions: list[str] = typer.Option(
        None, "--predictions", help="The current system's answers to the test requests, as a baseline: FILE (named after its "
        "stem) or NAME=FILE; classify: text + label (+ probability), sft: prompt + completion. Repeatable.",
    ),
    predictions_field: list[str] = typer.Option(
        None, "--predictions-field", metavar="[NAME.]FIELD=VALUE", help="A column (or format) of the --predictions file NAME, e.g. "
        "current.text_field=request, current.label_field=routed_to (NAME may be left out with one file). Repeatable.",
    ),
    few_shot_tokens: int = typer.Option(1024, "--few-shot-tokens", min=0, help="few_shot: token budget for the examples in the prompt."),
    samples: int = typer.Option(1000, "--samples", min=100, help="Bootstrap resamples of the comparison with the baselines."),
    metric: str = typer.Option(
        None, "--metric", help="The metric the verdict is on (eval.metric; default: a run's own, else the task's: sft rougeL). "
        "sft answers that are JSON: json_valid, json_exact, json_f1; tool calls: tool_name_accuracy, tool_call_exact.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    endpoint: str = typer.Option(None, "--endpoint", help="Evaluate a remote model: the base URL of an OpenAI-compatible API."),
    endpoint_model: str = typer.Option(None, "--endpoint-model", help="The model's name at --endpoint."),
    endpoint_key_env: str = typer.Option(None, "--endpoint-key-env", help="Environment variable with the --endpoint API key."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Remote model: requests in flight at once."),
    max_usd: float = typer.Option(
        None, "--max-usd", min=0.0, help="Remote models (the evaluated one and remote baselines): ask nothing when the expected price "
        "of their requests is higher (by the price table)."
    ),
    pii: str = typer.Option(
        None, "--pii", help="Personal data in the requests a remote model or baseline is asked (the test file's; --validation is "
        "never sent): warn (name the host; the default, as data.pii's), refuse (ask nothing) or off.",
    ),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Drop invalid records of --data, --train and --validation (each is listed) instead of stopping."),
    group_field: str = typer.Option(
        None, "--group-field", help="sft, classify: column of --data naming each example's group (a country, a product): the verdict by group."
    ),
) -> None:
    """Evaluate any model (or a run's tuned model, or a remote one) on any test file, against baselines, and optionally save every prediction.

    With baselines, each is saved beside --out as OUT_STEM.<baseline>.json and the verdict is printed.
    A remote model: --endpoint URL --endpoint-model NAME, or --model openai:NAME (key in OPENAI_API_KEY).
    """
    from tunelab.config import DataConfig, EvalConfig
    from tunelab.data.labels import LabelMap
    from tunelab.evaluation.answering import open_model
    from tunelab.evaluation.baselines import estimate_remote_baselines, evaluate_with_baselines
    from tunelab.evaluation.evaluate import check_verdict_metric

    try:
        # Written by the data layer; imported here so the other commands work without it.
        from tunelab.data.formats import invalid_records
        from tunelab.data.read import load_result
    except ImportError:
        raise DataError("reading test files needs tunelab.data.read, which this installation lacks") from None
    data_config = config_from_options(DataConfig, EVAL_OPTIONS, preset=preset, system_prompt=system, max_length=max_length,
                                      max_test_examples=limit, seed=seed, skip_invalid=skip_invalid, group_field=group_field, pii=pii)

    def load_records(path: str, task: str, config: DataConfig) -> list:
        # The records of one file; with --skip-invalid the dropped ones are listed (the error's hint promises it).
        result = load_result(path, task, config)
        if result.errors:
            error_console.print(f"warning: skipped {invalid_records(result.errors)} invalid record(s) in {path}:\n  {result.error_summary()}",
                                markup=False, highlight=False, soft_wrap=True)
        return result.records

    files = _predictions_files(predictions or [])
    eval_config = config_from_options(EvalConfig, EVAL_OPTIONS, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                                      temperature=temperature, top_p=top_p, few_shot_tokens=few_shot_tokens, bootstrap_samples=samples, metric=metric,
                                      predictions=_predictions_entries(files, predictions_field or []) or None)
    check_output_file(out)
    names = [*_baseline_names(baselines, task, train), *files]
    records = load_records(data, task, data_config)
    learn_config = DataConfig(preset=preset, system_prompt=system, skip_invalid=skip_invalid)
    train_records = load_records(str(train), task, learn_config) if train is not None else []
    validation_records = load_records(str(validation), task, learn_config) if validation is not None else None
    label_map = None
    if labels is not None:
        if not labels.is_file():
            raise DataError(f"labels file not found: {labels}", "pass a run's labels.json")
        try:
            label_map = LabelMap.load(labels)
        except (ValueError, KeyError, TypeError) as error:  # not JSON (JSONDecodeError, UnicodeDecodeError are ValueErrors), or not a map
            raise DataError(f"{labels}: not a labels.json ({type(error).__name__}: {error})", "pass a run's labels.json") from None
    remote = _endpoint(endpoint, endpoint_model, endpoint_key_env, model, concurrency)
    # One model interface: a remote endpoint, a run (--adapter) or any model name answer the same way.
    answering = open_model(remote if remote is not None else str(adapter or model), allow_network=allow_network)
    if answering.run is not None:
        # A run is scored as its own evaluation scored it and as it is served (generate, serve): its system prompt, prompt
        # length and decoding, unless an option says otherwise (None above is an option not given).
        run_data, run_eval = answering.run.config.data, answering.run.config.eval
        own_data = {"system_prompt": run_data.system_prompt, "max_length": run_data.max_length, "stride": run_data.stride}
        own_eval = {"max_new_tokens": run_eval.max_new_tokens, "temperature": run_eval.temperature, "top_p": run_eval.top_p,
                    "metric": run_eval.metric}
        data_config = config_from_options(DataConfig, EVAL_OPTIONS, **{**own_data, **data_config.model_dump(exclude_unset=True)})
        eval_config = config_from_options(EvalConfig, EVAL_OPTIONS, **{**own_eval, **eval_config.model_dump(exclude_unset=True)})
    if answering.out_of_scope_label is not None and out_of_scope_label is None:
        out_of_scope_label = answering.out_of_scope_label
    if out_of_scope_label is not None and task == "classify":
        # A remote model too: its prompt offers the label (``RemoteModel.evaluate``), and so does each remote baseline's.
        # Validated like the other options (model_copy would take an empty label unchecked).
        data_config = config_from_options(DataConfig, EVAL_OPTIONS, **{**data_config.model_dump(exclude_unset=True), "out_of_scope_label": out_of_scope_label})
    if baseline is None:
        baseline = task == "classify" and answering.label_map is None
    # Before any answer is asked for (a remote one costs money): a metric these references cannot measure is refused now.
    check_verdict_metric(task, records, data_config, eval_config.metric)
    _say_pii_sent(records, answering, names, eval_config, data_config, task)
    labels = _remote_labels(label_map if label_map is not None else answering.label_map, task, train_records, records)
    hint = "raise --max-usd, or evaluate fewer examples (--limit)"
    own = answering.estimate_evaluate(records, task, config=eval_config, data_config=data_config, labels=labels)
    say_request_cost(own, max_usd, hint)
    _say_baselines_cost(own, estimate_remote_baselines(names, records, task, config=eval_config, data_config=data_config, labels=labels),
                        max_usd, hint)
    verb = "asking" if answering.remote else "evaluating"
    with progress_display(quiet=as_json) as display:
        display.begin(f"{verb} {answering.name}", total=min(len(records), limit or len(records)),
                      unit="requests" if answering.remote else "examples")

        def on_baseline(name: str, status: str, details: dict) -> None:
            display.on_event("baseline", f"baseline {status}" if status in ("start", "done") else status, {"baseline": name, **details})

        result, opponents, verdict = evaluate_with_baselines(
            answering, records, task, baselines=names, train=train_records, config=eval_config, data_config=data_config,
            label_map=label_map, zero_shot_prompt=baseline, allow_network=allow_network,
            progress=display.advance, validation=validation_records, on_event=on_baseline,
        )
    _show_evaluation(result, opponents, verdict, out, as_json)


def say_request_cost(estimate, max_usd: float | None, hint: str, cap_name: str = "--max-usd") -> None:
    """The one line a command that asks a paid model says before its first request (on stderr: --json keeps stdout),
    and its refusal when the expected cost is over the cap. Nothing for a model that runs here (no estimate)."""
    if estimate is None:
        return
    error_console.print(estimate.describe(cap_name, max_usd), markup=False, highlight=False, soft_wrap=True)
    estimate.refuse_over(cap_name, max_usd, hint)


def _say_baselines_cost(own: Any, baselines: dict[str, Any], max_usd: float | None, hint: str) -> None:
    """Each remote baseline's line before its first request (on stderr), and the refusal when the expected price of all
    the requests (the evaluated model's, ``own``, and the baselines') is over ``max_usd``: nothing is asked then. An
    unknown price is not counted (never as 0): its line says the cap cannot be checked."""
    from tunelab.errors import BudgetExceeded
    from tunelab.estimate.plan import money

    for name, estimate in baselines.items():
        error_console.print(f"baseline {name}: {estimate.describe('--max-usd', max_usd)}", markup=False, highlight=False, soft_wrap=True)
    known = [e.usd_expected for e in [own, *baselines.values()] if e is not None and e.usd_expected is not None]
    if baselines and max_usd is not None and sum(known) > max_usd:
        asked = [*(["the evaluated model"] if own is not None else []), *baselines]
        raise BudgetExceeded(f"asking the remote models would cost about {money(sum(known))} ({', '.join(asked)}) > --max-usd "
                             f"{max_usd:g}: nothing was asked", hint)


def _say_pii_sent(records: Any, answering: Any, names: list[str], eval_config: Any, data_config: Any, task: str) -> None:
    """Before a remote model (the one evaluated, or a remote baseline of ``names``, the --baselines) is asked the test
    requests: personal data in them is said with each host, as `tunelab run` says it (``data.pii``). The ``--validation``
    rows are never sent: a remote baseline has no threshold to choose on them (``baselines.calibrated_baseline``)."""
    from tunelab.config import REMOTE_TASKS
    from tunelab.data.pii import check_sent

    # The --baselines names, as evaluate_with_baselines is given them (eval_config.baselines is not set here).
    baselines = [e.base_url for name in names if (e := eval_config.endpoint_of(name)) is not None] if task in REMOTE_TASKS else []
    urls = [answering.client.endpoint.base_url] if answering.remote else []
    for line in check_sent(records, [*urls, *baselines], data_config.pii, f"the test file ({len(records)} requests)"):
        error_console.print(f"[yellow]warning:[/yellow] {escape(line)}")  # stderr: --json stays JSON


def _remote_labels(label_map, task: str, train: list, records: list) -> list[str] | None:
    """The categories a remote model is asked over, as ``evaluate_with_baselines`` chooses them for it."""
    if task != "classify":
        return None
    return list(label_map.labels) if label_map is not None else sorted({r.label for r in (train or records)})


def _endpoint(url: str | None, name: str | None, key_env: str | None, model: str, concurrency: int):
    """The remote model named on the command line (--endpoint/--endpoint-model, or --model openai:NAME), or None."""
    from tunelab.config import EndpointConfig

    if url is None and name is None:
        parsed = EndpointConfig.parse_name(model)
        return parsed.model_copy(update={"concurrency": concurrency}) if parsed else None
    if not url or not name:
        raise DataError("a remote model needs both --endpoint URL and --endpoint-model NAME")
    return config_from_options(EndpointConfig, {"base_url": "--endpoint", "name": "--endpoint-model", "api_key_env": "--endpoint-key-env"},
                               base_url=url, name=name, api_key_env=key_env, concurrency=concurrency)


def _show_evaluation(result, opponents, verdict, out: Path | None, as_json: bool) -> None:
    from tunelab.paths import baseline_file_stem

    saved = []
    if out:
        saved.append(result.save(out))
        saved += [opponent.save(out.with_name(f"{out.stem}.{baseline_file_stem(name)}.json")) for name, opponent in opponents.items()]
    if as_json:
        print_json({
            "model": result.model, "task": result.task, "n": result.n, "metrics": result.metrics, "warnings": result.warnings,
            "out": str(out) if out else None, "baselines": {name: o.metrics for name, o in opponents.items()},
            "baselines_skipped": dict(getattr(opponents, "skipped", {})),
            "verdict": verdict.to_dict() if verdict else None, "saved": [str(path) for path in saved],
            "usage": result.settings.get("usage"),
        })
        return
    console.print(_metrics_table(result))
    if result.settings.get("usage"):
        console.print(render_usage(result.settings["usage"]))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    for name, opponent in opponents.items():
        for warning in opponent.warnings:
            console.print(f"[yellow]warning ({name}):[/yellow] {warning}")
    if verdict is not None:
        print_verdict(verdict)
    else:  # every baseline skipped: still said, never silently
        for name, reason in getattr(opponents, "skipped", {}).items():
            console.print(f"[yellow]{name} skipped:[/yellow] {reason}")
    if saved:
        console.print("saved " + ", ".join(str(path) for path in saved))


def report_command(
    run: Path = typer.Argument(..., help="A run folder with eval/tuned.json and baselines (eval/base.json, eval/classical.json, ...)."),
    seed: int = typer.Option(None, "--seed", help="Bootstrap seed (default: the run's eval.seed)."),
    samples: int = typer.Option(None, "--samples", min=100, help="Bootstrap resamples (default: the run's eval.bootstrap_samples)."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Compare a run's tuned model with every baseline in eval/ and write report.md + report.html into the run."""
    from tunelab.evaluation.report import report_run

    verdict, files = report_run(run, seed=seed, samples=samples)
    if as_json:
        print_json({**verdict.to_dict(), "files": [str(p) for p in files.paths]})
        return
    print_verdict(verdict)
    console.print("wrote " + ", ".join(str(p) for p in files.paths))


def _pair(run: Path | None, base: Path | None, tuned: Path | None) -> tuple[Path, Path]:
    if run is not None:
        from tunelab.evaluation.review import review_opponent
        from tunelab.runs import RunFolder

        folder = RunFolder(run)
        # A mistyped run is named as such, before the default sheet's folder is made for it.
        folder.require_folder()
        return review_opponent(run), folder.tuned_eval
    if base is None or tuned is None:
        raise DataError("name a run folder, or both --base and --tuned evaluation files")
    return base, tuned


@review_app.command("export")
def review_export(
    run: Path = typer.Argument(None, help="A run folder (uses eval/base.json and eval/tuned.json)."),
    base: Path = typer.Option(None, "--base", help="The base model's evaluation JSON (instead of RUN)."),
    tuned: Path = typer.Option(None, "--tuned", help="The tuned model's evaluation JSON (instead of RUN)."),
    out: Path = typer.Option(None, "--out", "-o", help="The sheet to write (default: RUN/review.csv)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the row order and of the A/B sides."),
) -> None:
    """Write a blind A/B sheet (id, prompt, output_a, output_b, preference) and its key file.

    A text run's sheet holds its continuation samples (eval.text_samples): the prompt is a held-out document's opening,
    the outputs two continuations, and a reference column the author's own continuation."""
    from tunelab.evaluation.result import EvalResult
    from tunelab.evaluation.review import export_review, load_sheet

    base_path, tuned_path = _pair(run, base, tuned)
    if out is None:
        if run is None:
            raise DataError("--out is required without a run folder")
        from tunelab.runs import RunFolder

        out = RunFolder(run).review_sheet
    check_output_file(out)
    sheet, key = export_review(EvalResult.load(base_path), EvalResult.load(tuned_path), out, seed=seed, replace=False)
    console.print(f"wrote {sheet} (fill the preference column with A, B or tie) and its key {key} (keep it from the reviewer)")
    written = load_sheet(sheet, key)
    if written.question:  # a text run's sheet: continuations of openings, the author's own in the reference column
        console.print(f"the question for the reviewer: {written.question} (the reference column is the author's own continuation)",
                      markup=False, highlight=False)
    identical = written.identical
    if identical:
        console.print(f"{len(identical)} identical answers not asked (both models gave the same answer: no judgement of either)",
                      markup=False, highlight=False)


def _registry_review(run: str, registry_path: Path | None):
    """(registry, run record, sheet) of a run whose review was done in `tunelab ui` (judgments in the registry)."""
    from tunelab.cli.runs import open_registry
    from tunelab.evaluation.review import load_sheet, review_sheet_path

    registry = open_registry(registry_path)  # a folder names the file it likely meant, as for the other registry commands
    record = registry.get_run(run)
    if not record.run_dir:
        raise DataError(f"run {record.name} has no run folder recorded")
    return registry, record, load_sheet(review_sheet_path(record.run_dir))


RUN_REVIEW_OPTION = typer.Option(None, "--run", help="Instead of SHEET: a run reviewed in `tunelab ui` (judgments in the registry).")
REVIEW_REGISTRY_OPTION = typer.Option(None, "--registry", help="The registry with --run (default: runs/registry.db).")


@review_app.command("score")
def review_score(
    sheet: Path = typer.Argument(None, help="The filled-in sheet."),
    key: Path = typer.Option(None, "--key", help="Its key file (default: SHEET with .key.json)."),
    run: str = RUN_REVIEW_OPTION,
    registry_path: Path = REVIEW_REGISTRY_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Score a filled-in A/B sheet (or a run's reviews in the registry): the tuned model's win rate with a 95% interval (ties count half)."""
    from tunelab.evaluation.review import score_registry_reviews, score_review

    if (sheet is None) == (run is None):
        raise DataError("give either a filled-in SHEET or --run RUN")
    if run is not None:
        registry, record, review_sheet = _registry_review(run, registry_path)
        score = score_registry_reviews(registry, record.id, review_sheet)
    else:
        score = score_review(sheet, key)
    if as_json:
        print(json.dumps(score.to_dict(), indent=2))
        return
    console.print(
        f"{score.tuned} preferred over {score.base}: win rate {score.win_rate:.1%} "
        f"(95% CI {score.low:.1%} to {score.high:.1%}; {score.method})"
    )
    # Named as the sheet's key names them: the opponent is the strongest baseline when the base model was skipped.
    console.print(f"{score.tuned} wins {score.tuned_wins}, {score.base} wins {score.base_wins}, ties {score.ties} (each counted half), "
                  f"not judged {score.unjudged}", markup=False, highlight=False)
    if score.identical:
        console.print(f"{score.identical} identical answers not asked (both models gave the same answer: no judgement of either)",
                      markup=False, highlight=False)
    if score.missing:
        console.print(f"{score.missing} rows of the key are not in the sheet (deleted?): not judged either", markup=False, highlight=False)


@review_app.command("pairs")
def review_pairs_command(
    sheet: Path = typer.Argument(None, help="The filled-in sheet."),
    out: Path = typer.Option(..., "--out", "-o", help="The preference pairs to write (JSONL: prompt, chosen, rejected)."),
    key: Path = typer.Option(None, "--key", help="Its key file (default: SHEET with .key.json)."),
    run: str = RUN_REVIEW_OPTION,
    registry_path: Path = REVIEW_REGISTRY_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Turn a filled-in A/B sheet (or a run's reviews in the registry) into preference pairs for `task: preference` (ties and blank rows left out)."""
    from tunelab.evaluation.review import registry_review_pairs, review_pairs

    if (sheet is None) == (run is None):
        raise DataError("give either a filled-in SHEET or --run RUN")
    check_output_file(out)
    if run is not None:
        registry, record, review_sheet = _registry_review(run, registry_path)
        result = registry_review_pairs(registry, record.id, review_sheet, out)
    else:
        result = review_pairs(sheet, out, key)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    console.print(
        f"wrote {result.pairs} preference pairs to {result.path} (chosen: tuned {result.tuned_chosen}, base {result.base_chosen}); "
        f"left out {result.ties} ties and {result.unjudged} blank rows"
    )


@review_app.command("judge")
def review_judge(
    run: str = typer.Argument(..., help="The run (name or id in the registry) whose blind sheet the judge reviews."),
    judge: str = typer.Option(..., "--judge", help="The judge model: openai:NAME (key in OPENAI_API_KEY), or its name at --endpoint."),
    endpoint: str = typer.Option(None, "--endpoint", help="The base URL of the judge's OpenAI-compatible API (with --judge NAME)."),
    endpoint_key_env: str = typer.Option(None, "--endpoint-key-env", help="Environment variable with the --endpoint API key."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Judge requests in flight at once."),
    max_usd: float = typer.Option(None, "--max-usd", min=0.0, help="Ask nothing when the expected price of the judge's requests is higher."),
    pii: str = typer.Option(None, "--pii", help="Personal data in the rows sent to the judge: warn (name the host), refuse (ask nothing) "
                            "or off. Default: the run's own data.pii."),
    registry_path: Path = REVIEW_REGISTRY_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Let a strong model judge the run's blind A/B sheet as one more reviewer (judge:NAME in the registry).

    Each row is asked in both orders; a row whose two orders disagree is a tie (position bias). Answers are cached:
    a rerun asks nothing again and records nothing twice. `tunelab review score --run RUN` then counts the judge
    with the people, and the Review page shows their agreement.
    """
    from tunelab.cli.runs import open_registry
    from tunelab.config import DataConfig
    from tunelab.evaluation.judge import judge_run
    from tunelab.evaluation.remote import remote_client

    if pii is not None:
        pii = config_from_options(DataConfig, pii=pii).pii  # data.pii's own values, refused as any option is
    remote = _endpoint(endpoint, judge if endpoint else None, endpoint_key_env, judge, concurrency)
    if remote is None:
        raise DataError(f"--judge {judge} names no remote model", "give --judge openai:NAME, or --judge NAME --endpoint URL")
    registry = open_registry(registry_path)
    with progress_display(quiet=as_json) as display:
        display.begin(f"judge {remote.name} asking", unit="requests")
        outcome = judge_run(registry, run, remote_client(remote), progress=display.advance, max_usd=max_usd, pii=pii,
                            on_estimate=lambda estimate: error_console.print(estimate.describe("--max-usd", max_usd), markup=False,
                                                                             highlight=False, soft_wrap=True),
                            # stderr, as `tunelab eval` says it: --json stays JSON
                            on_warning=lambda line: error_console.print(f"[yellow]warning:[/yellow] {escape(line)}", soft_wrap=True))
    if as_json:
        print_json(outcome.to_dict())
        return
    say = {"markup": False, "highlight": False}
    console.print(f"{outcome.reviewer} judged {outcome.judged} of {outcome.rows} rows (each asked in both orders; "
                  f"{outcome.identical} with the same answer on both sides not asked); {outcome.recorded} judgments recorded", **say)
    if outcome.score is not None:
        score = outcome.score
        console.print(f"{score.tuned} preferred over {score.base} by the judge: win rate {score.win_rate:.1%} "
                      f"(95% CI {score.low:.1%} to {score.high:.1%}; {score.method})", **say)
        console.print(f"{score.tuned} wins {score.tuned_wins}, {score.base} wins {score.base_wins}, ties {score.ties} (each counted half)", **say)
    console.print(f"position bias: the two orders disagreed on {outcome.position_disagreements} rows (recorded as ties)", **say)
    if outcome.unparseable:
        console.print(f"unparseable: {outcome.unparseable} rows answered other than A, B or tie (nothing recorded; "
                      f"first: {outcome.first_unparseable!r})", **say)
    if outcome.failed:
        console.print(f"failed: {outcome.failed} rows whose requests failed after retries (nothing recorded; a rerun asks only them)", **say)
    for pair in outcome.agreements:
        other = pair.reviewer_b if pair.reviewer_a == outcome.reviewer else pair.reviewer_a
        kappa = "undefined" if pair.kappa is None else f"{pair.kappa:.2f}"
        console.print(f"agreement with {other}: {pair.agreed} of {pair.rows} shared rows, Cohen's kappa {kappa}", **say)
    if outcome.usage is not None:
        console.print(render_usage(outcome.usage.to_dict()), **say)


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate_command)
    app.command("report")(report_command)
    app.add_typer(review_app, name="review")
