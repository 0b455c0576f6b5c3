"""What is trained: LoRA adapters (PEFT, over a bf16 or a 4-bit base), every weight, or only chosen decoder layers; and merged export.

The adapter is saved in PEFT's own format, so it loads in plain ``peft`` and in any PEFT-aware
server. ``fold_trained`` folds it into the base weights (the one home of a run's final weights);
``tunelab.runs`` writes them as a model folder that plain transformers loads (``export_folder``), and
``tunelab.models.gguf_export`` as one GGUF file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.config import RunConfig
from tunelab.errors import ConfigError
from tunelab.models.generate import Decoding
from tunelab.paths import atomic_directory


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a transformers causal LM.

    Raises:
        ConfigError: when the model's layers cannot be found (freeze needs them).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    layers = getattr(decoder, "layers", None) or getattr(decoder, "h", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(
            f"cannot find the decoder layers of {type(base).__name__} for train.method=freeze",
            "use train.method=lora or full",
        )
    return layers


def apply_method(model: nn.Module, config: RunConfig) -> nn.Module:
    """Make the right parameters trainable for ``config.train.method`` (wrapping in PEFT for lora).

    Raises:
        ConfigError: for freeze without valid ``train.trainable_layers``, or LoRA target modules
            that match nothing in the model.
    """
    if hasattr(model, "peft_config") and hasattr(model, "merge_and_unload"):
        # `model: runs/<a LoRA run>`: fold that run's adapter into the weights first, so this run trains
        # on the parent model itself and saves only its own weights (load_run folds the parent back in).
        model = model.merge_and_unload()
    method = config.train.method
    if method in ("lora", "qlora"):
        # qlora: the same adapters over the 4-bit base that ``load_for_training`` loaded (PEFT puts its own
        # bitsandbytes LoRA layers there). peft's prepare_model_for_kbit_training is not used: it casts every
        # weight that is not 4-bit (embeddings, norms, the output head) to fp32, doubling their memory, and
        # switches gradient checkpointing on, which train.gradient_checkpointing decides here.
        from peft import LoraConfig, get_peft_model

        if method == "qlora":
            keep_4bit_layers_differentiable(model)

        lora = config.lora
        peft_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            # "all-linear": peft adapts every linear layer except the output head (lm_head stays frozen).
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, peft_config)
        except ValueError as error:
            raise ConfigError(f"lora.target_modules={lora.target_modules!r}: {str(error).splitlines()[0]}") from None
        from tunelab.models.lora_forward import fuse_lora_forward

        fuse_lora_forward(model)
        return trained_in_fp32(model)
    if method == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return trained_in_fp32(model)
    # freeze: train only the chosen decoder layers
    layers = decoder_layers(model)
    if not config.train.trainable_layers:
        raise ConfigError(
            "train.method=freeze needs train.trainable_layers",
            f"e.g. train.trainable_layers=[-1] trains the last of the {len(layers)} layers",
        )
    chosen = set()
    for index in config.train.trainable_layers:
        if not -len(layers) <= index < len(layers):
            raise ConfigError(f"train.trainable_layers: {index} is out of range (the model has {len(layers)} layers)")
        chosen.add(index % len(layers))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for index in sorted(chosen):
        for parameter in layers[index].parameters():
            parameter.requires_grad_(True)
    return trained_in_fp32(model)


def keep_4bit_layers_differentiable(model: nn.Module) -> None:
    """Stop bitsandbytes from repacking a 4-bit layer for its CPU inference kernel during training.

    On a CPU with AVX512-BF16, bitsandbytes' ``Linear4bit`` repacks its weight in place the first time it
    runs in eval mode without gradients (the loop's validation), and from then on always computes with
    ``gemv_4bit``, which has no backward: every later training step would pass no gradient back through the
    frozen 4-bit weights to the layers below (torch only warns). Training keeps the differentiable layout;
    a loaded run used for inference still gets the fast one.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def trained_in_fp32(model: nn.Module) -> nn.Module:
    """Make every trainable parameter fp32 (the frozen ones keep the dtype they were loaded in).

    The optimizer's updates are often smaller than bf16's resolution near a weight's value, so trained
    weights and their AdamW state stay fp32 while frozen weights sit in the compute dtype
    (``loader.weights_dtype``); autocast computes each matmul in bf16 from either.
    """
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.is_floating_point() and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total


def save_trained(
    model: nn.Module, tokenizer: Any, *, adapter_dir: Path, model_dir: Path, tokenizer_dir: Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the trained weights: ``adapter_dir`` for LoRA, ``model_dir`` otherwise; the tokenizer in ``tokenizer_dir``.

    A classify run's ``LabelHead`` goes into the LoRA adapter as PEFT trainable tokens (``write_label_rows``:
    plain ``peft`` loads it), or is folded into the output head of the model folder (so that folder stays a
    plain transformers model). ``tunelab.train.run`` passes
    the run folder's paths (this layer knows no run folder). ``state_dict``: the whole weights when the
    model's own are shards (FSDP, DeepSpeed), gathered by the caller.
    """
    label_head = model._modules.pop("label_head", None)  # never part of the transformers state dict
    if state_dict is not None:
        state_dict = dict(state_dict)
        delta = state_dict.pop("label_head.delta", None)
        if label_head is not None and delta is not None:
            label_head.delta = nn.Parameter(delta.detach().float(), requires_grad=False)
    if hasattr(model, "peft_config"):
        target = Path(adapter_dir)
    else:
        target = Path(model_dir)
        if label_head is not None:
            label_head.fold_into(model, state_dict)
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, **({"state_dict": state_dict} if state_dict is not None else {}))
        if label_head is not None and target == Path(adapter_dir):
            write_label_rows(tmp, model, label_head, state_dict=state_dict)
        if target == Path(model_dir):
            # model/ is a complete transformers folder on its own, tokenizer included.
            tokenizer.save_pretrained(tmp)
    with atomic_directory(Path(tokenizer_dir)) as tmp:
        tokenizer.save_pretrained(tmp)
    return target


ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"  # PEFT's own file names


def write_label_rows(adapter_dir: Path, model: nn.Module, label_head: Any, *, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Put a classify run's trained label rows into the PEFT adapter saved in ``adapter_dir``, in PEFT's own form:
    ``trainable_token_indices`` on the output head in ``adapter_config.json`` and the rows as the head's
    ``token_adapter.trainable_tokens_delta`` in ``adapter_model.safetensors`` (what ``peft.LoraConfig(trainable_token_indices=...)``
    saves), so ``peft.PeftModel.from_pretrained`` reproduces tunelab's label scores without tunelab.
    """
    import json

    from safetensors.torch import load_file, save_file

    from tunelab.models.heads import label_rows_as_trainable_tokens

    name, ids, rows = label_rows_as_trainable_tokens(model, label_head, state_dict)
    config_path, weights_path = Path(adapter_dir) / ADAPTER_CONFIG, Path(adapter_dir) / ADAPTER_WEIGHTS
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["trainable_token_indices"] = {name: ids}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    tensors = load_file(str(weights_path))
    tensors[f"base_model.model.{name}.token_adapter.trainable_tokens_delta"] = rows
    save_file(tensors, str(weights_path), metadata={"format": "pt"})


def label_rows_config(adapter_dir: Path) -> tuple[Any, dict[str, list[int]] | None]:
    """(the adapter's PEFT config without its label rows, the label rows' ``trainable_token_indices``).

    tunelab applies a classify run's label rows itself (``models.heads.LabelHead``, the label columns only),
    so it loads the LoRA part alone: PEFT's own trainable-tokens wrapper on the output head cannot hold the
    adapters of several runs, with and without label rows, on one base (a server's multi-adapter case).
    """
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(adapter_dir))
    indices = getattr(config, "trainable_token_indices", None)
    if indices:
        config.trainable_token_indices = None
    return config, indices or None


