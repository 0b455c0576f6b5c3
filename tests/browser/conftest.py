"""Headless Chromium (Debian's ``chromium`` package) driven by Playwright for Python, over a real ``tunelab ui``.

The runs the pages show are made by ``tunelab run`` on the tiny model inside the test session; the UI
is a real uvicorn server on a free loopback port. Nothing downloads a browser: Playwright is pointed
at /usr/bin/chromium, and the tests skip, naming the package to install, when either is missing.
Screenshots of every page are kept under tests/browser/artifacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ui_helpers import ARTIFACTS, write_config

CHROMIUM = os.environ.get("TUNELAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def _require_browser() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the browser tests need the Python package playwright (pip install -e '.[dev]')")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"the browser tests need Debian's chromium package at {CHROMIUM} (apt-get install chromium)")


def _source_path() -> str:
    """This tunelab's import root first on the path, so child processes run the code under test whatever their folder."""
    import tunelab

    root = str(Path(tunelab.__file__).resolve().parents[1])
    return os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH", "")])])


# Module scope: Playwright's sync API keeps an asyncio loop running in this thread while it is open,
# and later tests that call asyncio.run() (serving) must not find it.
@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    _require_browser()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        # Generous: a first page may import numpy and scikit-learn, slow on a loaded 2-core machine.
        context.set_default_timeout(120_000)
        yield context
        context.close()


@pytest.fixture
def page(browser_context):
    page = browser_context.new_page()
    # Every script error of the page is kept: check_screen fails on any.
    page.script_errors = []
    page.on("pageerror", lambda error: page.script_errors.append(str(error)))
    yield page
    page.close()


@pytest.fixture(scope="session")
def ui_runs(tmp_path_factory, tiny_model_dir):
    """Two finished runs made by `tunelab run` (the CLI, in a child process) on the tiny model, and their registry."""
    _require_browser()
    folder = tmp_path_factory.mktemp("ui-runs")
    env = {**os.environ, "TUNELAB_CACHE": str(folder / "cache"), "PYTHONPATH": _source_path()}
    for name, epochs in (("short", 2), ("longer", 6)):
        config = write_config(folder, tiny_model_dir, name, epochs=epochs)
        done = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "run", str(config), "--no-calibrate"],
                              capture_output=True, text=True, timeout=1200, env=env, cwd=folder)
        assert done.returncode == 0, done.stderr[-3000:]
    return folder, folder / "runs" / "registry.db"


@pytest.fixture(scope="session")
def ui_url(ui_runs):
    from tunelab.serve.server import BackgroundServer
    from tunelab.ui import UISettings, create_app

    folder, registry = ui_runs
    # Runs started from the UI inherit these: the same cache, and this checkout's tunelab from any folder.
    saved = {name: os.environ.get(name) for name in ("TUNELAB_CACHE", "PYTHONPATH")}
    os.environ["TUNELAB_CACHE"] = str(folder / "cache")
    os.environ["PYTHONPATH"] = _source_path()
    try:
        # As `tunelab ui` started in the project folder: configs to start are taken from there (or the registry's folder).
        with BackgroundServer(create_app(UISettings(registry=registry, project=folder)), port=0) as url:
            yield url
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
