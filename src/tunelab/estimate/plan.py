"""How many tokens, FLOPs, seconds, bytes and dollars a run will take, before anything is spent.

The core, :func:`estimate_run`, is arithmetic over a config, the token count of every training
example and a few facts about the model (:class:`ModelFacts`); it reads no files. A measured
:class:`Calibration` (a few real optimizer steps of the actual model on this machine, see
:func:`calibrate`) turns tokens into seconds here; a dated table of GPUs (``resources/prices.yaml``)
turns FLOPs into seconds and dollars there.

This module is the arithmetic: tokens, FLOPs, memory, time and money from a config, the token
count of every training example and a few facts about the model. It imports no torch and reads no
files; the measuring (model facts, calibration, free memory) lives in ``calibrate.py``.

Formulas (per trained token; N = parameters that take part in a matmul for that token, i.e. every
weight except the input embedding table, with the LM head counted as d_model x head columns):

- full fine-tuning: ``6·N`` (forward 2N; backward 2N for activation gradients + 2N for weight gradients).
- LoRA: ``4·N + 6·N_adapter``: frozen weights still pass gradients back to the activations (2N)
  but compute no weight gradients; the adapter matrices are trained in full (6 per parameter).
- freeze (only some layers trained): ``4·N + 2·N_trainable``.
- attention scores and weighted sums, stated separately: ``6·n_layers·seq·d_model`` per token
  (forward ``2·n_layers·seq·d_model``, backward twice that), seq = the row length trained on.
- classify: only the label columns of the LM head are computed, so the head counts
  ``d_model·n_labels`` instead of ``d_model·vocab``; the tokens are those of each prompt (+1). Training
  with ``classify.prompt_lm_weight`` also scores the prompts' next tokens: ``4·d_model·vocab`` more per token
  (6 in full fine-tuning).
- preference (DPO): chosen and rejected are two sequences, and the reference model adds a
  forward pass, ``2·N`` per token.
- validation and evaluation are forward passes: ``2·N + 2·n_layers·seq·d_model`` per token. Validation runs at
  the training step's FLOP rate (inside the loop, in its dtype); evaluation and the baselines that run the model at
  the rate of a timed fp32 forward (:func:`forward_flops_per_second`), a classify baseline's longer prompt as a
  prefix run once per pass (:func:`shared_prefix_flops`); the baselines that run no model at measured constants
  per text (:func:`cheap_baseline_seconds`).
- sft evaluation and the baselines that run the model (base, few-shot) generate: a prefill of each batch's
  prompts, then one decode step per new token, each latency-bound (the weights and the KV cache are read for
  one token a row). Their time here is measured, not derived from FLOPs (:func:`generation_seconds`).

Memory (bytes, peak during training):

- weights: trained weights ``4·P_trainable`` (fp32), frozen ones in the compute dtype (``2·P_frozen``
  under bf16, ``4·P_frozen`` in fp32), and for ``qlora`` the decoder's weights at ``QLORA_BYTES_PER_WEIGHT``
  (4-bit NF4 with double-quantized block constants) while the embeddings stay in the compute dtype; bf16
  autocast adds ``2·P`` of bf16 copies of the fp32 weights it computes with (full: the body), kept for
  the backward; gradients ``4·P_trainable``, AdamW state ``8·P_trainable`` (two fp32 moments);
- activations ``batch·seq·n_layers·(8·d + 4·d_kv + 4·I [+ 6·d + I with LoRA])·bytes`` where I is
  the MLP width and bytes is 2 under bf16 autocast, 4 in fp32 (the tensors a Llama-style block
  saves for its backward: norms, q/k/v/o inputs and outputs, the four MLP intermediates);
  with gradient checkpointing ``batch·seq·n_layers·d·4`` plus one layer's full activations;
- logits (sft, text, preference) ``batch·seq·vocab·4·2`` (fp32 logits and their gradient).
"""

from __future__ import annotations

import functools
import math
import random
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab.config import BASELINES, ResolvedConfig, require_resolved, resolve_baselines
from tunelab.errors import DataError
from tunelab.estimate.prices import PriceTable, load_price_table
from tunelab.runtime import CpuState

DEFAULT_UTILIZATION = 0.35
GIB = 1024**3
# A 4-bit NF4 weight with double quantization: 4 bits, plus its block's absmax (one per 64 weights) quantized
# to 8 bits, plus one fp32 constant per 256 such blocks: 4 + 8/64 + 32/(64*256) = 4.127 bits.
QLORA_BYTES_PER_WEIGHT = (4 + 8 / 64 + 32 / (64 * 256)) / 8
ADAPTER_METHODS = ("lora", "qlora")
# The baselines that run no language model, priced per text they read (the learning, validation and test records)
# by constants measured on the project's 2-core AMD EPYC at one torch thread, the other core busy
# (bench/baseline_speed.py on the quickstart, 400 texts, 2026-12-06): all-MiniLM-L6-v2's load in a fresh process
# (4.9 s), then its encoding and the cross-validated logistic regression (3.4 s); TF-IDF with its cross-validated
# logistic regression (classical, 5.9 s; sft's retrieval is TF-IDF cosine only, priced the same: an overestimate).
# Constants, not a calibration: a GPU encodes faster and a bigger eval.embedding_model slower than they say.
EMBEDDING_LOAD_SECONDS = 4.9
EMBEDDING_SECONDS_PER_TEXT = 0.0084
TFIDF_SECONDS_PER_TEXT = 0.0148


@dataclass(frozen=True)
class ModelFacts:
    """The shape of a decoder-only model, enough to count FLOPs and bytes.

    ``body_params`` are the decoder layers and norms: everything but the input embedding table and
    an untied LM head. ``lora_params`` is the adapter size for the config's LoRA settings.
    """

    total_params: int
    body_params: int
    n_layers: int
    d_model: int
    d_kv: int
    intermediate: int
    vocab: int
    lora_params: int = 0

    def matmul_params(self, head_columns: int) -> int:
        """N of the formulas: body weights plus the LM head restricted to ``head_columns``."""
        return self.body_params + self.d_model * head_columns


