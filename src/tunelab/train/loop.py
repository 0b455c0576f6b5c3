"""The one training loop every task uses. It reads top to bottom.

A task hands it the tokenized examples, a ``collate`` (examples -> tensors) and a ``loss_fn``
(model, batch -> summed loss); the loop does the rest: optimizer and schedule, gradient
accumulation, mixed precision and distribution through accelerate, validation and early stopping,
checkpoints and exact resume, metrics, and the guards (NaN loss, out of memory).

Exactness: the examples of optimizer step ``s`` are fixed by the seed (``StepPlan``), each step's
loss is the sum over its targets divided by the number of targets of the whole step (all
micro-batches, all processes), and checkpoints carry the optimizer, scheduler and RNG state. So a
resumed run continues with exactly the updates the uninterrupted run would have made, and two
processes with half the batch each make the same updates as one process with the whole batch.

Speed: nothing is read back from the device inside a step; the summed loss stays on the device and
is read every ``train.log_every`` steps (and before each validation or checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tunelab.config import ResolvedTrainConfig, TrainSchedule
from tunelab.errors import ConfigError, TunelabError
from tunelab.faults import kill_point
from tunelab.models.fused import compile_model
from tunelab.runs import RunFolder
from tunelab.runtime import ThreadFollower, is_out_of_memory
from tunelab.train.batching import StepPlan, micro_batches, real_tokens, split_passes, trained_targets
from tunelab.train.checkpoints import (
    BEST,
    CheckpointError,
    LoopState,
    best_state,
    clean_checkpoint_folder,
    list_step_checkpoints,
    load_trainable_state,
    prune_checkpoints,
    resume_newest,
    save_checkpoint,
)


class TrainingError(TunelabError):
    """Training cannot go on as configured (NaN loss, out of memory)."""


@dataclass
class Progress:
    """What the loop reports after every optimizer step (the CLI draws its progress bar from it)."""

    step: int
    total_steps: int
    loss: float | None  # mean loss over the last log interval (None before the first read)
    lr: float
    tokens: int
    tokens_per_second: float
    elapsed: float
    eta_seconds: float | None
    validation_loss: float | None = None


@dataclass
class LoopResult:
    steps: int
    final_loss: float | None
    best_validation_loss: float | None
    best_step: int | None
    tokens: int
    tokens_per_second: float
    seconds: float
    stopped_early: bool
    best_validation_score: float | None = None
    validation_seconds: float | None = None  # the validation passes' time (not in seconds); None without validation examples
    warnings: list[str] = field(default_factory=list)  # e.g. a damaged checkpoint passed over on resume
    module: Any = None  # the module accelerate prepared (under FSDP/DeepSpeed it holds the sharded weights)


class LossModule(nn.Module):
    """The model and its loss as one module, so DDP/FSDP see the whole computation in ``forward``."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, dict], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def improves(
    loss: float, score: float | None, best_loss: float | None, top_score: float | None, *, tolerance: float = 0.0
) -> bool:
    """Whether a validation replaces the kept checkpoint. Without a score: by lower loss. With one (higher
    is better): when its score is within ``tolerance`` of the highest so far (``top_score``), so the later,
    longer-trained weights win every near-tie.

    The loop passes one validation example's worth as the tolerance: a difference of one example is
    noise. Measured in bench/README.md ("Quality"): on SNIPS with 7 validation rows the strict rule kept
    a first-epoch checkpoint that happened to get 7 of 7 over the last one at 6 of 7, and it scored 0.70
    on 350 held-out requests where the classical baseline scored 0.94.
    """
    if score is None:
        return best_loss is None or loss < best_loss
    return top_score is None or score >= top_score - tolerance - 1e-9


def make_optimizer(model: nn.Module, config: ResolvedTrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (no weight decay on biases and norms), fused where possible."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    # fused on every device torch has the kernel for: on this CPU (bench/optimizer_step.py, the default
    # model's 4.88M LoRA weights in 420 tensors) one fused step took 10 ms against 42 ms for foreach.
    device_type = next((p.device.type for g in groups for p in g["params"]), "cpu")
    options = {"fused": True} if device_type in ("cpu", "cuda", "mps", "xpu") else {"foreach": True}
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, **options)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: ResolvedTrainConfig, schedule: TrainSchedule
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over the schedule's warmup steps, then cosine / linear decay to 0, or constant."""
    warmup, total_steps = schedule.warmup_steps, schedule.total_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _precision(accelerator: Any) -> str:
    return "bf16" if getattr(accelerator, "mixed_precision", "no") == "bf16" else "fp32"


