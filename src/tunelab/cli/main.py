"""Entry point of the ``tunelab`` command.

Each command group lives in its own module with a ``register(app)`` function; this module only
assembles them and turns a ``TunelabError`` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys

import typer

from tunelab.errors import ConfigError, TunelabError

app = typer.Typer(
    name="tunelab",
    help="Fine-tune open language models on your own data and prove, with numbers, whether it paid off.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

def package_version() -> str:
    """tunelab's installed version (the package metadata; a checkout run from src/ without installing says so)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tunelab")
    except PackageNotFoundError:
        return "unknown (not installed: run from a source checkout)"


def _show_version(value: bool) -> None:
    if value:
        print(f"tunelab {package_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True, help="Print tunelab's version and exit."),
) -> None:
    """Fine-tune open language models on your own data and prove, with numbers, whether it paid off."""


def _register_commands() -> None:
    # Each command module imports only typer and rich at the top (its heavy imports are inside its
    # commands), so importing all of them keeps `tunelab --help` fast. Listed in --help order.
    from tunelab.cli import (
        advise,
        config,
        data,
        distill,
        env,
        estimate,
        evaluate,
        feedback,
        generate,
        models,
        monitor,
        predict,
        run,
        runs,
        serve,
        train,
        ui,
    )
    from tunelab.cli.common import use_usage_command

    for module in (run, advise, generate, predict, models, env, config, data, serve, train, evaluate, distill, estimate, runs, feedback, monitor, ui):
        module.register(app)
    use_usage_command(app)


def _quiet_libraries() -> None:
    # Offline unless a command is explicitly allowed the network (hub ids with --allow-network).
    if "--allow-network" not in sys.argv:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Libraries' own tqdm bars (transformers de-quantizing the default model's GGUF file at every load): the
    # command's one progress display says what is happening; TQDM_DISABLE=0 brings them back.
    os.environ.setdefault("TQDM_DISABLE", "1")
    import warnings

    # Deprecation notices raised inside libraries (e.g. peft reading transformers' old attribute names)
    # are for their maintainers, not for someone fine-tuning a model.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # Through the environment, not by importing transformers: most commands never load a model, and
    # importing transformers (and torch under it) is most of their start-up time.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import logging

    # bitsandbytes (the qlora extra) tries to fetch a prebuilt CPU kernel from the Hub when it is imported on a CPU
    # with AVX512-BF16, and peft imports it for every LoRA run: offline it falls back to its own kernel and logs two
    # warnings (its own and the kernels package's) that say nothing about the user's run.
    for name in ("bitsandbytes.backends.cpu.ops", "kernels"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # A Ray sweep's trial that failed (or had no validation rows) ends on an infinite validation loss, since Tune wants
    # the metric in every report: Tune's TensorBoard logger then warned "NaN or Inf found in input tensor" in the
    # driver, which reads as a training that diverged. The trial's row says what happened.
    logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)


def _exit_with(error: TunelabError) -> None:
    message = f"error: {error.message}"
    if error.hint:
        message += f"\n  fix: {error.hint}"
    # Every process of a launched group reads the same config: the first one (RANK 0) says what is wrong with it, once.
    if os.environ.get("RANK", "0") == "0" or not isinstance(error, ConfigError):
        print(message, file=sys.stderr)
    sys.exit(error.exit_code)


def main() -> None:
    _quiet_libraries()
    _register_commands()
    try:
        app()
    except TunelabError as error:
        _exit_with(error)
    except OSError as error:
        from pathlib import Path

        from tunelab.paths import disk_full_error, is_disk_full

        # A full disk under a file a command writes (--out, a report): one line naming it, as a run's own writes say it.
        if not (isinstance(error.filename, str) and is_disk_full(error, Path(error.filename))):
            raise
        _exit_with(disk_full_error(Path(error.filename)))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