@dataclass
class Calibration:
    """A few real training steps timed on this machine (the first, warm-up step excluded)."""

    device: str
    precision: str
    method: str
    batch_size: int
    seq_len: int
    threads: int
    step_seconds: list[float]
    warmup_seconds: float
    # True when read back from the calibration cache (measured earlier on this machine, same key).
    cached: bool = False
    # The machine while the steps ran: its cores and how many other processes kept busy (None: not known).
    machine: CpuState | None = None
    # What evaluation costs here, measured as evaluation runs (fp32 weights, no autograd): one forward of the
    # calibrated rows with the head on the last position only (a classify prompt, an sft prompt's prefill; every
    # task, None in a calibration stored before recipe 9), and, sft only, one decode step (a new token for each of
    # ``decode_rows`` rows over a KV cache of each ``decode_contexts`` length) of the plain model (base, few-shot)
    # and, at the first context, of the model with the run's adapters.
    forward_seconds: float | None = None
    decode_rows: int | None = None
    decode_contexts: list[int] = field(default_factory=list)
    decode_seconds: list[float] = field(default_factory=list)
    adapted_decode_seconds: float | None = None

    @property
    def seconds_per_step(self) -> float:
        # The median resists one step slowed by another process on a shared machine.
        return statistics.median(self.step_seconds)

    @property
    def tokens_per_second(self) -> float:
        return self.batch_size * self.seq_len / self.seconds_per_step

    @property
    def times_generation(self) -> bool:
        return bool(self.forward_seconds and self.decode_rows and self.decode_seconds)

    def decode_step_seconds(self, context: float, *, adapted: bool = False) -> float:
        """One decode step over a KV cache of ``context`` tokens: a line through the measured contexts (the KV cache
        is read whole at every step), never below the shortest's time; ``adapted`` adds the adapters' measured cost."""
        points = sorted(zip(self.decode_contexts, self.decode_seconds, strict=True))
        seconds = points[0][1]
        if len(points) > 1:
            (c0, s0), (c1, s1) = points[0], points[-1]
            seconds = max(s0, s0 + (s1 - s0) * (context - c0) / (c1 - c0)) if c1 > c0 else s0
        if adapted and self.adapted_decode_seconds is not None:
            seconds += max(0.0, self.adapted_decode_seconds - points[0][1])
        return seconds

    def as_dict(self) -> dict[str, Any]:
        data = {**asdict(self), "seconds_per_step": self.seconds_per_step, "tokens_per_second": self.tokens_per_second}
        data["machine"] = self.machine.as_dict() if self.machine else None
        return data


@dataclass
class TokenPlan:
    """What training will process: real tokens, tokens including padding, rows and steps."""

    examples: int
    real_tokens_per_epoch: int
    processed_tokens_per_epoch: int
    rows_per_epoch: int
    epochs: float
    optimizer_steps: int
    train_tokens: int
    seq_len: int
    packed: bool
    truncated_examples: int
    validation_tokens: int = 0
    validations: int = 0
    test_tokens: int = 0
    micro_batches_per_epoch: int = 0
    processes: int = 1  # training processes (one per device): a step takes batch_size x grad_accum x this many examples
    steps_per_epoch: int = 0
    # What decided the optimizer steps besides epochs x steps per epoch: "train.min_steps", "train.max_steps" or None.
    steps_set_by: str | None = None

    @property
    def rows_per_micro_batch(self) -> int:
        """Rows one micro-batch holds (packed examples share rows): the shape a calibration step should have."""
        if not self.micro_batches_per_epoch:
            return 1
        return max(1, round(self.rows_per_epoch / self.micro_batches_per_epoch))


@dataclass
class FlopPlan:
    matmul_params: int
    trainable_params: int
    dense_flops_per_token: float
    attention_flops_per_token: float
    train_flops: float
    validation_flops: float
    eval_flops: float  # one evaluation of one model on the test set

    @property
    def train_flops_per_token(self) -> float:
        return self.dense_flops_per_token + self.attention_flops_per_token


@dataclass
class MemoryPlan:
    weights: int
    autocast_copies: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    available: int | None = None
    device: str = "cpu"

    @property
    def total(self) -> int:
        return self.weights + self.autocast_copies + self.gradients + self.optimizer + self.activations + self.logits

    @property
    def fits(self) -> bool | None:
        return None if self.available is None else self.total <= self.available


@dataclass
class FitOption:
    """Settings (``key=value`` overrides) under which the run's memory plan fits, and its total bytes then."""

    overrides: list[str]
    total: int


@dataclass
class FitCheck:
    """Whether the run fits the memory it may take (``budget.max_memory_gib``, else what is free on its device),
    what would make it fit (least costly first), and what ``train.fit: auto`` applied."""

    needed: int
    available: int | None
    device: str
    options: list[FitOption] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    needed_before: int | None = None  # the plan before ``applied``, when something was applied

    @property
    def fits(self) -> bool:
        return self.available is None or self.needed <= self.available

    def describe(self) -> str:
        """One line a person reads: what the run needs, what there is, and what fits."""
        needed = self.needed_before if self.applied else self.needed
        line = f"the run needs {needed / GIB:.2f} GiB on {self.device}"
        if self.available is not None:
            line += f" and {self.available / GIB:.2f} GiB may be used"
        if self.applied:
            return f"{line}: applied {' '.join(self.applied)} (now {self.needed / GIB:.2f} GiB)"
        if self.fits:
            return line
        if not self.options:
            return f"{line}: nothing tunelab can change makes it fit (a smaller model, data.max_length or a bigger device)"
        shown = "; ".join(f"{' '.join(o.overrides)} ({o.total / GIB:.2f} GiB)" for o in self.options[:4])
        return f"{line}: it will not fit. What fits: {shown}"


@dataclass
class GPUEstimate:
    name: str
    seconds: float
    usd: float
    fits: bool
    memory_gib: float
    source: str


@dataclass
class CloudEstimate:
    provider: str
    model: str
    usd: float
    usd_per_million_training_tokens: float
    published: str


