"""What is trained: LoRA adapters (PEFT), every weight, or only chosen decoder layers; and merged export.

The adapter is saved in PEFT's own format, so it loads in plain ``peft`` and in any PEFT-aware
server. ``merge_run`` folds it into the base weights (the one home of a run's final weights);
``merge_and_save`` writes them as a model folder that plain transformers loads, and
``tunelab.models.gguf_export`` as one GGUF file.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.config import RunConfig
from tunelab.errors import ConfigError, ModelError
from tunelab.paths import RunFolder, atomic_directory


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
    if method == "lora":
        from peft import LoraConfig, get_peft_model

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
        return model
    if method == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
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


def save_trained(model: nn.Module, tokenizer: Any, run: RunFolder) -> Path:
    """Write the trained weights into the run folder: ``adapter/`` for LoRA, ``model/`` otherwise.

    A classify run's ``LabelHead`` is saved next to the LoRA adapter, or folded into the output head
    of a ``model/`` folder (so that folder stays a plain transformers model).
    """
    label_head = model._modules.pop("label_head", None)  # never part of the transformers state dict
    if hasattr(model, "peft_config"):
        target = run.adapter
    else:
        target = run.model
        if label_head is not None:
            label_head.fold_into(model)
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        if label_head is not None and target == run.adapter:
            label_head.save(tmp)
        if target == run.model:
            # model/ is a complete transformers folder on its own, tokenizer included.
            tokenizer.save_pretrained(tmp)
    with atomic_directory(run.tokenizer) as tmp:
        tokenizer.save_pretrained(tmp)
    return target


@dataclass
class MergedRun:
    """A run's final weights as one plain transformers model, with what travels with it.

    ``state_dict`` is the complete set of weights every export writes (``lm_head.weight`` included
    even when it is tied to the embeddings); ``model`` is the same weights as a module.
    """

    model: Any
    tokenizer: Any
    state_dict: dict[str, torch.Tensor]
    run: RunFolder
    run_config: dict
    label_map: dict | None
    base_source: Any = None


def merge_run(run_dir: str | Path) -> MergedRun:
    """Fold a run's trained weights into one plain model: the one place a run's final weights are made.

    LoRA adapters are merged into the base weights; full and freeze runs already are plain models.
    Every export (a transformers folder, a GGUF file) starts from here, so whatever else a run may
    one day train on top of its weights is folded in once, for all of them.

    Raises:
        ModelError: when ``run_dir`` is no finished run.
    """
    from tunelab.models.loader import load_run

    run = RunFolder(Path(run_dir))
    loaded = load_run(run.root)
    model = loaded.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if loaded.label_head is not None:
        # classify: the trained label rows go into an untied output head (see models.heads.LabelHead)
        loaded.label_head.fold_into(model)
    model.eval()
    state_dict = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    return MergedRun(
        model=model,
        tokenizer=loaded.tokenizer,
        state_dict=state_dict,
        run=run,
        run_config=loaded.run_config or {},
        label_map=loaded.label_map,
        base_source=loaded.base_source,
    )


def merge_and_save(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Fold a run's adapter into its base model and write a plain transformers folder at ``out_dir``.

    Full and freeze runs already are plain model folders; they are copied. The tokenizer (with its
    chat template) and, for classify, ``labels.json`` go along.

    Raises:
        ModelError: when ``run_dir`` is no finished run or ``out_dir`` already exists.
    """
    out = Path(out_dir)
    if out.exists():
        raise ModelError(f"{out} already exists; export never overwrites", "choose a new output folder")
    merged = merge_run(run_dir)
    with atomic_directory(out) as tmp:
        merged.model.save_pretrained(tmp)
        merged.tokenizer.save_pretrained(tmp)
        if merged.run.labels.is_file():
            shutil.copy2(merged.run.labels, tmp / "labels.json")
    return out
