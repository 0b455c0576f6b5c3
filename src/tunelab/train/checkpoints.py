"""Checkpoints: everything needed to continue a run exactly where it stopped.

``checkpoints/step-N/`` holds the trainable weights (for LoRA only the adapter's, a few MB), the
optimizer and scheduler state, the random-number state of every process, and the loop's counters
(``state.json``). Each is written into a temporary folder renamed into place (``atomic_directory``),
so a run killed at any moment leaves only complete checkpoints. The last ``keep_last`` are kept.

``checkpoints/best/`` is a complete checkpoint too, written when a validation improves and *before*
that step's own checkpoint: its ``state.json`` says which step it is, and a step checkpoint that
names step S as its best is only ever written once ``best/`` holds step S. So whatever moment a run
is killed at, the newest checkpoint and ``best/`` agree, and ``best/`` (a valid place to resume
from) is also a fallback when the newest step checkpoint is damaged.

Resuming takes the newest checkpoint that loads; a damaged one (a truncated file, garbled
``state.json``) is skipped with a warning. Temporary folders of a write that was killed are removed
when the next run starts.

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

from tunelab.errors import ConfigError, TunelabError
from tunelab.faults import kill_point
from tunelab.paths import atomic_directory, disk_full_error, is_disk_full, remove_temporaries

STEP_DIR = re.compile(r"^step-(\d+)$")
BEST = "best"


@dataclass
class LoopState:
    """The loop's counters, saved with every checkpoint."""

    step: int = 0  # optimizer steps completed
    tokens: int = 0  # real (non-padding) tokens trained on, all processes
    train_seconds: float = 0.0
    validation_seconds: float = 0.0  # the validation passes' own time (not in train_seconds); 0 in checkpoints before it was kept
    best_validation_loss: float | None = None
    best_validation_score: float | None = None  # e.g. accuracy, when the task selects by a score
    best_step: int | None = None
    top_validation_score: float | None = None  # the highest score so far; the kept one may be a near-tie after it
    bad_validations: int = 0  # validations in a row without improvement (early stopping)
    last_loss: float | None = None
    processes: int | None = None  # how many processes trained it (None: written before this was kept)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> LoopState:
        """Raises: ValueError when the text is not a loop state (garbled, truncated, wrong types)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        data.setdefault("best_validation_score", None)  # checkpoints written before scores existed
        data.setdefault("top_validation_score", data["best_validation_score"])  # before near-ties went to the later one
        data.setdefault("processes", None)
        try:
            state = cls(**data)
        except TypeError as error:
            raise ValueError(str(error)) from None
        numbers = (int, float)
        if not isinstance(state.step, int) or isinstance(state.step, bool) or state.step < 0 or not isinstance(state.tokens, int):
            raise ValueError("'step' and 'tokens' must be counts")
        for name in ("best_validation_loss", "best_validation_score", "top_validation_score", "last_loss", "validation_seconds"):
            if getattr(state, name) is not None and not isinstance(getattr(state, name), numbers):
                raise ValueError(f"'{name}' must be a number")
        if state.best_step is not None and not isinstance(state.best_step, int):
            raise ValueError("'best_step' must be a step number")
        if state.processes is not None and (not isinstance(state.processes, int) or state.processes < 1):
            raise ValueError("'processes' must be a count")
        return state


class CheckpointError(TunelabError):
    """No checkpoint of a run can be resumed from (each is damaged), or best/ is not the run's best."""


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
        # One state per GPU the saving process saw; where fewer are visible now (another machine,
        # CUDA_VISIBLE_DEVICES), those that are get theirs: set_rng_state_all stopped on the first missing one.
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


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


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint folder holds (its ``state.json``), or None when that cannot be read."""
    try:
        return LoopState.from_json((path / "state.json").read_text(encoding="utf-8")).step
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def resume_candidates(folder: Path) -> list[tuple[int, Path]]:
    """Where a run can resume from, newest first: every step checkpoint and ``best/`` (a step checkpoint
    before ``best/`` of the same step)."""
    candidates = [(step, 1, path) for step, path in list_step_checkpoints(folder)]
    best = folder / BEST
    if (best / "state.json").is_file():
        step = checkpoint_step(best)
        candidates.append((step if step is not None else -1, 0, best))
    return [(step, path) for step, _, path in sorted(candidates, reverse=True)]


def clean_checkpoint_folder(folder: Path) -> list[Path]:
    """Remove what a killed checkpoint write left behind (``.step-N.*.tmp``, ``.best.*.tmp``, staging
    folders); returns what was removed. Only for a run folder this process has locked."""
    return remove_temporaries(folder)


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

    rng_states = gather_object([rng_state()])
    staging = None
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        # Every process writes its shards; the main process then adds the rest and renames.
        staging = target.with_name(f".{target.name}.sharded")
        accelerator.save_state(str(staging / "accelerate"))
        # save_state's last files (each process's random state) are written with no barrier after them: the
        # folder moves only once every process is done writing into it.
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        try:
            _write_checkpoint(target, staging, model, optimizer, scheduler, rng_states, state)
        except Exception as error:  # torch and safetensors report a full disk as RuntimeError / their own kinds
            # Weights, Adam's two moments, and the small files.
            need = 3 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) + 1_000_000
            if is_disk_full(error, target.parent, need):
                raise disk_full_error(target, need) from None
            raise
        if target.name != BEST:
            kill_point("checkpoint.renamed")
    accelerator.wait_for_everyone()


def _write_checkpoint(
    target: Path, staging: Path | None, model: nn.Module, optimizer: Any, scheduler: Any, rng_states: list, state: LoopState
) -> None:
    from safetensors.torch import save_file

    with atomic_directory(target) as tmp:
        if staging is not None:
            shutil.move(str(staging / "accelerate"), tmp / "accelerate")
            shutil.rmtree(staging, ignore_errors=True)
        else:
            save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
            _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        _torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
        for rank, rng in enumerate(rng_states):
            _torch_save(rng, tmp / f"rng-{rank}.pt")
        (tmp / "state.json").write_text(state.to_json())
        if target.name != BEST:
            kill_point("checkpoint.files-written")


def _torch_save(value: Any, path: Path) -> None:
    # Through a Python file: a full disk then raises OSError(ENOSPC). Given a path, torch's own writer
    # reports it as "RuntimeError: [enforce fail at inline_container.cc] unexpected pos ...".
    with path.open("wb") as handle:
        torch.save(value, handle)


def load_checkpoint(
    source: Path,
    *,
    accelerator: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    restore_rng: bool = True,
) -> LoopState:
    """Restore what ``save_checkpoint`` wrote; returns the loop's counters.

    Raises:
        CheckpointError: naming the file that cannot be read (a truncated or garbled checkpoint). The
            model and optimizer may then hold part of it: load another checkpoint over them.
        ConfigError: when the checkpoint was written by another number of processes (nothing is loaded).
    """
    from safetensors.torch import load_file

    def damaged(name: str, error: BaseException) -> CheckpointError:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        return CheckpointError(f"{source / name} is damaged ({reason})")

    try:
        state = LoopState.from_json((source / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise damaged("state.json", error) from None
    expected = STEP_DIR.match(source.name)
    if expected and int(expected.group(1)) != state.step:
        raise damaged("state.json", ValueError(f"it says step {state.step}, the folder is step {expected.group(1)}"))
    if state.processes is not None and state.processes != accelerator.num_processes:
        # Each step takes batch_size x grad_accum examples per process: on another count the steps would take other
        # examples (and their number would change). Not a damaged checkpoint: no other one would do better.
        raise ConfigError(
            f"{source.parent.parent} was trained on {state.processes} processes and is resumed on {accelerator.num_processes}: "
            "each step would take other examples",
            f"resume it on {state.processes} processes"
            + (f' (--launch "--num_processes {state.processes}")' if state.processes > 1 else " (without --launch)"),
        )
    current = "state.json"
    try:
        if (source / "accelerate").is_dir():
            current = "accelerate"
            accelerator.load_state(str(source / "accelerate"))
        else:
            current = "trainable.safetensors"
            load_trainable_state(model, load_file(str(source / "trainable.safetensors")))
            current = "optimizer.pt"
            # Onto the CPU: a checkpoint written on a GPU resumes on a machine without one (or on another GPU), and
            # load_state_dict moves each state to its parameter's device.
            optimizer.load_state_dict(torch.load(source / "optimizer.pt", map_location="cpu", weights_only=True))
        current = "scheduler.pt"
        scheduler.load_state_dict(torch.load(source / "scheduler.pt", map_location="cpu", weights_only=True))
        rng_file = source / f"rng-{accelerator.process_index}.pt"
        current = rng_file.name
        if restore_rng and rng_file.is_file():
            # Not weights_only: Python's and numpy's RNG states are tuples holding numpy arrays.
            set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False))
    except Exception as error:  # noqa: BLE001 - safetensors, torch and pickle each raise their own kinds
        raise damaged(current, error) from None
    return state


def resume_newest(
    folder: Path, *, accelerator: Any, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[LoopState | None, list[str]]:
    """Load the newest checkpoint that loads (``resume_candidates``); returns its state (None when there is
    no checkpoint at all) and one warning per damaged checkpoint passed over.

    Raises:
        CheckpointError: when checkpoints exist and none of them loads (naming the newest one's damage).
        ConfigError: when the run was trained on another number of processes.
    """
    warnings: list[str] = []
    first_error: CheckpointError | None = None
    candidates = resume_candidates(folder)
    for _step, path in candidates:
        try:
            state = load_checkpoint(path, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler)
        except CheckpointError as error:
            first_error = first_error or error
            warnings.append(f"{error.message}: not resumed from it")
            continue
        if warnings:
            warnings.append(f"resumed from the newest intact checkpoint, {path} (step {state.step})")
        return state, warnings
    if first_error is not None:
        raise CheckpointError(
            f"{first_error.message}, and no other checkpoint of this run is intact",
            f"delete {folder} to train this run again from the start",
        )
    return None, warnings


def prune_checkpoints(folder: Path, keep_last: int) -> None:
    """Remove step checkpoints beyond the newest ``keep_last`` (``best/`` is separate and kept)."""
    for _, path in list_step_checkpoints(folder)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def best_state(folder: Path) -> LoopState | None:
    """The loop state saved with ``best/`` (its ``step`` is which step it holds), or None without one."""
    path = folder / BEST / "state.json"
    if not path.is_file():
        return None
    try:
        return LoopState.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