@dataclass
class BudgetCheck:
    over: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class RetuneEstimate:
    """The monthly cost of re-tuning at the ``monitor:`` cadence: at most one retrain per check.

    A retrain trains the same recipe on the old data plus the new, so one costs about what this
    run costs (more as new data accumulates); ``retrain_on: drift`` retrains only on drifted checks,
    so the real count is between 0 and ``max_retrains_per_month``.
    """

    every: str
    retrain_on: str
    checks_per_month: float
    max_retrains_per_month: float
    seconds_here_per_month: float | None
    usd_per_month: dict[str, float]  # GPU name -> USD at max_retrains_per_month
    cheapest_gpu: str | None
    cheapest_usd_per_month: float | None


DAYS_PER_MONTH = 30.0


def times_per_month(every_seconds: float) -> float:
    """How often something done every ``every_seconds`` happens in a month of ``DAYS_PER_MONTH`` days."""
    return DAYS_PER_MONTH * 86400 / every_seconds


def plan_retune(monitor: Any, seconds_here: float | None, gpus: list[GPUEstimate]) -> RetuneEstimate:
    """:class:`RetuneEstimate` of one run's cost at the cadence of ``monitor`` (a ``MonitorConfig``)."""
    checks = times_per_month(monitor.every_seconds)
    retrains = 0.0 if monitor.retrain_on == "never" else checks
    usd = {gpu.name: gpu.usd * retrains for gpu in gpus}
    fitting = [gpu for gpu in gpus if gpu.fits] or gpus
    cheapest = min(fitting, key=lambda gpu: gpu.usd, default=None)
    return RetuneEstimate(
        every=monitor.every, retrain_on=monitor.retrain_on, checks_per_month=checks, max_retrains_per_month=retrains,
        seconds_here_per_month=None if seconds_here is None else seconds_here * retrains, usd_per_month=usd,
        cheapest_gpu=cheapest.name if cheapest else None, cheapest_usd_per_month=cheapest.usd * retrains if cheapest else None,
    )


@dataclass
class Estimate:
    """Everything ``tunelab estimate`` shows; ``as_dict()`` is what the registry stores."""

    task: str
    model: str
    method: str
    precision: str
    tokens: TokenPlan
    flops: FlopPlan
    memory: MemoryPlan
    calibration: Calibration | None
    seconds: dict[str, float] | None  # this machine, per step: train, validation, baseline, eval
    gpus: list[GPUEstimate]
    cloud: list[CloudEstimate]
    budget: BudgetCheck
    utilization: float
    price_table_date: str
    retune: RetuneEstimate | None = None
    # This machine when the estimate was made, and the torch threads the run will use on it (CPU runs).
    machine: CpuState | None = None
    threads: int | None = None
    fit: FitCheck | None = None  # the memory check against the device (set by estimate_for_split)
    # What the time here priced that may not happen (a baseline eval.skip_hopeless may skip), for a person to read.
    notes: list[str] = field(default_factory=list)
    # Each remote baseline's requests (``remote.client.RequestEstimate`` as a dict, with its ``line``), by baseline name.
    remote_baselines: dict[str, dict[str, Any]] = field(default_factory=dict)

    def with_remote_baselines(self, config: ResolvedConfig, priced: dict[str, dict[str, Any]]) -> Estimate:
        """This estimate with the remote baselines' requests priced in: shown, and counted in ``budget.max_usd``."""
        self.remote_baselines = dict(priced)
        self.budget = check_budget(config, self.total_seconds, self.gpus, self.remote_baselines)
        return self

    @property
    def total_seconds(self) -> float | None:
        return None if self.seconds is None else sum(self.seconds.values())

    @property
    def here(self) -> str | None:
        """The machine's state as the estimate states it: ``2 cores, 1 busy, 1 thread`` (None off the CPU)."""
        if self.machine is None:
            return None
        threads = f", {self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else ""
        return self.machine.describe() + threads

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["calibration"] = self.calibration.as_dict() if self.calibration else None
        data["machine"] = self.machine.as_dict() if self.machine else None
        data["here"] = self.here
        data["memory"]["total"] = self.memory.total
        data["memory"]["fits"] = self.memory.fits
        data["flops"]["train_flops_per_token"] = self.flops.train_flops_per_token
        data["total_seconds"] = self.total_seconds
        if self.fit is not None:
            data["fit"]["fits"] = self.fit.fits
            data["fit"]["summary"] = self.fit.describe()
        return data


def _round_up(value: float, multiple: int = 8) -> int:
    return int(math.ceil(value / multiple) * multiple)


