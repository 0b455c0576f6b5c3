"""``tunelab feedback import FILE``: corrections from a file (e.g. a ticket system's export) into the request log."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelab.cli.common import console, print_json
from tunelab.serve.settings import DEFAULT_LOG_PATH

feedback_app = typer.Typer(help="Feedback on served answers: the correct label or answer for a logged response.", no_args_is_help=True)


@feedback_app.command("import")
def import_file(
    file: Path = typer.Argument(..., help="JSONL or CSV: id (the response id), label | completion | rating | thumbs, optional index."),
    log_db: Path = typer.Option(DEFAULT_LOG_PATH, "--log-db", help="The server's request log."),
    allow_unknown: bool = typer.Option(False, "--allow-unknown", help="Store rows whose response id the log does not hold."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Store every row of FILE next to its logged response (all rows or none)."""
    from tunelab.serve.request_log import import_feedback

    result = import_feedback(log_db, file, require_logged=not allow_unknown)
    if as_json:
        print_json(result)
        return
    console.print(f"imported {result['imported']} feedback rows ({result['labels']} with a label) from {file} into {log_db}")


def register(app: typer.Typer) -> None:
    app.add_typer(feedback_app, name="feedback")
