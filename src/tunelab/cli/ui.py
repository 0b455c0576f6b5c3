"""``tunelab ui``: the local web app over the runs, their reports, comparison, blind review and new runs."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelab.cli.common import error_console


def ui(
    registry_path: Path = typer.Option(None, "--registry", help="An existing registry file (default: runs/registry.db, created when missing)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; non-loopback needs --api-key or --insecure."),
    port: int = typer.Option(7860, "--port", "-p", min=0, max=65535),
    api_key: str = typer.Option(None, "--api-key", envvar="TUNELAB_UI_API_KEY", help="Require this key (open the page once with ?key=KEY)."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback address without an API key."),
) -> None:
    """Open the web UI: runs, a run's curves and verdict, comparisons, blind A/B review, starting runs."""
    from tunelab.cli.runs import open_registry
    from tunelab.registry import default_registry_path
    from tunelab.ui import UISettings, run_ui
    from tunelab.ui.server import check_ui_bind

    # A registry the user names must exist, as for every other command: a mistyped --registry became a new, empty one
    # the UI showed as "no runs". The default location is created when missing (a new project starts its first run here).
    registry = open_registry(registry_path).path if registry_path is not None else default_registry_path()
    settings = UISettings(registry=registry, host=host, port=port, api_key=api_key, insecure=insecure)
    check_ui_bind(settings)
    run_ui(settings, announce=lambda url: error_console.print(f"tunelab ui on {url} over {settings.registry} (Ctrl-C to stop)"))


def register(app: typer.Typer) -> None:
    app.command("ui")(ui)
