"""Shared CLI helpers: consoles and small renderers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

console = Console()
error_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """Print machine-readable JSON on stdout (no colours, stable key order)."""
    print(json.dumps(data, indent=2, default=str))


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


@contextmanager
def train_progress_bar(*, transient: bool = True) -> Iterator[Callable[[Any], None]]:
    """The one training progress bar (``tunelab train``, ``run``, ``sweep``), fed by the loop's Progress events.

    It appears with the first step and goes at the last, so the steps around training print
    normally; a sweep's next variant brings it back.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("  [bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} tok/s"),
        TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn(),
        console=error_console, transient=transient,
    )
    state: dict[str, Any] = {"task": None, "running": False}

    def on_progress(event: Any) -> None:
        if not state["running"]:
            bar.start()
            state["running"] = True
            if state["task"] is None:
                state["task"] = bar.add_task("train", total=event.total_steps, loss="-", rate="-", eta="-")
            else:
                bar.reset(state["task"], total=event.total_steps)
        eta = "-" if event.eta_seconds is None else time.strftime("%H:%M:%S", time.gmtime(event.eta_seconds))
        loss = "-" if event.loss is None else f"{event.loss:.4f}"
        bar.update(state["task"], completed=event.step, total=event.total_steps, loss=loss,
                   rate=f"{event.tokens_per_second:.0f}", eta=eta)
        if event.step >= (event.total_steps or 0):
            stop()

    def stop() -> None:
        if state["running"]:
            bar.stop()
            state["running"] = False

    try:
        yield on_progress
    finally:
        stop()


def config_or_resume(config_path: Any, overrides: list[str] | None, resume: Any, command: str) -> Any:
    """The config of a pipeline command (``run``, ``distill``), or None when ``--resume`` continues a run folder.

    Raises:
        ConfigError: for a config or overrides beside --resume, or neither a config nor --resume.
    """
    from tunelab.config import load_config
    from tunelab.errors import ConfigError

    if resume is not None:
        if config_path is not None or overrides:
            raise ConfigError("--resume continues a run with its own config; give no config or overrides")
        return None
    if config_path is None:
        raise ConfigError(f"give a config file: tunelab {command} CONFIG.yaml [key=value ...]")
    return load_config(config_path, overrides or [])
