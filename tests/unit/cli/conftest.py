import sys
from pathlib import Path

import pytest

# The training helpers (tiny configs, record lists) are shared with tests/unit/train and its subprocess scripts.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # Tokenization caches go to a per-session folder, never the user's cache.
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def app():
    """The CLI's typer app, its commands registered (the entry point registers them lazily)."""
    from tunelab.cli import main as cli_main

    if not cli_main.app.registered_commands:
        cli_main._register_commands()
    return cli_main.app


@pytest.fixture
def wide_console(monkeypatch):
    """Wide enough that no cell wraps: each row of a table is one line to read. Set on the CLI's console itself: its
    width is read from COLUMNS once, when the first test of a session imports it, so an env here may come too late."""
    from tunelab.cli import common

    monkeypatch.setattr(common.console, "_width", 250)
