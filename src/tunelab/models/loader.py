"""Load a model + tokenizer from a ModelSource.

GGUF files (the bundled default among them) are dequantized by transformers with ``gguf_file=``,
which takes about 20 s for SmolLM2-135M. The result is marked quantized and refuses
``save_pretrained``, so we rebuild a plain model from its config, copy the state dict in, and cache
safetensors + tokenizer (with its chat template) under the user cache. Every later load reads the
cache and takes well under 2 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import ModelError
from tunelab.models.resolve import ModelSource, resolve_model
from tunelab.paths import RunFolder, atomic_directory, cache_dir

CONVERTED_SUBDIR = "models"


@dataclass
class LoadedModel:
    """A model ready to use. ``label_map`` is set for classify runs; ``run_config`` for runs."""

    model: Any
    tokenizer: Any
    source: ModelSource
    base_source: ModelSource | None = None
    run_config: dict | None = None
    label_map: dict | None = None
    label_head: Any = None  # a classify run's trained label rows (tunelab.models.heads.LabelHead)
    out_of_scope: dict | None = None  # a classify run's out_of_scope.json (tunelab.data.labels.OutOfScope)
    extra: dict = field(default_factory=dict)


def _torch_dtype(dtype: str) -> torch.dtype:
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]


def converted_cache_path(gguf_path: Path) -> Path:
    """Cache folder of a converted GGUF, keyed by the file's name, size and modification time."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    return cache_dir() / CONVERTED_SUBDIR / f"{gguf_path.stem}-{key}"


def _ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ModelError(
            f"the cache folder {folder} is not writable ({error.strerror})",
            "set TUNELAB_CACHE to a writable folder",
        ) from None


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantize a GGUF file into a plain transformers folder at ``target`` (atomically).

    Raises:
        ModelError: when transformers cannot read the file or the cache is not writable.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _ensure_writable(target.parent)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        quantized = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
    except (ValueError, OSError, KeyError, RuntimeError) as error:
        raise ModelError(f"cannot read GGUF file {gguf_path}: {error}") from None

    # The GGUF-loaded model is flagged quantized and refuses save_pretrained: rebuild a plain one.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if k not in ("lm_head.weight",)]
    if missing or unexpected:
        raise ModelError(f"converted GGUF {gguf_path} does not match its config: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    del quantized

    with atomic_directory(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "tunelab_source.json").write_text(json.dumps({"gguf": str(gguf_path)}))
    return target


def local_folder_for(source: ModelSource) -> Path | None:
    """The local transformers folder a source loads from (converting a GGUF on first use)."""
    if source.kind in ("default", "gguf"):
        gguf_path = Path(source.location)
        target = converted_cache_path(gguf_path)
        if not (target / "config.json").is_file():
            convert_gguf(gguf_path, target)
        return target
    if source.kind == "folder":
        return Path(source.location)
    return None


def is_cached(source: ModelSource) -> bool:
    """Whether loading ``source`` is fast (no GGUF conversion, no download)."""
    if source.kind in ("default", "gguf"):
        return (converted_cache_path(Path(source.location)) / "config.json").is_file()
    return True


def _from_pretrained(location: str, *, dtype: str, allow_network: bool, revision: str | None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"local_files_only": not allow_network}
    if revision:
        kwargs["revision"] = revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=_torch_dtype(dtype), attn_implementation="sdpa", **kwargs
        )
    except OSError as error:
        if not allow_network:
            raise ModelError(
                f"model '{location}' is not available offline ({str(error).splitlines()[0]})",
                "allow the network with --allow-network (model.allow_network: true) to download it",
            ) from None
        raise ModelError(f"cannot load model '{location}': {str(error).splitlines()[0]}") from None
    except ValueError as error:
        raise ModelError(f"cannot load model '{location}': {str(error).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        # Batched inference and training need a pad id; EOS is the conventional stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def load_model(
    name: str | ModelSource = "default",
    *,
    dtype: str = "float32",
    allow_network: bool = False,
    revision: str | None = None,
) -> LoadedModel:
    """Load a model and its tokenizer by name (see ``resolve_model`` for what names mean).

    Weights are kept in fp32 by default: training keeps fp32 master weights and uses bf16 autocast.

    Raises:
        ModelError: for unknown names, missing or corrupt files, offline hub ids, unwritable cache.
    """
    source = name if isinstance(name, ModelSource) else resolve_model(name)
    if source.kind == "run":
        return load_run(Path(source.location), dtype=dtype, allow_network=allow_network)
    if source.kind == "hub":
        if not allow_network:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model, tokenizer = _from_pretrained(source.location, dtype=dtype, allow_network=allow_network, revision=revision)
    else:
        folder = local_folder_for(source)
        model, tokenizer = _from_pretrained(str(folder), dtype=dtype, allow_network=False, revision=None)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source)


def load_run(run_dir: Path, *, dtype: str = "float32", allow_network: bool = False) -> LoadedModel:
    """Load a trained run: its base model with the LoRA adapter on top, or its full model.

    Raises:
        ModelError: when the folder is no complete run.
    """
    import yaml

    run = RunFolder(Path(run_dir))
    if not run.is_run():
        raise ModelError(f"{run.root} is not a finished tunelab run (no config.yaml with adapter/ or model/)")
    config = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    label_map = json.loads(run.labels.read_text()) if run.labels.is_file() else None
    out_of_scope = json.loads(run.out_of_scope.read_text(encoding="utf-8")) if run.out_of_scope.is_file() else None
    model_section = config.get("model") or {}
    base_name = model_section.get("name", "default") if isinstance(model_section, dict) else str(model_section)

    if run.model.is_dir():
        model, tokenizer = _from_pretrained(str(run.model), dtype=dtype, allow_network=False, revision=None)
        base_source = None
        label_head = None  # folded into model/'s output head when the run was saved
    else:
        from peft import PeftModel

        base = load_model(base_name, dtype=dtype, allow_network=allow_network)
        parent = base.model
        if hasattr(parent, "merge_and_unload"):
            # Trained on top of another LoRA run (e.g. DPO after SFT): the parent's adapter was folded
            # into the weights before this run's adapter was trained, so fold it in the same way here.
            parent = parent.merge_and_unload()
        model = PeftModel.from_pretrained(parent, str(run.adapter))
        from tunelab.models.lora_forward import fuse_lora_forward

        fuse_lora_forward(model)
        model.eval()
        from tunelab.models.heads import LabelHead

        label_head = LabelHead.load(run.adapter)
        tokenizer = base.tokenizer
        base_source = base.source
    if run.tokenizer.is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(run.tokenizer), local_files_only=True)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
    source = ModelSource("run", str(run.root.resolve()), run.root.name)
    return LoadedModel(
        model=model, tokenizer=tokenizer, source=source, base_source=base_source, run_config=config, label_map=label_map,
        label_head=label_head, out_of_scope=out_of_scope,
    )


def load_tokenizer(name: str, allow_network: bool = False) -> Any:
    """The tokenizer of model ``name`` without loading its weights.

    Raises:
        ModelError: when the model is unknown or not available offline.
    """
    from transformers import AutoTokenizer

    source = resolve_model(name)
    if source.kind == "run":
        location = str(Path(source.location) / "tokenizer")
    else:
        folder = local_folder_for(source)
        location = str(folder) if folder is not None else source.location
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=not allow_network)
    except (OSError, ValueError) as error:
        raise ModelError(
            f"cannot load the tokenizer of '{name}': {str(error).splitlines()[0]}",
            "check the model name, or pass --allow-network for a hub model",
        ) from None
    return tokenizer