def read_label_head(adapter_dir: Path, model: nn.Module, indices: dict[str, list[int]] | None = None) -> Any:
    """A classify run's trained label rows saved in ``adapter_dir`` as a ``LabelHead`` over ``model``'s output head:
    PEFT trainable tokens (``write_label_rows``), or the delta of a run saved before (``label_head.safetensors``).
    None when the adapter has no label rows."""
    from tunelab.models.heads import LabelHead, causal_lm_of

    old = LabelHead.load(adapter_dir)
    if old is not None or not indices:
        return old
    from safetensors import safe_open

    ((name, ids),) = indices.items()
    with safe_open(str(Path(adapter_dir) / ADAPTER_WEIGHTS), framework="pt") as handle:
        rows = handle.get_tensor(f"base_model.model.{name}.token_adapter.trainable_tokens_delta")
    weight = causal_lm_of(model).get_output_embeddings().weight.detach()
    token_ids = torch.tensor(ids, dtype=torch.long)
    return LabelHead(token_ids, rows.float() - weight[token_ids.to(weight.device)].float().cpu())


def verify_weights(folder: Path, config_name: str) -> None:
    """Read every weight in ``folder`` (an adapter or a model folder, with its ``config_name``), so a damaged file
    is named before an export writes it out (it was exported with exit code 0) or a server starts on it (it
    answered 500 per request).

    Raises:
        ModelError: naming the file that is missing, truncated, garbled or holds NaN/inf.
    """
    import json

    from safetensors import safe_open

    from tunelab.errors import ModelError

    hint = "train the run again, or resume it: `tunelab run --resume RUN` continues from its last checkpoint"
    config = Path(folder) / config_name
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelError(f"{config} is damaged or missing ({type(error).__name__})", hint) from None
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder} holds no weights (*.safetensors)", hint)
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as weights:
                for key in weights.keys():  # noqa: SIM118 - safe_open is no dict
                    tensor = weights.get_tensor(key)
                    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                        raise ValueError(f"tensor {key} holds NaN or inf")
        except Exception as error:  # noqa: BLE001 - safetensors raises its own kinds for a damaged file
            reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise ModelError(f"{file} is damaged ({reason})", hint) from None


