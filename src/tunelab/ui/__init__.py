"""``tunelab ui``: a local web app over the registry, the run folders, blind review and started runs.

Server-rendered pages (Jinja2 templates and a few scripts, all shipped in this package: no build step,
no CDN) on the same FastAPI/uvicorn stack as serving. ``views`` reads values, ``app`` renders them,
``jobs`` starts and cancels real ``tunelab run`` processes, ``server`` checks the address and runs uvicorn.
The names below are imported on first use (PEP 562 ``__getattr__``), so reading ``views`` (``tunelab show``)
does not import fastapi.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"UISettings": "app", "create_app": "app", "run_ui": "server"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"tunelab.ui.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'tunelab.ui' has no attribute {name!r}")
