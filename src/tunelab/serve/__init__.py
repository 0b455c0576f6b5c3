"""OpenAI-compatible HTTP serving of a base model and its LoRA adapters (``tunelab serve``).

The names below are imported on first use (PEP 562 ``__getattr__``), so importing one light
submodule (the CLI imports ``tunelab.serve.server`` to register its command) does not import
fastapi and the serving app.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ModelRegistry": "adapters",
    "ServedModel": "adapters",
    "load_registry": "adapters",
    "ServeSettings": "settings",
    "create_app": "app",
    "Engine": "engine",
    "SamplingParams": "engine",
    "APIError": "errors",
    "ServeError": "errors",
    "RequestLog": "request_log",
    "read_requests": "request_log",
    "BackgroundServer": "server",
    "build_app": "server",
    "run_server": "server",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'tunelab.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tunelab.serve.{_WHERE[name]}"), name)