@dataclass
class MergedRun:
    """A run's final weights as one plain transformers model, with what travels with it.

    ``state_dict`` is the complete set of weights every export writes (``lm_head.weight`` included
    even when it is tied to the embeddings); ``model`` is the same weights as a module. ``run_config``
    is the run's resolved config as plain data, ``label_map`` a classify run's labels.json as plain data,
    ``out_of_scope`` its out_of_scope.json without the validation details.
    Made by ``tunelab.runs.merge_run``.
    """

    model: Any
    tokenizer: Any
    state_dict: dict[str, torch.Tensor]
    name: str
    run_config: dict
    label_map: dict | None
    base_source: Any = None
    # A classify run's out-of-scope rule as plain data (label, threshold, score, score_is): what an export says of it.
    out_of_scope: dict | None = None
    # How the run generates unless told otherwise (``runs.Run.decoding``); ``model.generation_config`` already says it.
    decoding: Decoding = field(default_factory=Decoding)


def fold_trained(loaded: Any) -> nn.Module:
    """Fold trained weights into one plain model: the one place a run's final weights are made.

    A LoRA adapter is merged into the base weights, and a classify run's trained label rows go into an
    untied output head (see ``models.heads.LabelHead``); full and freeze runs already are plain models.
    Every export (a transformers folder, a GGUF file) starts from here.
    """
    model = loaded.model
    if hasattr(model, "merge_and_unload"):
        _untie_adapted_head(model)
        model = model.merge_and_unload()
    if loaded.label_head is not None:
        loaded.label_head.fold_into(model)
    model.eval()
    return model


def _untie_adapted_head(model: nn.Module) -> None:
    """Before merging: an output head with a LoRA adapter (``lora.target_modules`` naming ``lm_head``) gets its own
    copy of a weight it shares with the input embeddings. Merging writes the head's delta into that weight, and
    through the tie into every input token's embedding too, which the run never did (its adapter moves the head only)."""
    from tunelab.models.heads import causal_lm_of, untie_output_head

    lm = causal_lm_of(model)
    head, embeddings = lm.get_output_embeddings(), lm.get_input_embeddings()
    layer = getattr(head, "base_layer", None)
    if layer is None or embeddings is None:
        return
    shared = getattr(embeddings, "base_layer", embeddings).weight
    if layer.weight.data_ptr() == shared.data_ptr():
        untie_output_head(model, shared.detach().clone())