def _out_of_memory_error(config: ResolvedTrainConfig, max_length: int) -> TrainingError:
    return TrainingError(
        f"out of memory with train.batch_size={config.batch_size} and data.max_length={max_length}",
        "set train.max_pass_tokens (the same step in smaller passes), lower train.batch_size (raise "
        "train.grad_accum to keep the same effective batch), lower data.max_length, or set "
        "train.gradient_checkpointing=true",
    )


def train_loop(
    *,
    model: nn.Module,
    train_examples: Sequence[Any],
    validation_examples: Sequence[Any],
    collate: Callable[[Sequence[Any]], dict[str, torch.Tensor]],
    loss_fn: Callable[[nn.Module, dict], torch.Tensor],
    config: ResolvedTrainConfig,
    max_length: int,
    run: RunFolder,
    accelerator: Any,
    progress: Callable[[Progress], None] | None = None,
    resume: bool = False,
    validation_score: Callable[[nn.Module, dict], torch.Tensor] | None = None,
) -> LoopResult:
    """Train ``model`` in place; returns counters. On return the model holds the best weights by
    validation loss when there was a validation set, else the last ones.

    ``validation_score(model, batch) -> summed score`` (e.g. the number of correct answers) makes
    the kept checkpoint the latest one within one validation example of the highest mean score (see
    :func:`improves`):
    for classify, the loss keeps falling on confident right answers long after accuracy stops
    rising, and the user is judged on accuracy.

    Raises:
        TrainingError: on a NaN/inf loss (the last good checkpoint is kept) or when memory runs out.
        CheckpointError: on resume, when checkpoints exist and none of them loads.
        ConfigError: on resume on another number of processes than the run was trained on.
        DiskFullError: when a checkpoint cannot be written for lack of space (nothing half-written is left).
    """
    world = accelerator.num_processes
    rank = accelerator.process_index
    if not isinstance(config, ResolvedTrainConfig):
        raise ConfigError(
            "train_loop needs a resolved train config (learning rate and epochs filled in)",
            "build the config with tunelab.config.parse_config or load_config",
        )
    schedule = config.schedule(len(train_examples), world)
    total_steps = schedule.total_steps
    plan = StepPlan(len(train_examples), config.batch_size * config.grad_accum * world, config.seed)

    # 1. Optimizer, schedule, and accelerate's wrapping (DDP/FSDP/DeepSpeed, device placement).
    # train.compile (bench/README.md, "A faster step"): compiled elementwise kernels or whole compiled blocks.
    compile_model(model, config.compile, device=accelerator.device.type, precision=_precision(accelerator))
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, schedule)
    module, optimizer = accelerator.prepare(LossModule(model, loss_fn), optimizer)
    trainable = [p for p in module.parameters() if p.requires_grad]
    deepspeed = str(accelerator.distributed_type).endswith("DEEPSPEED")
    sharded = deepspeed or str(accelerator.distributed_type).endswith("FSDP")  # each process holds a shard of the weights
    device = accelerator.device
    pass_tokens = config.pass_token_budget(device.type)
    # torch's threads follow the free cores (train.threads or OMP_NUM_THREADS win): sized now, again at each
    # validation point and at most every minute between them, as other processes come and go.
    threads = ThreadFollower(config.threads, device=device.type)
    threads.check(force=True)

    if accelerator.is_main_process:
        run.root.mkdir(parents=True, exist_ok=True)
        clean_checkpoint_folder(run.checkpoints)  # what a killed checkpoint write left behind

    # 2. Resume: weights, optimizer, scheduler, RNG and counters of the newest checkpoint that loads
    # (a damaged newer one is passed over, with a warning).
    state = LoopState(processes=world)
    warnings: list[str] = []
    if resume:
        resumed, warnings = resume_newest(run.checkpoints, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler)
        if resumed is not None:
            state = resumed
            state.processes = world  # the same count (load_checkpoint refuses another), or a checkpoint that did not say
            if accelerator.is_main_process:
                _truncate_metrics(run, state.step)
    elif accelerator.is_main_process and run.metrics.exists():
        run.metrics.unlink()
    if config.early_stopping_patience is not None and not validation_examples:
        warnings.append(
            "train.early_stopping_patience is set, but there are no validation examples: the run never stops early "
            "(set data.validation_size above 0 or give data.validation)"
        )

    def to_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def log(record: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            with run.metrics.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        if config.tracker != "none":
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def validate_now() -> tuple[float | None, float | None, int]:
        """(mean validation loss, mean validation score or None, targets counted) over every process's shard."""
        if not validation_examples:
            return None, None, 0
        module.eval()
        total = torch.zeros((), device=device)
        score = torch.zeros((), device=device)
        count = 0
        shard = list(validation_examples)[rank::world]
        # Every process runs as many batches as the one with the most rows, a process short of rows on a batch it
        # does not count: under FSDP each forward gathers the weights from every process, and with 5 rows at 2 a
        # batch on 2 processes the first waited forever for the second's missing third forward.
        batches = math.ceil(math.ceil(len(validation_examples) / world) / config.batch_size)
        with torch.no_grad(), accelerator.autocast():
            for start in range(0, batches * config.batch_size, config.batch_size):
                chunk = shard[start : start + config.batch_size]
                counted = 1.0 if chunk else 0.0
                batch = to_device(collate(chunk or [validation_examples[0]]))
                total += module(batch).float() * counted
                if validation_score is not None:
                    score += validation_score(model, batch).float() * counted
                count += sum(trained_targets(e) for e in chunk)
        module.train()
        totals = accelerator.reduce(torch.stack([total, score, torch.tensor(float(count), device=device)]), "sum")
        denominator = totals[2].clamp(min=1)
        mean_score = (totals[1] / denominator).item() if validation_score is not None else None
        return (totals[0] / denominator).item(), mean_score, int(totals[2].item())

    def passes_of(examples: list, process: int) -> list[list]:
        """The forward/backward passes of process ``process`` in the optimizer step of ``examples``."""
        planned = micro_batches(
            examples, batch_size=config.batch_size, grad_accum=config.grad_accum,
            world_size=world, rank=process, bucket=not getattr(collate, "packing", True),
        )
        return [part for batch in planned for part in split_passes(batch, pass_tokens)]

    # 3. The loop: one iteration is one optimizer step over a fixed global batch.
    module.train()
    # A run that stopped early and was interrupted before its weights were saved resumes from its last checkpoint,
    # which already ran out of patience: it stops there again instead of training past where it stopped.
    patience = config.early_stopping_patience
    stopped_early = patience is not None and state.bad_validations >= patience and state.step < total_steps
    window_loss = torch.zeros((), device=device)  # summed loss since the last read, on the device
    window_targets = 0
    start_seconds = state.train_seconds
    start_tokens = state.tokens
    session_first_step = state.step
    try:
        for step in range(state.step, state.step if stopped_early else total_steps):
            step_started = time.perf_counter()
            examples = [train_examples[i] for i in plan.indices(step)]
            step_targets = sum(trained_targets(e) for e in examples)  # the whole step's, known on the host
            batches = passes_of(examples, rank)
            # Under FSDP every pass gathers the weights from every process: a process with fewer passes (its rows
            # shorter, fewer cuts by max_pass_tokens) left the others waiting forever. It runs passes it does not
            # count up to the most any process has (each knows every process's rows: the step's plan is global).
            counted_passes = len(batches)
            if sharded and world > 1:
                most = max(len(passes_of(examples, process)) for process in range(world))
                batches += [batches[-1][:1]] * (most - counted_passes)
            if len(batches) > 1 and deepspeed:
                raise ConfigError(
                    f"under DeepSpeed an optimizer step must be one backward pass; step {step + 1} has {len(batches)} "
                    "(accelerate's DeepSpeed wrapper steps the optimizer at every backward)",
                    "set train.grad_accum=1 and train.max_pass_tokens=null (raise train.batch_size instead)",
                )
            for index, micro in enumerate(batches):
                last = index == len(batches) - 1
                counted = 1.0 if index < counted_passes else 0.0
                # Gradients are synchronised across processes only on the last pass.
                sync = contextlib.nullcontext() if last else accelerator.no_sync(module)
                with sync:
                    with accelerator.autocast():
                        loss_sum = module(to_device(collate(micro))) * counted
                    # DDP averages gradients over processes; scaling by world makes that the global sum.
                    accelerator.backward(loss_sum * (world / max(1, step_targets)))
                window_loss += loss_sum.detach().float()
            window_targets += step_targets
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
            step_lr = scheduler.get_last_lr()[0]  # this step's rate: after scheduler.step() it is the next one's
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            state.step = step + 1
            state.tokens += sum(real_tokens(e) for e in examples)
            # Training time only: validation and checkpoint writing are not counted in tokens/s.
            state.train_seconds += time.perf_counter() - step_started
            session_seconds = state.train_seconds - start_seconds
            done = state.step == total_steps
            validate = schedule.validates_at(state.step)
            save = schedule.saves_at(state.step)
            validation = None
            threads.check(force=validate)
            new_best = False

            # Read the loss back only every log_every steps, and always before trusting the weights.
            if state.step % config.log_every == 0 or validate or save:
                summed = accelerator.reduce(window_loss, "sum").item()
                mean = summed / max(1, window_targets)
                if not math.isfinite(mean):
                    raise _nan_error(run, state.step)
                state.last_loss = mean
                window_loss.zero_()
                window_targets = 0
                log({
                    "step": state.step, "loss": mean, "lr": step_lr, "tokens": state.tokens,
                    "elapsed": round(state.train_seconds, 3),
                    "tokens_per_second": (state.tokens - start_tokens) / max(1e-9, session_seconds),
                    "threads": torch.get_num_threads(),
                })
            if validate:
                # Timed apart from the steps (train_seconds): `tunelab show` sets it beside the estimate's validation time.
                validation_started = time.perf_counter()
                validation, score, counted = validate_now()
                state.validation_seconds += time.perf_counter() - validation_started
                if validation is not None:
                    one_example = 1.0 / max(1, counted)
                    if improves(validation, score, state.best_validation_loss, state.top_validation_score, tolerance=one_example):
                        state.best_validation_loss, state.best_step, state.bad_validations = validation, state.step, 0
                        state.best_validation_score = score
                        new_best = True
                    else:
                        state.bad_validations += 1
                    if score is not None:
                        state.top_validation_score = max(score, state.top_validation_score or -math.inf)
                    record = {"step": state.step, "validation_loss": validation}
                    if score is not None:
                        record["validation_score"] = score
                    log(record)
                    stopped_early = patience is not None and state.bad_validations >= patience and not done
            best = run.checkpoints / BEST
            if new_best:
                # best/ first, then step-N: a step checkpoint that names this step as its best exists only once
                # best/ holds it, so a run killed between the two writes resumes to the same final weights.
                save_checkpoint(best, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler, state=state)
                if accelerator.is_main_process:
                    kill_point("checkpoint.best-written")
            if save or stopped_early:
                target = run.checkpoints / f"step-{state.step}"
                save_checkpoint(target, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler, state=state)
                if accelerator.is_main_process:
                    prune_checkpoints(run.checkpoints, config.keep_last)
                    kill_point("checkpoint.pruned")
                accelerator.wait_for_everyone()
            if progress is not None and accelerator.is_main_process:
                rate = (state.tokens - start_tokens) / max(1e-9, session_seconds)
                per_step = session_seconds / max(1, state.step - session_first_step)
                progress(Progress(
                    step=state.step, total_steps=total_steps, loss=state.last_loss, lr=step_lr,
                    tokens=state.tokens, tokens_per_second=rate, elapsed=state.train_seconds,
                    eta_seconds=per_step * (total_steps - state.step), validation_loss=validation,
                ))
            if stopped_early:
                break
    except RuntimeError as error:
        if is_out_of_memory(error):
            raise _out_of_memory_error(config, max_length) from None
        raise

    # 4. End on the best weights by validation loss, when there were validations.
    best = run.checkpoints / BEST
    if state.best_step is not None and state.best_step != state.step and (best / "trainable.safetensors").is_file():
        from safetensors.torch import load_file

        kept = best_state(run.checkpoints)
        if kept is None or kept.step != state.best_step:
            raise CheckpointError(
                f"{best} holds step {kept.step if kept else '?'}, but this run's best validation was at step {state.best_step}",
                f"delete {run.checkpoints} to train this run again from the start",
            )
        load_trainable_state(model, load_file(str(best / "trainable.safetensors")))
    elif state.best_step is not None and state.best_step != state.step and (best / "accelerate").is_dir():
        accelerator.load_state(str(best / "accelerate"))  # sharded (FSDP, DeepSpeed): every process loads its shard
    trained_seconds = state.train_seconds - start_seconds
    if state.tokens == start_tokens:  # a resumed run that had already finished: its own rate, not an empty session's 0
        start_tokens, trained_seconds = 0, state.train_seconds
    return LoopResult(
        steps=state.step,
        final_loss=state.last_loss,
        best_validation_loss=state.best_validation_loss,
        best_step=state.best_step,
        best_validation_score=state.best_validation_score,
        tokens=state.tokens,
        tokens_per_second=(state.tokens - start_tokens) / max(1e-9, trained_seconds),
        seconds=state.train_seconds,
        stopped_early=stopped_early,
        validation_seconds=state.validation_seconds if validation_examples else None,
        warnings=warnings,
        module=module,
    )


def _nan_error(run: RunFolder, step: int) -> TrainingError:
    checkpoints = list_step_checkpoints(run.checkpoints)
    kept = f"the last good checkpoint is {checkpoints[-1][1]}" if checkpoints else "no checkpoint was written yet"
    return TrainingError(
        f"the training loss became NaN/inf by step {step}; stopped ({kept})",
        "lower train.lr, keep train.max_grad_norm set, or use train.precision=fp32",
    )


def _truncate_metrics(run: RunFolder, step: int) -> None:
    """Drop metric lines written after the checkpoint a run resumes from (they will be written again)."""
    if not run.metrics.is_file():
        return
    kept = []
    for line in run.metrics.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    from tunelab.paths import atomic_write_text

    atomic_write_text(run.metrics, "".join(line + "\n" for line in kept))
