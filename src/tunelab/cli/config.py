"""``tunelab config``: every config key with its default and meaning (the docs live on the fields)."""

from __future__ import annotations

import typer
from rich.table import Table

from tunelab.cli.common import config_keys_like, console, print_json
from tunelab.config import METHOD_DEFAULT_LR, TASK_DEFAULT_EPOCHS, field_docs
from tunelab.errors import ConfigError


def config(
    section: str = typer.Argument(
        None, help="A section (model, data, lora, train, eval, classify, preference, distill, budget, monitor) to list only its keys, or one key by name (task, train.lr)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List every key of a run config (YAML, or key=value overrides) with its default and meaning."""
    # A section lists its keys; a key by its own name (`task`, `train.lr`) shows that one.
    rows = [row for row in field_docs() if section is None or row[0] == section or row[0].startswith(f"{section}.")]
    if not rows:
        import difflib

        sections = list(dict.fromkeys(key.split(".")[0] for key, _, _ in field_docs() if "." in key))
        # A dotted name is a key: the close one is a key (train.lrr: train.lr), else a section.
        names = [key for key, _, _ in field_docs()] if "." in section else sections
        # A key without its section (`lr`, `epoch`) is that key, before a look-alike section (`lr`: lora).
        close = [] if "." in section else config_keys_like(section, close=False)
        close = close or difflib.get_close_matches(section, names, n=1) or ([] if "." in section else config_keys_like(section))
        raise ConfigError(
            f"no config section or key '{section}'." + (f" Did you mean {' or '.join(repr(name) for name in close)}?" if close else ""),
            f"sections: {', '.join(sections)}",
        )
    if as_json:
        print_json([{"key": key, "default": default, "description": doc} for key, default, doc in rows])
        return
    table = Table(title="run config keys" + (f" ({section})" if section else ""))
    for column in ("key", "default", "meaning"):
        table.add_column(column, overflow="fold")
    for key, default, doc in rows:
        table.add_row(key, default, doc)
    console.print(table)
    console.print(
        "Defaults that depend on the task and method when left unset: "
        f"train.lr {METHOD_DEFAULT_LR} by train.method; train.epochs {TASK_DEFAULT_EPOCHS} by task; "
        "data.stride = data.max_length."
    )


def register(app: typer.Typer) -> None:
    app.command("config")(config)
