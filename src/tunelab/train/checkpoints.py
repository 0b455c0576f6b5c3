"""Checkpoints: everything needed to continue a run exactly where it stopped.

``checkpoints/step-N/`` holds the trainable weights (for LoRA only the adapter's, a few MB), the
optimizer and scheduler state, the random-number state of every process, and the loop's counters.
Each is written into a temporary folder renamed into place (``atomic_directory``), so a run killed
at any moment leaves only complete checkpoints. The last ``keep_last`` are kept, and
``checkpoints/best/`` holds the one with the lowest validation loss.

Under FSDP or DeepSpeed the weights and optimizer are sharded; accelerate's ``save_state`` writes
them (into ``accelerate/`` inside the checkpoint).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tunelab.paths import atomic_directory

STEP_DIR = re.compile(r"^step-(\d+)$")
BEST = "best"


@dataclass
class LoopState:
    """The loop's counters, saved with every checkpoint."""

    step: int = 0  # optimizer steps completed
    tokens: int = 0  # real (non-padding) tokens trained on, all processes
    train_seconds: float = 0.0
    best_validation_loss: float | None = None
    best_validation_score: float | None = None  # e.g. accuracy, when the task selects by a score
    best_step: int | None = None
    top_validation_score: float | None = None  # the highest score so far; the kept one may be a near-tie after it
    bad_validations: int = 0  # validations in a row without improvement (early stopping)
    last_loss: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> LoopState:
        data = json.loads(text)
        data.setdefault("best_validation_score", None)  # checkpoints written before scores existed
        data.setdefault("top_validation_score", data["best_validation_score"])  # before near-ties went to the later one
        return cls(**data)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    parameters = dict(model.named_parameters())
    missing = [name for name, p in parameters.items() if p.requires_grad and name not in tensors]
    if missing:
        raise RuntimeError(f"checkpoint lacks trainable weights: {missing[:3]}...")
    with torch.no_grad():
        for name, value in tensors.items():
            parameters[name].copy_(value)


def list_step_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete step checkpoint, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = STEP_DIR.match(child.name)
        if match and (child / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def save_checkpoint(
    target: Path,
    *,
    accelerator: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: LoopState,
) -> None:
    """Write one checkpoint folder atomically (every process must call this: RNG states are gathered)."""
    from accelerate.utils import DistributedType, gather_object
    from safetensors.torch import save_file

    rng_states = gather_object([rng_state()])
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if sharded:
        # Every process writes its shards; the main process then adds the rest and renames.
        staging = target.with_name(f".{target.name}.sharded")
        accelerator.save_state(str(staging / "accelerate"))
    if accelerator.is_main_process:
        with atomic_directory(target) as tmp:
            if sharded:
                shutil.move(str(staging / "accelerate"), tmp / "accelerate")
                shutil.rmtree(staging, ignore_errors=True)
            else:
                save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            for rank, rng in enumerate(rng_states):
                torch.save(rng, tmp / f"rng-{rank}.pt")
            (tmp / "state.json").write_text(state.to_json())
    accelerator.wait_for_everyone()


def load_checkpoint(
    source: Path,
    *,
    accelerator: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    restore_rng: bool = True,
) -> LoopState:
    """Restore what ``save_checkpoint`` wrote; returns the loop's counters."""
    from safetensors.torch import load_file

    if (source / "accelerate").is_dir():
        accelerator.load_state(str(source / "accelerate"))
    else:
        load_trainable_state(model, load_file(str(source / "trainable.safetensors")))
        optimizer.load_state_dict(torch.load(source / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(source / "scheduler.pt", weights_only=False))
    rng_file = source / f"rng-{accelerator.process_index}.pt"
    if restore_rng and rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return LoopState.from_json((source / "state.json").read_text())


def prune_checkpoints(folder: Path, keep_last: int) -> None:
    """Remove step checkpoints beyond the newest ``keep_last`` (``best/`` is separate and kept)."""
    for _, path in list_step_checkpoints(folder)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def copy_as_best(source: Path, folder: Path) -> None:
    with atomic_directory(folder / BEST) as tmp:
        for item in source.iterdir():
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
