"""``tunelab train`` (fine-tune from a config) and ``tunelab export`` (a model folder, or one GGUF file)."""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path

import typer

from tunelab.cli.common import (
    cancel_on_sigterm,
    config_or_resume,
    console,
    error_console,
    print_json,
    progress_display,
)
from tunelab.config import load_config
from tunelab.errors import ConfigError, TunelabError


def train(
    config_path: Path = typer.Argument(None, metavar="CONFIG", help="Run config (YAML). Not needed with --resume."),
    overrides: list[str] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Dotted overrides, e.g. train.lr=3e-4."),
    resume: Path = typer.Option(None, "--resume", help="Continue the run in this folder from its newest checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    launch: str = typer.Option(
        None, "--launch", metavar="OPTIONS",
        help='Train on several processes/machines: accelerate launch options, e.g. "--num_processes 8" (DDP), '
        '"--use_fsdp --fsdp_version 2 --num_processes 8", "--config_file fsdp.yaml".',
    ),
    run_dir: Path = typer.Option(None, "--run-dir", help="Train into this folder instead of train.output_dir/<name>."),
) -> None:
    """Fine-tune a model as CONFIG says (LoRA by default), writing a run folder under train.output_dir."""
    from tunelab.data.split import make_split
    from tunelab.tasks import run_training
    from tunelab.tasks.launch import LaunchError, is_main_process, run_launched
    from tunelab.tasks.pipeline import run_name, train_registered

    if launch is not None:
        # This process only starts the group: accelerate runs this same command once per process.
        if run_dir is None and resume is None and config_path is not None:
            # Named here, once: a name made of the start time was each process's own, and a process that started in
            # a later second trained into (and wrote its checkpoint shards to) a run folder of its own.
            with contextlib.suppress(TunelabError):  # the processes say what is wrong with the config, once
                named = load_config(config_path, overrides or [])
                run_dir = Path(named.train.output_dir) / run_name(named)
        arguments = ["train", *([str(config_path)] if config_path else []), *(overrides or [])]
        arguments += [*(["--resume", str(resume)] if resume else []), *(["--run-dir", str(run_dir)] if run_dir else [])]
        code = run_launched(launch, arguments + (["--json"] if as_json else []))
        if code == 0:
            return
        # The launcher's last words are torch's traceback of which rank failed: end on what it means and what to do.
        folder = resume or run_dir
        if folder is None and config_path is not None:
            with contextlib.suppress(TunelabError):  # the processes said what is wrong with the config
                config = load_config(config_path, overrides or [])
                folder = Path(config.train.output_dir) / run_name(config)
        from tunelab.runs import RunFolder

        hint = "fix what the processes' output above names"
        if folder is not None and RunFolder(Path(folder)).checkpoints.is_dir():
            hint += f", then continue from its newest checkpoint: tunelab train --resume {folder} --launch {shlex.quote(launch)}"
        failed = LaunchError(f"the launched training exited with code {code} (its processes' output is above)", hint)
        failed.exit_code = code  # the launcher's, as before
        raise failed
    if resume is not None:
        if config_path is not None and overrides is None and "=" in str(config_path):
            overrides = [str(config_path)]
        if overrides:
            raise ConfigError("--resume continues a run with its own config.yaml; overrides are not allowed")
        if config_path is not None and "=" not in str(config_path):
            raise ConfigError(
                f"--resume continues a run with its own config.yaml; {config_path} would not be read",
                f"leave the config file out: tunelab train --resume {resume}",
            )
        if run_dir is not None and run_dir.resolve() != resume.resolve():
            raise ConfigError(
                f"--resume continues the run in {resume}; --run-dir {run_dir} would not be used",
                f"leave --run-dir out: tunelab train --resume {resume}",
            )
        from tunelab.runs import Run

        config = Run.open(resume).config
        run_dir = Path(resume)
    else:
        config = config_or_resume(config_path, overrides, None, "train")
        run_dir = run_dir or Path(config.train.output_dir) / run_name(config)
    split = make_split(config)

    with progress_display(quiet=as_json) as display, cancel_on_sigterm():
        # One registry row per run however many processes train it: the first one keeps it.
        train = train_registered if is_main_process() else run_training
        result = train(config, split, run_dir=run_dir, progress=display.training, resume=resume is not None)
    if not is_main_process():
        return  # every process of a launched group has the same result; the first one prints it
    if as_json:
        print_json(result.as_dict())
        return
    console.print(f"[bold green]trained[/] {result.run_dir}")
    best = "-" if result.best_validation_loss is None else f"{result.best_validation_loss:.4f}"
    final = "-" if result.final_loss is None else f"{result.final_loss:.4f}"
    console.print(
        f"  {result.steps} steps, train loss {final}, best validation loss {best}, "
        f"{result.tokens_per_second:.0f} tokens/s ({result.precision}), {result.seconds:.0f} s, "
        f"{result.trainable_parameters:,} of {result.total_parameters:,} parameters trained ({result.method})"
    )
    for warning in result.warnings:
        error_console.print(f"[yellow]warning[/] {warning}")


def export(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="A finished run folder."),
    out: Path = typer.Argument(..., metavar="OUT", help="Folder (or .gguf file) to write; must not exist."),
    merge: bool = typer.Option(False, "--merge", help="Fold the LoRA adapter into the base weights."),
    output_format: str = typer.Option(
        None, "--format", help="folder (transformers) or gguf (llama.cpp, Ollama). Default: gguf when OUT ends in .gguf."
    ),
    quant: str = typer.Option(
        "f16", "--quant",
        help="gguf: f16 (exact to f16), q8_0 (about half), q6_K, q5_K_M, q4_K_M (Ollama's default, about a quarter), q5_0 or q4_0.",
    ),
    ollama: bool = typer.Option(False, "--ollama", help="gguf: also write OUT.Modelfile for `ollama create`."),
    as_json: bool = typer.Option(False, "--json", help="gguf: print the result as JSON."),
) -> None:
    """Write a run as a model folder that plain transformers loads (--merge), one GGUF file, or copy its adapter."""
    from tunelab.runs import export_folder, export_gguf

    chosen = output_format or ("gguf" if out.suffix.lower() == ".gguf" else "folder")
    if chosen not in ("folder", "gguf"):
        raise ConfigError(f"--format {chosen!r} is not supported", "use folder or gguf")
    if chosen == "gguf":
        from tunelab.data.templates import CLASSIFY_INSTRUCTION

        result = export_gguf(run_dir, out, quant=quant, ollama=ollama, classify_instruction=CLASSIFY_INSTRUCTION)
        if as_json:
            print_json(result.as_dict())
            return
        console.print(f"[bold green]exported[/] {result.path} ({result.architecture}, {result.quant}, {result.size_bytes / 2**20:.1f} MiB)")
        if result.labels:
            console.print(f"  answers with the label names: {', '.join(result.labels)}", markup=False, highlight=False)
        if result.out_of_scope:
            error_console.print(f"warning: {result.out_of_scope['note']}", markup=False, highlight=False, soft_wrap=True)
        if result.modelfile is not None:
            console.print(f"  Modelfile {result.modelfile}; load it into Ollama with:")
            console.print(f"  {result.ollama_command}", markup=False, highlight=False)
        return
    if ollama or quant != "f16":
        raise ConfigError("--ollama and --quant apply to --format gguf only")
    export_folder(run_dir, out, merge=merge)
    console.print(f"[bold green]exported[/] {out}")


def register(app: typer.Typer) -> None:
    app.command("train", epilog="Every config key, its default and meaning: `tunelab config`.")(train)
    app.command("export")(export)
