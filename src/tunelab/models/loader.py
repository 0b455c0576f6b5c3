"""Load a model + tokenizer from a ModelSource.

GGUF files (the bundled default among them) are dequantized by transformers with ``gguf_file=``,
which takes about 20 s for SmolLM2-135M. The result is marked quantized and refuses
``save_pretrained``, so we rebuild a plain model from its config, copy the state dict in, and cache
safetensors + tokenizer (with its chat template) under the user cache. Every later load reads the
cache and takes well under 2 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import ModelError
from tunelab.models.resolve import ModelSource, resolve_model
from tunelab.paths import atomic_directory, cache_dir, remove_stale_temporaries

CONVERTED_SUBDIR = "models"


@dataclass
class LoadedModel:
    """A model ready to use. ``run`` is the ``tunelab.runs.Run`` it was loaded from (None for a plain model):
    a run's label map, out-of-scope rule, system prompt and config are read through it."""

    model: Any
    tokenizer: Any
    source: ModelSource
    base_source: ModelSource | None = None
    label_head: Any = None  # a classify run's trained label rows (tunelab.models.heads.LabelHead)
    run: Any = None  # tunelab.runs.Run (this layer knows no run folder)
    extra: dict = field(default_factory=dict)

    @property
    def label_map(self) -> Any:
        """A classify run's ``tunelab.data.labels.LabelMap``; None for any other model."""
        return self.run.label_map if self.run is not None else None

    @property
    def out_of_scope(self) -> Any:
        """A classify run's ``tunelab.data.labels.OutOfScope`` rule; None when it has none."""
        return self.run.out_of_scope if self.run is not None else None

    @property
    def system_prompt(self) -> str | None:
        """The system prompt a run was trained with; None for a plain model."""
        return self.run.system_prompt if self.run is not None else None


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
    # A conversion killed midway left its temporary folder (the whole model) here; one still running keeps its own.
    remove_stale_temporaries(target)
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


# QLoRA's base: 4-bit NormalFloat with the quantization constants quantized again (double
# quantization, about 0.13 bits a weight saved), computing in the training precision.
QUANTIZATION = "nf4"


def quantization_config(compute_dtype: str) -> Any:
    """The bitsandbytes settings of a ``train.method: qlora`` base model (4-bit NF4, double quantization).

    Raises:
        ModelError: when bitsandbytes is not installed.
    """
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelError(
            "train.method: qlora needs bitsandbytes, which is not installed",
            "pip install 'tunelab[qlora]' (or pip install bitsandbytes)",
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=QUANTIZATION,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=_torch_dtype(compute_dtype),
        bnb_4bit_quant_storage=torch.uint8,
    )


def weights_dtype(method: str, precision: str) -> str:
    """The dtype a run holds its base weights in: the compute dtype for every weight it does not train.

    ``full`` trains every weight, so they stay fp32 master weights (bf16 autocast computes in bf16 from
    them); ``lora``, ``freeze`` and ``qlora`` hold their frozen weights in bf16 where the run computes in
    bf16 (half the bytes, no autocast copy per step), and ``apply_method`` makes the trained ones fp32.
    """
    return "bfloat16" if precision == "bf16" and method != "full" else "float32"