def plan_tokens(
    config: ResolvedConfig,
    example_token_counts: list[int],
    *,
    validation_token_counts: list[int] | None = None,
    test_token_counts: list[int] | None = None,
    shared_prefix: int = 0,
    processes: int = 1,
) -> TokenPlan:
    """Count what training processes: examples truncated to ``max_length``, packed or padded.

    Steps, validations and epochs come from the training loop's own schedule
    (``config.train.schedule``): a step takes ``batch_size * grad_accum * processes`` examples (``processes``: the
    training processes of a launch, one per device; each runs micro-batches of ``batch_size``). Text documents
    longer than ``max_length`` become windows every ``stride`` tokens, so overlapping windows
    process ``max_length / stride`` times the tokens. Micro-batches are simulated on a seeded
    shuffle as the collate builds them: with ``train.packing`` their examples are packed into rows
    of ``train.pack_tokens`` (default ``max_length``) tokens, padded to the longest row; without it
    each example is a row padded to the micro-batch's longest. ``shared_prefix`` (classify with
    ``train.prefix_reuse``): the tokens every prompt starts with are processed once per micro-batch,
    not once per example; real tokens still count them per example.

    Raises:
        DataError: when there are no training examples.
    """
    from tunelab.data.packing import pack_rows

    config = require_resolved(config)
    if not example_token_counts:
        raise DataError("no training examples to estimate", "check data.train")
    max_length = config.data.max_length
    batch = config.train.batch_size
    truncated = sum(1 for count in example_token_counts if count > max_length)
    if config.task == "text":
        lengths = []
        for count in example_token_counts:
            if count <= max_length:
                lengths.append(count)
            else:
                lengths.extend([max_length] * math.ceil((count - max_length) / config.data.stride + 1))
        truncated = 0  # long documents become windows: nothing is cut
    else:
        lengths = [min(count, max_length) for count in example_token_counts]
    real = sum(lengths)
    lengths = [max(1, n - shared_prefix) for n in lengths]
    packed = config.train.packing
    capacity = config.train.pack_tokens or max_length
    order = lengths[:]
    random.Random(config.train.seed).shuffle(order)
    processed = rows = micro_batches = 0
    widths = []
    for start in range(0, len(order), batch):
        micro_batches += 1
        chunk = order[start : start + batch]
        row_lengths = [sum(chunk[i] for i in row) for row in pack_rows(chunk, capacity)] if packed else chunk
        width = max(row_lengths)
        processed += width * len(row_lengths) + shared_prefix
        rows += len(row_lengths)
        widths.append(width)
    seq_len = min(capacity if packed else max_length, _round_up(statistics.mean(widths)))
    schedule = config.train.schedule(len(lengths), processes)
    steps = schedule.total_steps
    from_epochs = max(1, math.ceil(config.train.epochs * schedule.steps_per_epoch))
    steps_set_by = None if steps == from_epochs else "train.max_steps" if config.train.max_steps else "train.min_steps"
    train_tokens = processed * schedule.epochs_run
    validations = 0
    validation_tokens = sum(min(c, max_length) for c in validation_token_counts or [])
    if shared_prefix and validation_token_counts:
        validation_batches = math.ceil(len(validation_token_counts) / batch)
        validation_tokens -= shared_prefix * (len(validation_token_counts) - validation_batches)
    if validation_tokens:
        validations = schedule.validations
    test_tokens = sum(min(c, max_length) for c in test_token_counts or [])
    if shared_prefix and test_token_counts:
        # classify evaluation scores every test prompt on one KV cache of the prefix they share
        # (evaluation.predict.prefix_label_logits): the prefix runs once, not once per request.
        test_tokens -= shared_prefix * (len(test_token_counts) - 1)
    if config.task == "sft" and test_token_counts:
        test_tokens += config.eval.max_new_tokens * len(test_token_counts)  # generation, at most
    return TokenPlan(
        examples=len(example_token_counts),
        real_tokens_per_epoch=real,
        processed_tokens_per_epoch=processed,
        rows_per_epoch=rows,
        epochs=float(config.train.epochs),
        optimizer_steps=steps,
        train_tokens=int(round(train_tokens)),
        seq_len=seq_len,
        packed=packed,
        truncated_examples=truncated,
        validation_tokens=validation_tokens * validations,
        validations=validations,
        test_tokens=test_tokens,
        micro_batches_per_epoch=micro_batches,
        processes=processes,
        steps_per_epoch=schedule.steps_per_epoch,
        steps_set_by=steps_set_by,
    )


def steps_text(tokens: dict[str, Any]) -> str:
    """How a plan's optimizer steps were counted (``TokenPlan`` as a dict, also a stored estimate's), e.g.
    "5 epochs × 23 per epoch = 115, raised to 120 by train.min_steps"; the bare count for an estimate stored before
    ``steps_per_epoch`` was."""
    steps, per_epoch, epochs = tokens.get("optimizer_steps"), tokens.get("steps_per_epoch"), tokens.get("epochs")
    if not isinstance(steps, int):
        return "-"
    if not per_epoch or not isinstance(epochs, int | float):
        return f"{steps:,}"
    from_epochs = max(1, math.ceil(epochs * per_epoch))
    counted = f"{epochs:g} epochs × {per_epoch:,} per epoch"
    if tokens.get("steps_set_by") == "train.max_steps":
        return f"{steps:,}, set by train.max_steps ({counted}: {from_epochs:,})"
    if tokens.get("steps_set_by"):
        return f"{counted} = {from_epochs:,}, raised to {steps:,} by {tokens['steps_set_by']}"
    return f"{counted} = {steps:,}"


def attention_forward(facts: ModelFacts, context: float) -> float:
    """Forward attention FLOPs of one token over ``context`` tokens (scores and weighted sums): ``2·n_layers·seq·d_model``."""
    return 2 * facts.n_layers * context * facts.d_model


def attention_forward_per_token(facts: ModelFacts, tokens: TokenPlan) -> int:
    return int(attention_forward(facts, tokens.seq_len))


def shared_prefix_flops(facts: ModelFacts, prefix: int, tokens_on_top: float) -> float:
    """FLOPs a shared prompt prefix of ``prefix`` tokens adds to a forward pass: its tokens run once (one KV cache every
    prompt reads, ``inference.prefix_label_logits``), and each of the ``tokens_on_top`` tokens after it attends over them."""
    return prefix * (2 * facts.body_params + attention_forward(facts, prefix)) + tokens_on_top * attention_forward(facts, prefix)


def forward_flops_per_second(calibration: Calibration, facts: ModelFacts) -> float | None:
    """The FLOP rate of evaluation's forward here: the calibration's timed forward (rows of ``seq_len`` tokens, the
    head on each row's last position, fp32 weights, no autograd) over its FLOPs; None when it was not timed.

    Evaluation and the baselines that run the model are priced at this rate, not at the training step's (on a bf16
    CPU the fp32 forward ran 130-170 tokens/s where training's forward and backward ran 237); validation runs
    inside the training loop, in its dtype, and stays at the training step's.
    """
    if not calibration.forward_seconds:
        return None
    seq_len = calibration.seq_len
    per_token = 2 * facts.body_params + attention_forward(facts, seq_len)
    flops = calibration.batch_size * (seq_len * per_token + 2 * facts.d_model * facts.vocab)
    return flops / calibration.forward_seconds


