"""Resolve a model name to weights + tokenizer: the bundled default, a folder, a .gguf, a hub id (a run: ``tunelab.runs``).

The names are loaded on first use (PEP 562): ``tunelab.models.loader`` imports torch and
transformers, and importing a light submodule such as ``tunelab.models.resolve`` or
``tunelab.models.catalog`` must not pay for them (commands without a model start in under a second).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunelab.models.loader import LoadedModel, load_model, load_tokenizer
    from tunelab.models.resolve import DEFAULT_MODEL_NAME, ModelSource, resolve_model

_HOMES = {
    "LoadedModel": "tunelab.models.loader",
    "load_model": "tunelab.models.loader",
    "load_tokenizer": "tunelab.models.loader",
    "DEFAULT_MODEL_NAME": "tunelab.models.resolve",
    "ModelSource": "tunelab.models.resolve",
    "resolve_model": "tunelab.models.resolve",
}

__all__ = ["DEFAULT_MODEL_NAME", "LoadedModel", "ModelSource", "load_model", "load_tokenizer", "resolve_model"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tunelab.models' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