def _from_pretrained(
    location: str, *, dtype: str, allow_network: bool, revision: str | None, quantize: bool = False
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"local_files_only": not allow_network}
    if revision:
        kwargs["revision"] = revision
    model_kwargs: dict[str, Any] = {}
    if quantize:
        # 4-bit layers are placed on the device when they are quantized: the one device this process trains on.
        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        model_kwargs = {"quantization_config": quantization_config(dtype), "device_map": {"": device}}
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                location, dtype=_torch_dtype(dtype), attn_implementation="sdpa", **kwargs, **model_kwargs
            )
        except ValueError as error:
            if "scaled_dot_product_attention" not in str(error):
                raise
            # An architecture without an SDPA path in this transformers (Gemma 2): its own attention.
            model = AutoModelForCausalLM.from_pretrained(location, dtype=_torch_dtype(dtype), attn_implementation="eager", **kwargs, **model_kwargs)
    except (OSError, ValueError) as error:
        raise _load_error(location, error, allow_network) from None
    if tokenizer.pad_token_id is None:
        # Batched inference and training need a pad id; EOS is the conventional stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def _load_error(location: str, error: Exception, allow_network: bool) -> ModelError:
    if isinstance(error, OSError) and not allow_network:
        return ModelError(
            f"model '{location}' is not available offline ({str(error).splitlines()[0]})",
            "allow the network with --allow-network (model.allow_network: true) to download it",
        )
    return ModelError(f"cannot load model '{location}': {str(error).splitlines()[0]}")


def load_model_config(name: str | ModelSource, *, allow_network: bool = False, revision: str | None = None) -> Any:
    """The transformers config of a model (its architecture, its context), without loading its weights.

    Raises:
        ModelError: as :func:`load_model`.
    """
    from transformers import AutoConfig

    location, allow_network, revision = _plain_location(name, allow_network, revision)
    kwargs = {"local_files_only": not allow_network, **({"revision": revision} if revision else {})}
    try:
        return AutoConfig.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as error:
        raise _load_error(location, error, allow_network) from None


def _plain_location(name: str | ModelSource, allow_network: bool, revision: str | None) -> tuple[str, bool, str | None]:
    """(where a plain model loads from, whether the network may be used, its revision): a hub id as given (offline
    unless allowed), anything else its local folder (a GGUF converted on first use).

    Raises:
        ModelError: for a run folder (``tunelab.runs`` reads those) or an unknown name.
    """
    source = name if isinstance(name, ModelSource) else resolve_model(name)
    if source.kind == "run":
        raise ModelError(f"{source.location} is a tunelab run", "read it through tunelab.runs (load_model, load_model_config) or Run.open(path).load()")
    if source.kind == "hub":
        if not allow_network:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return source.location, allow_network, revision
    return str(local_folder_for(source)), False, None


def load_model(
    name: str | ModelSource = "default",
    *,
    dtype: str = "float32",
    allow_network: bool = False,
    revision: str | None = None,
    quantize: bool = False,
) -> LoadedModel:
    """Load a model and its tokenizer by name (see ``resolve_model`` for what names mean).

    Weights are in fp32 by default; training loads them as ``tunelab.runs.load_for_training`` says. ``quantize``
    loads the linear layers of the decoder in 4-bit NF4 (bitsandbytes), computing in ``dtype``: the
    base of ``train.method: qlora``. A run folder is no plain model: ``tunelab.runs.load_model`` loads
    every name, runs included.

    Raises:
        ModelError: for unknown names, missing or corrupt files, offline hub ids, unwritable cache, a run,
            or ``quantize`` without bitsandbytes.
    """
    source = name if isinstance(name, ModelSource) else resolve_model(name)
    location, allow_network, revision = _plain_location(source, allow_network, revision)
    model, tokenizer = _from_pretrained(location, dtype=dtype, allow_network=allow_network, revision=revision, quantize=quantize)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source)



# Of the GPU's free memory, the most a model's weights may take when evaluation or serving moves it there: the rest
# holds the activations, the KV cache and the batch.
GPU_WEIGHTS_SHARE = 0.8