def plan_flops(config: ResolvedConfig, facts: ModelFacts, tokens: TokenPlan, n_labels: int | None = None) -> FlopPlan:
    """Training, validation and evaluation FLOPs (see the module docstring for the formulas)."""
    head_columns = n_labels if config.task == "classify" and n_labels else facts.vocab
    matmul = facts.matmul_params(head_columns)
    method = config.train.method
    if method == "full":
        trainable = facts.total_params
        dense = 6 * matmul
    elif method in ADAPTER_METHODS:
        trainable = facts.lora_params
        dense = 4 * matmul + 6 * facts.lora_params
    else:
        per_layer = facts.body_params / facts.n_layers
        trainable = int(per_layer * len(config.train.trainable_layers))
        dense = 4 * matmul + 2 * trainable
    if config.task == "preference":
        dense += 2 * matmul  # the reference model's forward pass
    if config.task == "classify" and config.classify.prompt_lm_weight > 0:
        # Training also scores the prompts' own next tokens over the whole vocabulary (``classify.prompt_lm_weight``):
        # the head's forward and its activation gradients (4 d V; its weight is trained only in full fine-tuning).
        dense += (6 if method == "full" else 4) * facts.d_model * (facts.vocab - head_columns)
    attention_forward_flops = attention_forward_per_token(facts, tokens)
    attention = 3 * attention_forward_flops
    forward = 2 * matmul + attention_forward_flops
    return FlopPlan(
        matmul_params=matmul,
        trainable_params=trainable,
        dense_flops_per_token=float(dense),
        attention_flops_per_token=float(attention),
        train_flops=float((dense + attention) * tokens.train_tokens),
        validation_flops=float(forward * tokens.validation_tokens),
        eval_flops=float(forward * tokens.test_tokens),
    )


def plan_memory(
    config: ResolvedConfig, facts: ModelFacts, tokens: TokenPlan, precision: str, trainable: int, device: str = "cpu"
) -> MemoryPlan:
    """Peak training memory in bytes (formulas in the module docstring) on ``device``; ``available`` left unset.

    Activations are those of one pass: ``train.max_pass_tokens`` cuts a micro-batch into passes of at
    most that many tokens (an example longer than the budget is a pass of its own).
    """
    batch, seq, d = config.train.batch_size, tokens.seq_len, facts.d_model
    budget = config.train.pass_token_budget(device.split(":")[0])
    if budget is not None and batch * seq > max(budget, seq):
        batch = max(budget, seq) / seq
    act_bytes = 2 if precision == "bf16" else 4
    method = config.train.method
    if config.train.gradient_checkpointing:
        per_token_layer = 4 * d
        one_layer = batch * seq * (8 * d + 4 * facts.d_kv + 4 * facts.intermediate) * act_bytes
    else:
        elements = 8 * d + 4 * facts.d_kv + 4 * facts.intermediate
        if method in ADAPTER_METHODS:
            elements += 6 * d + facts.intermediate
        per_token_layer = elements * act_bytes
        one_layer = 0
    activations = batch * seq * facts.n_layers * per_token_layer + one_layer
    logits = 0 if config.task == "classify" else batch * seq * facts.vocab * 4 * 2
    frozen_bytes = 2 if precision == "bf16" else 4  # frozen weights are held in the compute dtype
    if method == "full":
        weights, fp32_matmul_weights = 4 * facts.total_params, facts.body_params
    elif method == "qlora":
        embeddings = facts.total_params - facts.body_params
        weights = QLORA_BYTES_PER_WEIGHT * facts.body_params + frozen_bytes * embeddings + 4 * trainable
        fp32_matmul_weights = trainable
    elif method == "lora":
        weights, fp32_matmul_weights = frozen_bytes * facts.total_params + 4 * trainable, trainable
    else:  # freeze: the chosen layers are trained (fp32) inside the model's own weights
        weights, fp32_matmul_weights = frozen_bytes * (facts.total_params - trainable) + 4 * trainable, trainable
    return MemoryPlan(
        weights=int(weights),
        autocast_copies=2 * fp32_matmul_weights if precision == "bf16" else 0,
        gradients=4 * trainable,
        optimizer=8 * trainable,
        activations=int(activations),
        logits=int(logits),
    )


def _with_overrides(config: ResolvedConfig, overrides: list[str]) -> ResolvedConfig:
    from tunelab.config import apply_overrides, parse_config

    return parse_config(apply_overrides(config.model_dump(mode="json"), overrides), source="train.fit")


def fit_candidates(config: ResolvedConfig, seq_len: int, device: str) -> list[list[str]]:
    """Changes that lower a run's peak memory without changing what it learns, least costly first.

    Smaller passes (``train.max_pass_tokens``: the same step in more passes, the same weights) cost the
    least; gradient checkpointing recomputes each layer's forward in the backward (about a third more
    compute); a 4-bit base (``train.method=qlora``, offered for LoRA runs only: the same adapters over
    NF4 weights) is slower per step and changes the frozen weights slightly. ``train.fit: auto`` never
    changes what a run trains (full or freeze never become adapters).
    """
    train = config.train
    budget = train.pass_token_budget(device.split(":")[0])
    rows_per_pass = train.batch_size if budget is None else max(1, min(train.batch_size, budget // max(1, seq_len)))
    passes = []
    rows = rows_per_pass // 2
    while rows >= 1:
        passes.append([f"train.max_pass_tokens={rows * seq_len}"])
        rows //= 2
    checkpointing = [] if train.gradient_checkpointing else [["train.gradient_checkpointing=true"]]
    candidates = passes + checkpointing + [c + p for c in checkpointing for p in passes]
    if train.method == "lora":
        quantized = [["train.method=qlora"]] + [["train.method=qlora", *c] for c in candidates]
        candidates += quantized
    return candidates


def plan_fit(
    config: ResolvedConfig, facts: ModelFacts, tokens: TokenPlan, precision: str, device: str, available: int | None,
    n_labels: int | None = None,
) -> FitCheck:
    """:class:`FitCheck` of ``config``: its memory plan against ``available`` bytes, and when it does not fit,
    every candidate of :func:`fit_candidates` that does (in their order), with its total."""
    def total(candidate: ResolvedConfig) -> int:
        trainable = plan_flops(candidate, facts, tokens, n_labels).trainable_params
        return plan_memory(candidate, facts, tokens, precision, trainable, device).total

    check = FitCheck(needed=total(config), available=available, device=device)
    if check.fits:
        return check
    for overrides in fit_candidates(config, tokens.seq_len, device):
        needed = total(_with_overrides(config, overrides))
        if needed <= available:
            check.options.append(FitOption(overrides, needed))
    return check


def apply_fit(config: ResolvedConfig, check: FitCheck) -> ResolvedConfig:
    """``config`` with the first option of ``check`` applied (what ``train.fit: auto`` does); ``check`` records it."""
    option = check.options[0]
    check.applied, check.needed_before, check.needed = list(option.overrides), check.needed, option.total
    return _with_overrides(config, option.overrides)


def check_budget(
    config: ResolvedConfig, seconds_here: float | None, gpus: list[GPUEstimate], remote: dict[str, dict[str, Any]] | None = None,
) -> BudgetCheck:
    """Compare the estimate with ``budget.max_hours`` / ``budget.max_usd``.

    Hours are checked on ``budget.gpu`` when set, else on this machine. Dollars: the training on ``budget.gpu`` (this
    machine has no price: without it training is not counted, with a note) plus the expected price of the remote
    baselines' requests (``remote``: name -> ``RequestEstimate`` dict; cached requests cost nothing). A remote model
    the price table lacks has an unknown price: it is never counted as 0, never refused, and said in a note.
    """
    remote = remote or {}
    known = {name: float(r["usd_expected"]) for name, r in remote.items() if r.get("usd_expected") is not None}
    requests_usd = sum(known.values())
    budget = config.budget
    check = BudgetCheck(over=False)
    target = next((gpu for gpu in gpus if budget.gpu and gpu.name.lower() == budget.gpu.lower()), None)
    if budget.max_hours is not None:
        seconds = target.seconds if target else seconds_here
        where = target.name if target else "this machine"
        if seconds is None:
            check.notes.append("budget.max_hours not checked: no calibration of this machine (set budget.gpu or calibrate)")
        elif seconds / 3600 > budget.max_hours:
            check.over = True
            check.reasons.append(f"estimated {duration(seconds)} on {where} exceeds budget.max_hours {budget.max_hours:g} ({duration(budget.max_hours * 3600)})")
    if budget.max_usd is not None:
        asked = f"{money(requests_usd)} of requests to the remote baselines ({', '.join(known)})" if known else ""
        for name, unpriced in remote.items():
            if name not in known:
                check.notes.append(f"{name}: price unknown (no price for {unpriced.get('model')} in the price table): "
                                   "budget.max_usd cannot count its requests")
        if target is None:
            part = " for training (only the remote baselines' requests)" if remote else ""
            check.notes.append(f"budget.max_usd not checked{part}: set budget.gpu to the GPU the run is priced on")
            if known and requests_usd > budget.max_usd:
                check.over = True
                check.reasons.append(f"expected {asked} exceeds budget.max_usd {budget.max_usd:g}")
        elif target.usd + requests_usd > budget.max_usd:
            check.over = True
            spent = f"{money(target.usd)} on {target.name}" + (f" + {asked}" if known else "")
            check.reasons.append(f"estimated {spent} exceeds budget.max_usd {budget.max_usd:g}")
    return check


def estimate_run(
    config: ResolvedConfig,
    example_token_counts: list[int],
    facts: ModelFacts,
    *,
    validation_token_counts: list[int] | None = None,
    test_token_counts: list[int] | None = None,
    n_labels: int | None = None,
    shared_prefix: int = 0,
    test_prompt_token_counts: list[int] | None = None,
    few_shot_prompt_token_counts: list[int] | None = None,
    answer_tokens: int = 0,
    skipped_baselines: list[str] | tuple[str, ...] = (),
    baseline_prefixes: dict[str, int] | None = None,
    calibration: Calibration | None = None,
    prices: PriceTable | None = None,
    device: str = "cpu",
    precision: str | None = None,
    available_bytes: int | None = None,
    machine: CpuState | None = None,
    threads: int | None = None,
    processes: int = 1,
) -> Estimate:
    """Estimate tokens, FLOPs, time (here and on each GPU of the table), memory and money.

    Args:
        config: the run config (defaults are resolved here).
        example_token_counts: tokens of each training example as trained (template included;
            classify: the prompt + 1). The data layer supplies these; nothing here reads files.
        facts: the model's shape (:func:`model_facts`).
        validation_token_counts / test_token_counts: per example, for validation and eval time.
        n_labels: classify: how many label columns the LM head computes.
        shared_prefix: classify: prompt tokens run once per micro-batch (see :func:`plan_tokens`).
        test_prompt_token_counts / few_shot_prompt_token_counts / answer_tokens: sft: the prompts evaluation and the
            few-shot baseline send, and the longest trained answer; with a calibration that timed generation they
            price the baselines and evaluation (:func:`generation_seconds`). text: the openings of the continuation
            samples (``eval.text_samples``), whose generation joins the evaluation's and the base model's time.
        skipped_baselines: baselines the pipeline will skip before they run (a few-shot prompt that cannot fit): not priced.
        baseline_prefixes: classify: the tokens the base and few_shot prompts add to the trained prompt (instruction,
            label list, solved examples), run once per scoring pass as a shared prefix.
        calibration: measured steps on this machine; without it there is no time for this machine.
        prices: the GPU/cloud table (default: the bundled one).
        device / precision: where memory is checked and which precision training uses there.
        available_bytes: free memory on ``device`` (None: unknown; ``calibrate.available_memory`` measures it).
        machine / threads: this machine's state now and the threads the run will use (``runtime.choose_threads``),
            stated with the time here.
        processes: training processes (``--launch``, one per device): the global batch is ``processes`` times
            ``batch_size``, so the steps and tokens are the launched run's. Each GPU trains and validates on its share
            (the time on GPUs is divided among them, the dollars are not); CPU processes share this machine's cores.

    Raises:
        DataError: when there are no training examples.
        ConfigError: when ``budget.gpu`` names a GPU the table lacks.
    """
    from tunelab.runtime import resolve_precision

    config = require_resolved(config)
    prices = prices or load_price_table()
    if config.budget.gpu:
        prices.gpu(config.budget.gpu)  # an unknown name is a config error, before any work
    precision = precision or (calibration.precision if calibration else resolve_precision(config.train.precision, device))
    tokens = plan_tokens(
        config, example_token_counts, validation_token_counts=validation_token_counts, test_token_counts=test_token_counts,
        shared_prefix=shared_prefix, processes=processes,
    )  # fmt: skip
    flops = plan_flops(config, facts, tokens, n_labels)
    memory = plan_memory(config, facts, tokens, precision, flops.trainable_params, device)
    memory.device = device
    memory.available = available_bytes

    # Baselines that run the model (base, few_shot) cost about one test evaluation each (classify: the few-shot
    # prefix is one KV cache for the whole test set); classical / retrieval / embedding cost their measured
    # constants per text. A baseline the pipeline skips before it runs (a few-shot prompt that cannot fit) is not
    # priced. (classify's eval.skip_hopeless is decided on validation scores, unknown here: such a baseline stays
    # priced, and a note says what skipping it would save.)
    listed = [name for name in resolve_baselines(config.task, config.eval) if name in BASELINES and name not in skipped_baselines]
    model_runs = [name for name in listed if BASELINES[name].needs_base_model]
    cheap_runs = [name for name in listed if not BASELINES[name].needs_base_model]
    model_baselines = len(model_runs)
    notes: list[str] = []
    # A preference run's evaluation scores each pair with the policy and with its reference (evaluation/preference.py).
    tuned_evaluations = 2 if config.task == "preference" else 1
    seconds = None
    if calibration is not None:
        # Tokens at the calibrated shape give the time of training; the FLOP rate that implies
        # prices the forward-only passes (validation, evaluation) on the same machine.
        calibrated_tokens = TokenPlan(**{**asdict(tokens), "seq_len": calibration.seq_len})
        flops_per_token_here = plan_flops(config, facts, calibrated_tokens, n_labels).train_flops_per_token
        if config.task == "preference":
            # The timed step is the policy's alone (the reference's log-probabilities are computed before training):
            # counting the reference's forward in it made the rate 1.5x too fast.
            flops_per_token_here -= 2 * flops.matmul_params
        flops_per_second = calibration.tokens_per_second * flops_per_token_here
        # One calibrated device: several GPUs train and validate their shares side by side; CPU processes share its cores.
        devices = processes if device.startswith("cuda") else 1
        seconds = {
            "train": tokens.train_tokens / calibration.tokens_per_second / devices,
            "validation": flops.validation_flops / flops_per_second / devices,
        }
        if config.task == "preference":
            # The reference model's log-probabilities: one forward pass over the training and validation pairs, before training.
            reference_tokens = tokens.processed_tokens_per_epoch + (tokens.validation_tokens / tokens.validations if tokens.validations else 0)
            seconds["reference"] = (2 * flops.matmul_params + attention_forward_per_token(facts, tokens)) * reference_tokens / flops_per_second
        if config.task == "sft" and calibration.times_generation and test_prompt_token_counts:
            # Generation is a prefill and then one latency-bound decode step per new token: priced by the measured
            # step, not by the training FLOP rate (which put qa-assistant's base + few-shot baselines 17x under).
            generate = functools.partial(generation_seconds, calibration, facts, batch_size=config.eval.batch_size)
            # The base model was not trained to stop where the data's answers do: a batch decodes until its longest
            # answer stops, which at eval.batch_size rows is about always max_new_tokens.
            prompts = {"base": test_prompt_token_counts, "few_shot": few_shot_prompt_token_counts or test_prompt_token_counts}
            baseline = sum(generate(prompts[name], new_tokens=config.eval.max_new_tokens) for name in model_runs if name in prompts)
            if baseline:
                seconds["baseline"] = baseline
            # The tuned model stops where its training answers did: a batch at the longest one (at most max_new_tokens).
            answer = min(config.eval.max_new_tokens, answer_tokens or config.eval.max_new_tokens)
            seconds["eval"] = generate(test_prompt_token_counts, new_tokens=answer, adapted=True)
        elif tokens.test_tokens:
            # Evaluation loads the models in fp32 and runs them forward only: priced at the measured forward's rate
            # (a calibration stored before it was timed: the training step's).
            evaluation_rate = forward_flops_per_second(calibration, facts) or flops_per_second
            seconds["eval"] = tuned_evaluations * flops.eval_flops / evaluation_rate
            # classify's eval.skip_hopeless scores such a baseline on the validation rows first; only one that may win
            # is then scored on the test rows. Each pass runs the baseline's longer prompt (instruction, label list,
            # solved examples) once as a shared prefix.
            hopeless = hopeless_check(config, model_runs, cheap_runs, tokens)
            one_validation = tokens.validation_tokens / tokens.validations if tokens.validations else 0
            test_passes: dict[str, float] = {}
            baseline = 0.0
            for name in model_runs:
                prefix = (baseline_prefixes or {}).get(name, 0)
                test_passes[name] = (flops.eval_flops + shared_prefix_flops(facts, prefix, tokens.test_tokens)) / evaluation_rate
                baseline += test_passes[name]
                if name in hopeless:
                    validation_flops = flops.validation_flops / tokens.validations + shared_prefix_flops(facts, prefix, one_validation)
                    baseline += validation_flops / evaluation_rate
            if model_runs:
                seconds["baseline"] = baseline
            if hopeless:
                opponents = " or ".join(name for name in cheap_runs if BASELINES[name].learns_from_training)
                saved = ", ".join(f"{duration(test_passes[name])} ({name})" for name in hopeless)
                notes.append(
                    f"{', '.join(hopeless)} may be skipped by eval.skip_hopeless when its validation score shows it cannot "
                    f"beat {opponents}: skipping saves about {saved} of the baseline time"
                )
        if config.task == "text" and calibration.times_generation and test_prompt_token_counts:
            # The continuation samples (eval.text_samples) each evaluated model writes beside its perplexity: the same
            # openings, each continued to eval.max_new_tokens (a document's continuation seldom ends before it).
            generate = functools.partial(generation_seconds, calibration, facts, batch_size=config.eval.batch_size)
            new_tokens = config.eval.max_new_tokens
            seconds["eval"] = seconds.get("eval", 0.0) + generate(test_prompt_token_counts, new_tokens=new_tokens, adapted=True)
            if "base" in model_runs:
                seconds["baseline"] = seconds.get("baseline", 0.0) + generate(test_prompt_token_counts, new_tokens=new_tokens)
        texts = tokens.examples + len(validation_token_counts or []) + len(test_prompt_token_counts or test_token_counts or [])
        cheap = sum(cheap_baseline_seconds(name, texts) for name in cheap_runs)
        if cheap:
            seconds["baseline"] = seconds.get("baseline", 0.0) + cheap

    utilization = config.budget.utilization or DEFAULT_UTILIZATION
    gpu_memory = plan_memory(config, facts, tokens, "bf16", flops.trainable_params, "cuda").total
    evaluations = tuned_evaluations + model_baselines
    # On ``processes`` GPUs of a kind: training and validation run in parallel (evaluation on one), each GPU billed.
    work = (flops.train_flops + flops.validation_flops) / processes + evaluations * flops.eval_flops
    gpus = []
    for gpu in prices.gpus:
        gpu_seconds = work / (gpu.bf16_tflops * 1e12 * utilization)
        gpus.append(
            GPUEstimate(
                name=gpu.name,
                seconds=gpu_seconds,
                usd=gpu_seconds / 3600 * gpu.usd_per_hour * processes,
                fits=gpu_memory <= gpu.memory_gib * GIB,
                memory_gib=gpu.memory_gib,
                source=gpu.source,
            )
        )
    billed_tokens = tokens.real_tokens_per_epoch * tokens.epochs
    cloud = [
        CloudEstimate(
            provider=price.provider,
            model=price.model,
            usd=billed_tokens / 1e6 * price.usd_per_million_training_tokens,
            usd_per_million_training_tokens=price.usd_per_million_training_tokens,
            published=price.published,
        )
        for price in prices.cloud_fine_tuning
    ]
    total_here = sum(seconds.values()) if seconds else None
    return Estimate(
        task=config.task,
        model=config.model.name,
        method=config.train.method,
        precision=precision,
        tokens=tokens,
        flops=flops,
        memory=memory,
        calibration=calibration,
        seconds=seconds,
        gpus=gpus,
        cloud=cloud,
        budget=check_budget(config, total_here, gpus),
        utilization=utilization,
        price_table_date=prices.table_date,
        retune=plan_retune(config.monitor, total_here, gpus),
        machine=machine,
        threads=threads,
        notes=notes,
    )


def hopeless_check(config: ResolvedConfig, model_runs: list[str], cheap_runs: list[str], tokens: TokenPlan) -> list[str]:
    """The baselines of ``model_runs`` that classify's ``eval.skip_hopeless`` will score on the validation rows first
    (``evaluation.baselines.model_baseline_cannot_win``) and may then skip: it needs validation rows and a cheap
    opponent whose cross-validated accuracy it compares with (the classify baselines that learn without the model)."""
    opponents = [name for name in cheap_runs if BASELINES[name].learns_from_training]
    if config.task != "classify" or not config.eval.skip_hopeless or not tokens.validations or not opponents:
        return []
    return list(model_runs)


def cheap_baseline_seconds(name: str, texts: int) -> float:
    """Seconds of a baseline that runs no language model over ``texts`` records, by the measured constants above."""
    if name == "embedding":
        return EMBEDDING_LOAD_SECONDS + texts * EMBEDDING_SECONDS_PER_TEXT
    return texts * TFIDF_SECONDS_PER_TEXT


def generation_seconds(
    calibration: Calibration, facts: ModelFacts, prompt_lengths: list[int], *, batch_size: int, new_tokens: int,
    adapted: bool = False,
) -> float:
    """Seconds to answer ``prompt_lengths`` (tokens of each prompt) as ``models.generate.generate_batch`` does.

    Prompts are sorted by length into batches of ``batch_size`` and left-padded to the batch's longest. Each batch
    is a prefill of rows x longest tokens, at the calibration's measured forward speed (scaled for attention at that
    length), then ``new_tokens`` decode steps, each at the measured step time over the batch's mean KV cache (the
    prompt and half the answer; ``Calibration.decode_step_seconds``, with the adapters when ``adapted``). A batch of
    fewer rows than the calibration's is priced at the calibration's rows' time: the decode step is latency-bound (its weights are
    read once per step whatever the rows), so this overestimates a short last batch a little.
    """
    forward_per_token = 2 * facts.body_params  # the head runs on each prompt's last position only
    measured_seq = calibration.seq_len
    seconds_per_token = calibration.forward_seconds / (calibration.batch_size * measured_seq)
    order = sorted(prompt_lengths)
    total = 0.0
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        longest = rows[-1]
        scale = (forward_per_token + attention_forward(facts, longest)) / (forward_per_token + attention_forward(facts, measured_seq))
        total += len(rows) * longest * seconds_per_token * scale
        total += new_tokens * calibration.decode_step_seconds(longest + new_tokens / 2, adapted=adapted)
    return total


def estimate_error(estimate: Estimate | dict | float, actual_seconds: float, step: str = "train") -> dict[str, Any]:
    """How far the actual duration of ``step`` was from its estimate.

    ``error`` is ``(actual - estimated) / estimated``: +0.2 means the step took 20% longer than
    estimated. ``within_25_percent`` is the project's goal for training time on the calibrated machine.

    Args:
        estimate: an :class:`Estimate`, its ``as_dict()`` (as stored in the registry), or seconds.
        actual_seconds: the measured duration.
        step: which step of ``estimate.seconds`` to compare.

    Raises:
        ValueError: when the estimate has no time for ``step`` (no calibration).
    """
    if isinstance(estimate, int | float):
        estimated = float(estimate)
    else:
        seconds = estimate.seconds if isinstance(estimate, Estimate) else estimate.get("seconds")
        if not seconds or step not in seconds:
            raise ValueError(f"the estimate has no time for step '{step}' (was it calibrated?)")
        estimated = float(seconds[step])
    error = (actual_seconds - estimated) / estimated
    return {
        "step": step,
        "estimated_s": estimated,
        "actual_s": float(actual_seconds),
        "error": error,
        "within_25_percent": abs(error) <= 0.25,
    }


def duration(seconds: float | None) -> str:
    """Seconds as a person reads them: 45.0 s, 4.5 min, 2.1 h ("-" when unknown).

    Here because the estimate's seconds are what the CLI and the web interface show most; both render
    every duration with it.
    """
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def money(usd: float | None) -> str:
    """Dollars as a person compares them: cents above a cent, else two significant digits (a tiny run costs $0.000031, not "< $0.0001")."""
    if usd is None:
        return "-"
    if usd >= 0.01:
        return f"${usd:,.2f}"
    if usd <= 0:
        return "$0"
    decimals = -math.floor(math.log10(usd)) + 1  # two significant digits, written out
    return f"${usd:.{decimals}f}"
