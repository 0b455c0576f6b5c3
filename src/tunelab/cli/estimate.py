"""``tunelab estimate CONFIG [key=value ...]``: tokens, FLOPs, time, memory and money before a run."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer
from rich.table import Table

from tunelab.cli.common import console, print_json, progress_display
from tunelab.estimate.plan import duration, money, steps_text
from tunelab.paths import human_bytes


def _flops(value: float) -> str:
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.3g} FLOP"


def estimate(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="The run config (YAML)."),
    overrides: list[str] = typer.Argument(None, metavar="[KEY=VALUE]...", help="key=value overrides, e.g. train.epochs=1"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    no_calibrate: bool = typer.Option(False, "--no-calibrate", help="Skip the timed training steps on this machine."),
    steps: int = typer.Option(3, "--steps", min=1, help="Timed calibration steps (after one warm-up step)."),
    prices: Path | None = typer.Option(None, "--prices", help="Your own GPU/cloud price table (YAML)."),
    launch: str = typer.Option(
        None, "--launch", metavar="OPTIONS",
        help='The run as `tunelab train/run --launch` would train it, e.g. "--num_processes 8": a step takes batch_size '
        "x processes examples, and the GPUs share the training.",
    ),
) -> None:
    """Estimate a run before spending anything: tokens, FLOPs, time here and on GPUs, memory, price."""
    from tunelab.config import load_config
    from tunelab.estimate import estimate_from_config, load_price_table
    from tunelab.tasks.launch import launch_processes
    from tunelab.tasks.pipeline import remote_baseline_prices

    config = load_config(config_path, overrides or [])
    table = load_price_table(prices) if prices else None
    if config.train.backend != "local":
        _provider_estimate(config, table, as_json)
        return
    with progress_display(quiet=as_json) as display:
        display.begin("estimate: loading the model, counting tokens" + ("" if no_calibrate else ", timing training steps here"))
        split = _split(config)
        result = estimate_from_config(config, calibrate_here=not no_calibrate, calibration_steps=steps, prices=table,
                                      processes=launch_processes(launch), split=split)
        # As `tunelab run`'s estimate step: the remote baselines' requests, in the money and in budget.max_usd.
        result.with_remote_baselines(config, remote_baseline_prices(config, split, table))
        teacher = _teacher_estimate(config, table)
    if as_json:
        print_json({**result.as_dict(), **({"teacher": teacher} if teacher else {})})
        return

    tokens, flops, memory = result.tokens, result.flops, result.memory
    summary = Table(title=f"Estimate: {result.task}, {result.method}, model {result.model}", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    summary.add_row("training examples", f"{tokens.examples:,}" + (f" ({tokens.truncated_examples} truncated)" if tokens.truncated_examples else ""))
    summary.add_row("tokens per epoch (real / processed)", f"{tokens.real_tokens_per_epoch:,} / {tokens.processed_tokens_per_epoch:,}")
    if tokens.processes > 1:
        summary.add_row("processes × batch_size → examples a step", f"{tokens.processes} × {config.train.batch_size * config.train.grad_accum} "
                        f"→ {tokens.processes * config.train.batch_size * config.train.grad_accum}")
    summary.add_row("rows per epoch", f"{tokens.rows_per_epoch:,}" + (" (examples packed into rows)" if tokens.packed else ""))
    summary.add_row("optimizer steps", steps_text(asdict(tokens)))
    summary.add_row("training tokens", f"{tokens.train_tokens:,}" + (" (packed)" if tokens.packed else " (padded batches)"))
    summary.add_row("row length trained on", f"{tokens.seq_len}")
    summary.add_row("validation tokens", f"{tokens.validation_tokens:,} ({tokens.validations} passes)")
    summary.add_row("test tokens per evaluation", f"{tokens.test_tokens:,}")
    summary.add_row("parameters in matmuls / trainable", f"{flops.matmul_params:,} / {flops.trainable_params:,}")
    summary.add_row(
        "FLOPs per token (dense + attention)", f"{_flops(flops.dense_flops_per_token)} + {_flops(flops.attention_flops_per_token)}"
    )
    summary.add_row("training FLOPs", _flops(flops.train_flops))
    console.print(summary)

    here = Table(title=f"This machine ({result.here})" if result.here else "This machine")
    here.add_column("step")
    here.add_column("time", justify="right")
    if result.calibration is not None:
        calibration = result.calibration
        for step, seconds in (result.seconds or {}).items():
            here.add_row(step, duration(seconds))
        here.add_row("total", duration(result.total_seconds))
        calibration_line = (
            f"measured {calibration.tokens_per_second:,.0f} tokens/s, {calibration.seconds_per_step:.2f} s/step "
            f"(batch {calibration.batch_size} × {calibration.seq_len} tokens, {calibration.precision}, "
            f"{calibration.device}, {calibration.threads} threads; warm-up step {calibration.warmup_seconds:.2f} s excluded)"
        )
        if calibration.cached:
            measured = f" ({calibration.machine.describe()})" if calibration.machine else ""
            calibration_line += f"; read back from an earlier measurement on this machine{measured}"
        console.print(here)
        console.print(calibration_line)
        for note in result.notes:
            console.print(f"note: {note}")
    else:
        here.add_row("not calibrated", "run without --no-calibrate")
        console.print(here)

    mem = Table(title=f"Peak training memory ({result.precision})", show_header=False)
    mem.add_column("part")
    mem.add_column("bytes", justify="right")
    for part in ("weights", "autocast_copies", "gradients", "optimizer", "activations", "logits"):
        mem.add_row(part.replace("_", " "), human_bytes(getattr(memory, part)))
    mem.add_row("total", human_bytes(memory.total))
    if memory.available is not None:
        mem.add_row(f"available on {memory.device}", human_bytes(memory.available))
        mem.add_row("fits", "yes" if memory.fits else "[red]no[/red]")
    console.print(mem)

    on = f"{tokens.processes} of each GPU, " if tokens.processes > 1 else ""
    gpus = Table(title=f"On GPUs ({on}bf16, {result.utilization:.0%} utilization; prices as of {result.price_table_date}, verify)")
    for column in ("GPU", "time", "price", "fits memory"):
        gpus.add_column(column, justify="left" if column == "GPU" else "right")
    for gpu in result.gpus:
        gpus.add_row(gpu.name, duration(gpu.seconds), money(gpu.usd), "yes" if gpu.fits else "no")
    console.print(gpus)

    cloud = Table(title="Hosted fine-tuning, same tokens (a different model; money only)")
    for column in ("service", "USD per 1M training tokens", "price", "as published"):
        cloud.add_column(column)
    for entry in result.cloud:
        cloud.add_row(f"{entry.provider} {entry.model}", f"{entry.usd_per_million_training_tokens:.2f}", money(entry.usd), entry.published)
    console.print(cloud)

    retune = result.retune
    if retune is not None and retune.max_retrains_per_month:
        here_month = f", {duration(retune.seconds_here_per_month)} on this machine" if retune.seconds_here_per_month is not None else ""
        cheapest = f"{retune.cheapest_gpu} {money(retune.cheapest_usd_per_month)}" if retune.cheapest_gpu else "-"
        console.print(
            f"re-tuning (monitor.every {retune.every}, retrain_on {retune.retrain_on}): at most {retune.max_retrains_per_month:.0f} "
            f"retrains a month{here_month}; on {cheapest} a month at most"
        )

    for name, priced in result.remote_baselines.items():
        console.print(f"baseline {name}: {priced['line']}", markup=False, highlight=False, soft_wrap=True)
    for note in result.budget.notes:
        console.print(f"note: {note}")
    if result.budget.over:
        for reason in result.budget.reasons:
            console.print(f"[red]over budget:[/red] {reason}")
    elif result.budget.reasons == [] and (config.budget.max_hours or config.budget.max_usd):
        console.print("within budget")
    if teacher:
        console.print(f"distillation teacher: {teacher['line']}", markup=False, highlight=False, soft_wrap=True)
        if teacher["over"]:
            console.print(f"[red]over budget:[/red] the teacher's requests, expected {money(teacher['usd_expected'])} > budget.max_usd "
                          f"{config.budget.max_usd:g} (`tunelab distill` asks nothing)")


def _split(config):
    """The config's split, made once: the estimate counts it and the remote baselines are priced on its test rows.

    Raises:
        DataError: for missing or bad files (before the model is loaded), or no data.train.
    """
    from tunelab.data.split import make_split
    from tunelab.errors import DataError

    if not config.data.train:
        raise DataError("the config has no data.train", "set data.train to your training file")
    return make_split(config)


def _teacher_estimate(config, table) -> dict | None:
    """A distillation config's remote teacher: what ``tunelab distill`` would pay it (the inputs, its test answers) and
    whether that is over budget.max_usd, as ``run_distill`` checks it before the first request. None without one."""
    if config.distill.teacher is None:
        return None
    from tunelab.tasks.distill import estimate_teacher_cost

    estimate = estimate_teacher_cost(config, prices=table)
    if estimate is None:
        return None
    return {**estimate.to_dict(), "line": estimate.describe("budget.max_usd", config.budget.max_usd),
            "over": estimate.over(config.budget.max_usd)}


def _provider_estimate(config, table, as_json: bool) -> None:
    """A provider trains the run: its job's price and ``budget.max_usd`` as ``tunelab run`` checks them before uploading,
    never a time on this machine nor a GPU's price."""
    from tunelab.estimate.summary import provider_summary
    from tunelab.tasks.pipeline import estimate_cloud_run

    with progress_display(quiet=as_json) as display:
        display.begin("estimate: counting the training tokens the provider bills")
        result = estimate_cloud_run(config, prices=table)
    if as_json:
        print_json(result)
        return
    endpoint = config.model.endpoint
    summary = Table(title=f"Estimate: {config.task}, fine-tuned by the provider ({endpoint.name} at {endpoint.base_url})", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    for what, value in provider_summary({**result, "budget": {}}):  # the budget is said below, in colour
        summary.add_row(what, value.replace("the model is", f"{endpoint.name} is"))
    console.print(summary)
    for reason in result["budget"]["reasons"]:
        console.print(f"[red]over budget:[/red] {reason}")
    if not result["budget"]["over"] and config.budget.max_usd:
        console.print("within budget")


def register(app: typer.Typer) -> None:
    app.command("estimate")(estimate)
