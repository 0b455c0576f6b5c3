"""Shared CLI helpers: consoles and small renderers."""

from __future__ import annotations

import json
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
