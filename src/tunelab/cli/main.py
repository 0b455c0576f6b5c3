"""Entry point of the ``tunelab`` command.

Each command group lives in its own module with a ``register(app)`` function; this module only
assembles them and turns a ``TunelabError`` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from tunelab.errors import TunelabError

app = typer.Typer(
    name="tunelab",
    help="Fine-tune open language models on your own data and prove, with numbers, whether it paid off.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Command modules, in the order their commands appear in --help.
COMMAND_MODULES = [
    "tunelab.cli.run",
    "tunelab.cli.generate",
    "tunelab.cli.models",
    "tunelab.cli.env",
    "tunelab.cli.config",
    "tunelab.cli.data",
    "tunelab.cli.serve",
    "tunelab.cli.train",
    "tunelab.cli.evaluate",
    "tunelab.cli.estimate",
    "tunelab.cli.runs",
]


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


def _quiet_libraries() -> None:
    # Offline unless a command is explicitly allowed the network (hub ids with --allow-network).
    if "--allow-network" not in sys.argv:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    # Deprecation notices raised inside libraries (e.g. peft reading transformers' old attribute names)
    # are for their maintainers, not for someone fine-tuning a model.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main() -> None:
    _quiet_libraries()
    _register_commands()
    try:
        app()
    except TunelabError as error:
        message = f"error: {error.message}"
        if error.hint:
            message += f"\n  fix: {error.hint}"
        print(message, file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
