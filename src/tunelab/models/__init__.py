"""Resolve a model name to weights + tokenizer: the bundled default, a folder, a .gguf, a hub id, a run."""

from tunelab.models.loader import LoadedModel, load_model, load_run, load_tokenizer
from tunelab.models.resolve import DEFAULT_MODEL_NAME, ModelSource, resolve_model

__all__ = ["DEFAULT_MODEL_NAME", "LoadedModel", "ModelSource", "load_model", "load_run", "load_tokenizer", "resolve_model"]
