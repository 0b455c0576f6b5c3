"""What models are available on this machine, for ``tunelab models``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import ModelError
from tunelab.models.loader import CONVERTED_SUBDIR, converted_cache_path
from tunelab.models.resolve import DEFAULT_MODEL_DISPLAY, default_gguf_path
from tunelab.paths import cache_dir


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str
    location: str
    size_bytes: int
    cached: bool
    note: str = ""


def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_models() -> list[ModelEntry]:
    """The bundled default, converted GGUF caches, and models in the Hugging Face cache."""
    entries: list[ModelEntry] = []
    try:
        gguf = default_gguf_path()
        converted = converted_cache_path(gguf)
        cached = (converted / "config.json").is_file()
        entries.append(
            ModelEntry(
                "default",
                "bundled GGUF",
                str(gguf),
                gguf.stat().st_size,
                cached,
                f"{DEFAULT_MODEL_DISPLAY}; " + (f"converted cache {folder_size(converted) / 1e6:.0f} MB" if cached else "converted on first use (~20 s)"),
            )
        )
    except ModelError as error:
        entries.append(ModelEntry("default", "bundled GGUF", "-", 0, False, str(error)))

    converted_root = cache_dir() / CONVERTED_SUBDIR
    if converted_root.is_dir():
        for folder in sorted(converted_root.iterdir()):
            if folder.name.startswith(".") or not (folder / "config.json").is_file():
                continue
            entries.append(ModelEntry(folder.name, "converted cache", str(folder), folder_size(folder), True))

    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_type == "model":
                entries.append(ModelEntry(repo.repo_id, "hub cache", str(repo.repo_path), repo.size_on_disk, True))
    except Exception:  # noqa: BLE001 - no HF cache (or an unreadable one) just means nothing to list
        pass
    return entries