def place_for_inference(model: Any) -> torch.device | None:
    """Move ``model`` (loaded on the CPU, as every load here does) to the GPU where evaluation and serving should run it;
    the device it was on when it moved, None when it stays.

    It moves where CUDA is available (``CUDA_VISIBLE_DEVICES`` says which card is "cuda"), the user did not keep the
    work on the CPU (``ACCELERATE_USE_CPU``, what ``accelerate launch --cpu`` sets), it is on the CPU (a 4-bit base is
    placed on its GPU as it is quantized) and its weights take at most ``GPU_WEIGHTS_SHARE`` of the free GPU memory;
    a larger one stays on the CPU, where it ran before.
    """
    if not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes"):
        return None
    parameters = list(model.parameters())
    if not parameters or parameters[0].device.type != "cpu" or getattr(model, "is_quantized", False):
        return None
    size = sum(p.numel() * p.element_size() for p in parameters) + sum(b.numel() * b.element_size() for b in model.buffers())
    if size > GPU_WEIGHTS_SHARE * torch.cuda.mem_get_info()[0]:
        return None
    previous = parameters[0].device
    model.to("cuda")
    return previous


@contextlib.contextmanager
def on_inference_device(model: Any) -> Iterator[Any]:
    """``model`` on the GPU for the block (``place_for_inference``), back where it was after: a model kept for later
    steps (the pipeline's base, between its baselines and the training) holds no GPU memory meanwhile."""
    previous = place_for_inference(model)
    try:
        yield model
    finally:
        if previous is not None:
            model.to(previous)


def load_adapted(
    base: LoadedModel | None,
    *,
    adapter_dir: Path | None = None,
    model_dir: Path | None = None,
    tokenizer_dir: Path | None = None,
    dtype: str = "float32",
) -> LoadedModel:
    """Trained weights: the full model in ``model_dir``, or ``base`` with the PEFT adapter in ``adapter_dir`` on
    top (and the classify label head saved beside it), with the tokenizer of ``tokenizer_dir`` when given.

    ``tunelab.runs.Run.load`` calls this with the run folder's paths; this layer knows no run folder.

    Raises:
        ModelError: when neither a model folder nor a base with an adapter folder is given.
    """
    if model_dir is not None:
        model, tokenizer = _from_pretrained(str(model_dir), dtype=dtype, allow_network=False, revision=None)
        base_source = None
        label_head = None  # folded into model/'s output head when the run was saved
    elif base is not None and adapter_dir is not None:
        from peft import PeftModel

        parent = base.model
        if hasattr(parent, "merge_and_unload"):
            # Trained on top of another LoRA run (e.g. DPO after SFT): the parent's adapter was folded
            # into the weights before this run's adapter was trained, so fold it in the same way here.
            parent = parent.merge_and_unload()
        from tunelab.models.adapters import ADAPTER_CONFIG, label_rows_config, read_label_head, verify_weights

        try:
            # The LoRA part through PEFT; a classify run's label rows as tunelab's LabelHead (see label_rows_config).
            config, label_rows = label_rows_config(adapter_dir)
            model = PeftModel.from_pretrained(parent, str(adapter_dir), config=config)
            from tunelab.models.lora_forward import fuse_lora_forward

            fuse_lora_forward(model)
            model.eval()
            label_head = read_label_head(adapter_dir, parent, label_rows)
        except Exception:
            # json and safetensors name no file: a damaged one is named in one line (verify_weights raises), anything
            # else goes on as it was.
            verify_weights(Path(adapter_dir), ADAPTER_CONFIG)
            raise
        tokenizer = base.tokenizer
        base_source = base.source
    else:
        raise ModelError("trained weights need a model folder, or a base model and an adapter folder")
    if tokenizer_dir is not None:
        tokenizer = tokenizer_from_folder(tokenizer_dir)
    source = ModelSource("folder", str(model_dir or adapter_dir), Path(model_dir or adapter_dir).name)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, base_source=base_source, label_head=label_head)


def tokenizer_from_folder(folder: Path) -> Any:
    """The tokenizer saved in ``folder`` (with its chat template), with a pad token for batching.

    Raises:
        ModelError: when the folder holds no readable tokenizer.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load the tokenizer in {folder}: {str(error).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(name: str, allow_network: bool = False) -> Any:
    """The tokenizer of model ``name`` without loading its weights.

    Raises:
        ModelError: when the model is unknown or not available offline.
    """
    from transformers import AutoTokenizer

    source = resolve_model(name)
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
