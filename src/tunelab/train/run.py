"""What every task does around the loop: the run folder, the accelerator, the model, the outputs.

A task recipe reads::

    session = start_run(config, split, run_dir=run_dir, resume=resume)   # folder, accelerator
    base = session.load_model()                                           # the model, seeded after loading
    ... tokenize, apply the method, build collate + loss ...
    loop = session.train(model, examples, validation, collate=..., loss_fn=..., progress=progress)
    return finish_run(session, model, loop)                               # adapter/ or model/, tokenizer/
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab.config import ResolvedConfig, dump_config
from tunelab.data.split import Split
from tunelab.errors import ConfigError, DataError
from tunelab.faults import kill_point
from tunelab.models.adapters import count_parameters, save_trained
from tunelab.models.generate import check_context
from tunelab.models.loader import LoadedModel
from tunelab.paths import atomic_write_text, disk_full_error, is_disk_full
from tunelab.runs import RunFolder, load_for_training
from tunelab.runtime import pin_threads, resolve_precision
from tunelab.train.loop import LoopResult, Progress, train_loop


@dataclass
class TrainResult:
    """What a training run produced (the lead's ``tunelab run`` evaluates ``run_dir`` next)."""

    run_dir: Path
    steps: int
    final_loss: float | None
    best_validation_loss: float | None
    tokens: int
    tokens_per_second: float
    seconds: float
    precision: str
    trainable_parameters: int
    total_parameters: int
    method: str
    stopped_early: bool = False
    warnings: list[str] = field(default_factory=list)
    best_validation_score: float | None = None  # classify: the kept checkpoint's validation accuracy
    validation_seconds: float | None = None  # the validation passes' time, apart from seconds (None: no validation set)

    # Clock readings: a resumed run's differ from an uninterrupted one's, every other field is the same bit for bit.
    CLOCK_FIELDS = ("seconds", "validation_seconds", "tokens_per_second")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["run_dir"] = str(self.run_dir)
        return data


@dataclass
class Session:
    config: ResolvedConfig
    run: RunFolder
    accelerator: Any
    precision: str
    resume: bool
    tokenizer: Any = None  # set by load_model(); saved with the trained weights

    def load_model(self) -> LoadedModel:
        """Load the run's model as training holds it (frozen weights in the compute dtype, a 4-bit base for
        qlora: ``load_for_training``), then seed (LoRA's initialisation and dropout draw from here,
        identically on resume) and switch on gradient checkpointing when asked.

        Raises:
            ModelError: when the model cannot be loaded.
            ConfigError: when the run's rows may be longer than the model's context (``models.generate.check_context``).
        """
        from accelerate.utils import set_seed

        config = self.config
        loaded = load_for_training(config, self.precision)
        check_context(config, loaded.model)
        set_seed(config.train.seed)
        if config.train.gradient_checkpointing:
            loaded.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.tokenizer = loaded.tokenizer
        return loaded

    def train(
        self,
        model: Any,
        examples: Sequence[Any],
        validation: Sequence[Any],
        *,
        collate: Callable[[Sequence[Any]], dict[str, torch.Tensor]],
        loss_fn: Callable[..., torch.Tensor],
        progress: Callable[[Progress], None] | None = None,
        validation_score: Callable[..., torch.Tensor] | None = None,
    ) -> LoopResult:
        """``train_loop`` with this run's config, folder, accelerator and resume flag: a recipe names only what
        its task changes (the examples, how they are batched and scored).

        Raises:
            TrainingError: as ``train_loop``.
        """
        return train_loop(
            model=model,
            train_examples=examples,
            validation_examples=validation,
            collate=collate,
            loss_fn=loss_fn,
            config=self.config.train,
            max_length=self.config.data.max_length,
            run=self.run,
            accelerator=self.accelerator,
            progress=progress,
            resume=self.resume,
            validation_score=validation_score,
        )


def _check_resume(config: ResolvedConfig, split: Split, run: RunFolder) -> None:
    if not run.config.is_file():
        raise ConfigError(f"cannot resume {run.root}: it has no {run.config.name}", "start a new run instead")
    from tunelab.runs import Run

    saved = Run.open(run.root).config
    if dump_config(saved) != dump_config(config):
        raise ConfigError(
            f"cannot resume {run.root} with a different config",
            "resume with `tunelab train --resume RUN` (it reads the run's own config)",
        )
    fingerprint = split.fingerprint
    if run.split.is_file():
        try:
            saved_split = json.loads(run.split.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            saved_split = {}  # rewritten below from the split the run was given
            split.save(run.split)
        if isinstance(saved_split, dict) and saved_split.get("fingerprint") not in (None, fingerprint):
            raise DataError(f"cannot resume {run.root}: the data changed since the run started (split fingerprint differs)")


def make_accelerator(config: ResolvedConfig, run: RunFolder) -> tuple[Any, str]:
    """An Accelerator for this run and the precision it computes in (``bf16`` autocast or ``fp32``)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState

    # accelerate keeps one global state per process; a notebook or test that trains twice with another
    # precision must start from a fresh one (the distributed process group itself is kept).
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    # accelerate launch --cpu (and tunelab's --launch "... --cpu") keeps the processes on the CPU, GPUs or not.
    cpu_only = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
    device = "cuda" if torch.cuda.is_available() and not cpu_only else "cpu"
    precision = resolve_precision(config.train.precision, device)
    tracker = None if config.train.tracker == "none" else config.train.tracker
    fsdp_between_cpus = device == "cpu" and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    plugin = None
    if fsdp_between_cpus:
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* settings accelerate launch passed on
    accelerator = Accelerator(
        # cpu=True on a machine without CUDA is what makes accelerate use gloo across CPU processes.
        cpu=device == "cpu",
        mixed_precision="bf16" if precision == "bf16" else "no",
        log_with=tracker,
        project_dir=str(run.root / "logs") if tracker else None,
        fsdp_plugin=plugin,
    )
    if plugin is not None and accelerator.num_processes > 1:
        from accelerate.utils import DistributedType

        # accelerate shards with FSDP only between accelerators and runs CPU processes as DDP; torch's FSDP2 itself
        # shards over gloo. Switching its state to FSDP is what lets CPU processes run (and the tests check) the
        # FSDP path a GPU run takes: sharded weights and optimizer state, sharded checkpoints, gathered final weights.
        # Both states: every AcceleratorState() accelerate makes later copies the process-wide PartialState over its own.
        PartialState().distributed_type = DistributedType.FSDP
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
    return accelerator, precision


# What a launcher that starts several processes sets in each (torchrun, mpirun's flavours): accelerate's own list.
_GROUP_SIZE = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def check_launch() -> None:
    """Refuse a training that ``accelerate launch --num_processes N --cpu`` started as one process.

    accelerate starts several CPU processes only through mpirun: without it, ``--cpu`` runs the script once, with
    MASTER_ADDR set for the processes it did not start. That one process trained with its share of the global batch
    (``batch_size``, not ``N x batch_size``), the steps and learning-rate schedule of another run, without a word.

    Raises:
        ConfigError: naming the commands that do start N CPU processes.
    """
    cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
    if cpu and os.environ.get("MASTER_ADDR") and not any(os.environ.get(name) for name in (*_GROUP_SIZE, "LOCAL_RANK")):
        raise ConfigError(
            "accelerate launch --cpu started this training as one process, not the several asked for (accelerate starts "
            "several CPU processes only through mpirun): it would train with one process's share of the global batch",
            'let tunelab launch them: tunelab train CONFIG --launch "--num_processes N --cpu" (DDP over gloo), or '
            "accelerate launch --multi_gpu --num_processes N ... on a machine without GPUs",
        )


def check_model(config: ResolvedConfig) -> None:
    """Refuse a run whose model is not there or whose rows may be longer than its context (``check_context``), from
    the model's config alone: called before a run folder or a registry row is written, so that a refused config
    leaves neither behind (``Session.load_model`` checks the loaded model again).

    Raises:
        ModelError: when the model cannot be found.
        ConfigError: as ``models.generate.check_context``.
    """
    from tunelab.runs import load_model_config

    model = config.model
    check_context(config, load_model_config(model.name, allow_network=model.allow_network, revision=model.revision))


def check_new_run_folder(run: RunFolder) -> None:
    """Refuse a run folder that already holds a run (a run is never overwritten).

    Files the `tunelab run` pipeline writes before training (its state, the baseline) are no run yet.

    Raises:
        ConfigError: when ``run`` already holds a config, checkpoints or trained weights.
    """
    if run.config.is_file() or run.checkpoints.exists() or run.adapter.exists() or run.model.exists():
        raise ConfigError(
            f"run folder {run.root} already exists; a run is never overwritten",
            f"choose another name (name=...), delete the folder, or continue it with `tunelab train --resume {run.root}`",
        )


def start_run(config: ResolvedConfig, split: Split, *, run_dir: str | Path, resume: bool = False) -> Session:
    """Create (or reopen, for resume) the run folder, save config and split, set up the accelerator.

    The recipe loads the model next, with ``session.load_model()``.

    Raises:
        ConfigError: when ``run_dir`` already holds something and this is no resume, resume
            is asked with a different config, or ``train.tracker`` is not installed.
    """
    require_tracker(config)
    check_launch()
    run = RunFolder(Path(run_dir))
    if resume:
        _check_resume(config, split, run)
    else:
        check_new_run_folder(run)
    accelerator, precision = make_accelerator(config, run)
    if accelerator.is_main_process and not resume:
        run.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config, dump_config(config))
        split.save(run.split)
    accelerator.wait_for_everyone()
    # train.threads wins over the free-core rule in every step of this process (the loop sizes the threads).
    pin_threads(config.train.threads)

    if config.train.tracker != "none":
        accelerator.init_trackers(run.root.name, config=_flat(config.model_dump(mode="json")), init_kwargs=_tracker_kwargs(config, run))
        if config.train.tracker == "mlflow" and accelerator.is_main_process:
            # The evaluation and the verdict are logged to this same MLflow run later (report_to_tracker).
            active = accelerator.get_tracker("mlflow").tracker
            (run.root / "logs").mkdir(parents=True, exist_ok=True)
            atomic_write_text(run.root / "logs" / MLFLOW_RUN_FILE, active.info.run_id)
    return Session(config, run, accelerator, precision, resume)


# train.tracker -> the module it needs; the extra of the same name installs it.
TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
MLFLOW_RUN_FILE = "mlflow_run_id"


def require_tracker(config: ResolvedConfig) -> None:
    """Stop before anything runs when ``train.tracker`` names a tracker whose package is not installed.

    Raises:
        ConfigError: naming the extra to install.
    """
    import importlib.util

    name = config.train.tracker
    if name == "none":
        return
    if not any(importlib.util.find_spec(module) is not None for module in TRACKER_MODULES[name]):
        raise ConfigError(
            f"train.tracker: {name} needs the {name} package, which is not installed here",
            f"pip install 'tunelab[{name}]' (or set train.tracker: none)",
        )


def _tracker_kwargs(config: ResolvedConfig, run: RunFolder) -> dict[str, Any]:
    # A W&B run id of our own, so that the evaluation logged after training lands in the same W&B run.
    if config.train.tracker == "wandb":
        return {"wandb": {"id": _wandb_id(run), "resume": "allow"}}
    return {}


def _wandb_id(run: RunFolder) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_-]+", "-", run.root.name)[:64] or "tunelab-run"


def report_to_tracker(config: ResolvedConfig, run_dir: str | Path, values: dict[str, float | str], *, step: int | None = None) -> None:
    """Log ``values`` (the evaluation metrics, the verdict) to the run's experiment tracker, beside its training curves.

    The same tracker run as training: TensorBoard's log folder, W&B's run id, MLflow's saved run id.
    """
    name = config.train.tracker
    if name == "none" or not values:
        return
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    run = RunFolder(Path(run_dir))
    if name == "tensorboard":
        tracker: Any = TensorBoardTracker(run.root.name, str(run.root / "logs"))
    elif name == "wandb":
        tracker = WandBTracker(run.root.name, id=_wandb_id(run), resume="allow")
    else:
        saved = run.root / "logs" / MLFLOW_RUN_FILE
        tracker = MLflowTracker(run.root.name, str(run.root / "logs"), run_id=saved.read_text().strip() if saved.is_file() else None)
    tracker.start()
    try:
        numbers = {key: value for key, value in values.items() if isinstance(value, int | float)}
        texts = {key: value for key, value in values.items() if isinstance(value, str)}
        tracker.log(numbers if name == "mlflow" else values, step=step)
        if name == "mlflow" and texts:
            import mlflow

            mlflow.set_tags(texts)  # MLflow keeps text as tags, not metrics
    finally:
        tracker.finish()


def finish_run(session: Session, model: Any, loop: LoopResult) -> TrainResult:
    """Save the trained weights (adapter/ or model/) and the tokenizer; return the summary."""
    from accelerate.utils import DistributedType

    accelerator = session.accelerator
    state_dict = None
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        # Each process holds a shard: every one takes part in gathering the whole weights onto the main one.
        full = accelerator.get_state_dict(loop.module)
        state_dict = {name.removeprefix("model."): tensor for name, tensor in full.items()}
    if accelerator.is_main_process:
        run = session.run
        try:
            save_trained(model, session.tokenizer, adapter_dir=run.adapter, model_dir=run.model, tokenizer_dir=run.tokenizer,
                         state_dict=state_dict)
        except Exception as error:  # torch/safetensors report a full disk as RuntimeError or their own kinds
            if is_disk_full(error, run.root):
                trainable, _ = count_parameters(model)
                raise disk_full_error(run.root, 4 * trainable) from None
            raise
        kill_point("train.weights-saved")
        # The adapter names the base a user can fetch and carries a model card (filled in again once evaluated).
        from tunelab.runs import Run, make_adapter_portable

        make_adapter_portable(Run.open(run.root))
    accelerator.wait_for_everyone()
    if session.config.train.tracker != "none":
        accelerator.end_training()
    trainable, total = count_parameters(model)
    return TrainResult(
        run_dir=session.run.root,
        steps=loop.steps,
        final_loss=loop.final_loss,
        best_validation_loss=loop.best_validation_loss,
        tokens=loop.tokens,
        tokens_per_second=loop.tokens_per_second,
        seconds=loop.seconds,
        precision=session.precision,
        trainable_parameters=trainable,
        total_parameters=total,
        method=session.config.train.method,
        stopped_early=loop.stopped_early,
        best_validation_score=loop.best_validation_score,
        validation_seconds=loop.validation_seconds,
        warnings=list(loop.warnings),
    )


def _flat(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat
