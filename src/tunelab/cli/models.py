"""``tunelab models``: what models are available here, whether they are cached, their sizes."""

from __future__ import annotations

import typer
from rich.table import Table

from tunelab.cli.common import console, print_json
from tunelab.paths import human_bytes


def models(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List available models: the bundled default, converted caches, and the Hugging Face cache."""
    from tunelab.models.catalog import list_models  # imports torch: only for this command

    entries = list_models()
    if as_json:
        print_json([entry.__dict__ for entry in entries])
        return
    table = Table(title="Models")
    for column in ("name", "kind", "size", "cached", "location / note"):
        table.add_column(column)
    for entry in entries:
        table.add_row(entry.name, entry.kind, human_bytes(entry.size_bytes), "yes" if entry.cached else "no", entry.note or entry.location)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("models")(models)
