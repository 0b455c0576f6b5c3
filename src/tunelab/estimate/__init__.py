"""How many tokens, FLOPs, seconds, bytes and dollars a run will take, before anything is spent.

- ``prices.py``: the dated GPU and hosted fine-tuning price table.
- ``plan.py``: the arithmetic (tokens, FLOPs, memory, time, money, budget), no torch.
- ``calibrate.py``: what is measured (the model's shape, free memory, a few real training steps).
- here: :func:`estimate_for_split`, the one estimate of a run's split that ``tunelab run`` and
  ``tunelab estimate`` both make.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunelab.config import ResolvedConfig, require_resolved
from tunelab.errors import DataError
from tunelab.estimate.calibrate import Calibration, available_memory, calibrate, model_facts
from tunelab.estimate.plan import (
    DEFAULT_UTILIZATION,
    GIB,
    BudgetCheck,
    CloudEstimate,
    Estimate,
    FitCheck,
    FitOption,
    FlopPlan,
    GPUEstimate,
    MemoryPlan,
    ModelFacts,
    TokenPlan,
    apply_fit,
    check_budget,
    estimate_error,
    estimate_run,
    plan_fit,
    plan_flops,
    plan_memory,
    plan_tokens,
)
from tunelab.estimate.prices import CloudPrice, GPUSpec, PriceTable, load_price_table

if TYPE_CHECKING:
    from tunelab.data.labels import LabelMap
    from tunelab.data.split import Split
    from tunelab.models.loader import LoadedModel
    from tunelab.runtime import CpuState

__all__ = [
    "DEFAULT_UTILIZATION", "BudgetCheck", "Calibration", "CloudEstimate", "CloudPrice", "Estimate", "EstimateInputs", "FitCheck",
    "FitOption", "FlopPlan", "GPUEstimate", "GPUSpec", "MemoryPlan", "ModelFacts", "PriceTable", "TokenCounts", "TokenPlan",
    "available_memory", "calibrate", "check_budget", "count_tokens", "count_tokens_from_files", "estimate_error",
    "estimate_for_split", "estimate_inputs", "estimate_from_config", "estimate_run", "example_token_counts", "load_price_table",
    "memory_limit", "model_facts", "plan_fit", "plan_flops",
    "plan_memory", "plan_tokens",
]


@dataclass
class TokenCounts:
    train: list[int]
    validation: list[int]
    test: list[int]
    n_labels: int | None = None
    # classify: prompt tokens all examples share, run once per micro-batch (``train.prefix_reuse``).
    shared_prefix: int = 0
    # sft: the share of training tokens that carry loss (the answers), where the output head runs.
    scored_share: float = 1.0
    # sft: what evaluation generates from. Each test prompt's tokens as evaluation sends it (template and system
    # prompt, at most max_length); each few-shot prompt's (None: the few_shot baseline is not listed; []: skipped);
    # the longest trained answer (EOS included): where a tuned model stops. text: the openings of the continuation
    # samples (eval.text_samples) as evaluation sends them.
    test_prompts: list[int] = field(default_factory=list)
    few_shot_prompts: list[int] | None = None
    answer_tokens: int = 0
    # Baselines the pipeline will skip before they run: a few-shot prompt that cannot hold one example (sft) or
    # one per label (classify), as the few_shot baseline decides it.
    skipped_baselines: list[str] = field(default_factory=list)
    # classify: the tokens each baseline that runs the model adds to the trained prompt (the zero-shot instruction
    # and label list; few-shot: its solved examples too), run once per scoring pass as a prefix every prompt shares.
    baseline_prefixes: dict[str, int] = field(default_factory=dict)


def example_token_counts(
    config: ResolvedConfig, records: list, tokenizer: Any, label_map: Any = None, *, stride: int | None = None
) -> list[int]:
    """Tokens of each example exactly as it will be trained (template, windows, truncation included).

    classify examples are the prompt; the answer is one more token. text: ``stride`` between windows (default
    ``data.stride``, as training reads them).
    """
    from tunelab.data.tokenize import tokenize_records

    if not records:
        return []
    outside = config.data.out_of_scope_label
    if config.task == "classify" and outside is not None and label_map is not None and label_map.labels:
        import dataclasses

        # An out-of-scope query is scored like any other (its prompt does not depend on the label), never trained.
        records = [dataclasses.replace(r, label=label_map.labels[0]) if r.label == outside else r for r in records]
    examples, _ = tokenize_records(
        records,
        config.task,
        tokenizer,
        max_length=config.data.max_length,
        stride=stride or config.data.stride,
        label_map=label_map,
        system_prompt=config.data.system_prompt,
    )
    if config.task == "preference":
        # Two sequences per pair (chosen, rejected), packed into the same rows.
        return [len(example.chosen_ids) + len(example.rejected_ids) for example in examples]
    extra = 1 if config.task == "classify" else 0
    return [len(example.input_ids) + extra for example in examples]


def count_tokens(
    config: ResolvedConfig, split: Split, tokenizer: Any, label_map: LabelMap | None = None, *, context: int | None = None
) -> TokenCounts:
    """Tokens per example of ``split`` as the run trains and evaluates it (the test set as sampled by
    ``data.max_test_examples``, as evaluation does). ``context``: the model's (``models.generate.context_length``),
    which bounds an sft few-shot prompt (None: 2048)."""
    from tunelab.data.tokenize import perplexity_stride

    if config.task == "classify" and label_map is None:
        from tunelab.data.labels import LabelMap

        label_map = LabelMap.for_records(split.train, tokenizer, config.data.out_of_scope_label)
    test = split.sample_test(config.data.max_test_examples, config.data.seed) if config.data.max_test_examples else split.test
    generation = _generation_counts(config, split, test, tokenizer, context or 2048)
    prefixes, few_shot_cannot_fit = _classify_baseline_prefixes(config, split, tokenizer, label_map, context or 2048)
    cannot_fit = generation.get("few_shot_prompts") == [] or few_shot_cannot_fit
    return TokenCounts(
        train=example_token_counts(config, split.train, tokenizer, label_map),
        validation=example_token_counts(config, split.validation, tokenizer, label_map),
        # text: perplexity reads a held-out document in windows that overlap by half, not at the training stride.
        test=example_token_counts(config, test, tokenizer, label_map,
                                  stride=perplexity_stride(config.data) if config.task == "text" else None),
        n_labels=len(label_map.labels) if label_map else None,
        shared_prefix=_shared_prefix(config, split, tokenizer, label_map),
        scored_share=_scored_share(config, split, tokenizer),
        **generation,
        skipped_baselines=["few_shot"] if cannot_fit else [],
        baseline_prefixes=prefixes,
    )


def _classify_baseline_prefixes(
    config: ResolvedConfig, split: Split, tokenizer: Any, label_map: Any, context: int
) -> tuple[dict[str, int], bool]:
    """classify: the tokens the base and few_shot baselines' prompts add to the trained prompt, as
    ``evaluation.baselines`` builds them (the zero-shot instruction and label list; the same few-shot budget, examples
    and records), and whether the few-shot prompt cannot show every label once (the baseline is then skipped)."""
    from tunelab.config import resolve_baselines
    from tunelab.data.split import learning_records
    from tunelab.data.templates import classify_messages, few_shot_messages, render_prompt_ids
    from tunelab.inference import few_shot_budget, few_shot_classify_examples, zero_shot_extra_tokens

    names = resolve_baselines(config.task, config.eval)
    if config.task != "classify" or label_map is None or not {"base", "few_shot"} & set(names):
        return {}, False
    system = config.data.system_prompt
    extra = zero_shot_extra_tokens(tokenizer, label_map, system)
    prefixes = {"base": extra} if "base" in names else {}
    cannot_fit = False
    if "few_shot" in names:
        budget = few_shot_budget(context, config.eval.few_shot_tokens, config.data.max_length + extra)
        examples, k = few_shot_classify_examples(learning_records(split), label_map, tokenizer, budget, seed=config.data.seed,
                                                 system_prompt=system)  # fmt: skip
        trained = len(render_prompt_ids(tokenizer, classify_messages("", system)))
        prefixes["few_shot"] = max(0, len(render_prompt_ids(tokenizer, few_shot_messages("", label_map, examples, system))) - trained)
        cannot_fit = k == 0
    return prefixes, cannot_fit


def _generation_counts(config: ResolvedConfig, split: Split, test: list, tokenizer: Any, context: int) -> dict[str, Any]:
    """sft: the prompts evaluation and the few-shot baseline send (``inference.chat_prompt``, the few-shot baseline's own
    ``inference.few_shot_sft_*``), and the longest trained answer; text: the openings of the continuation samples
    (``inference.text_openings``, ``inference.completion_prompt``); nothing for the other tasks."""
    from tunelab.config import resolve_baselines
    from tunelab.data.split import learning_records
    from tunelab.data.templates import with_system_prompt
    from tunelab.data.tokenize import tokenize_records
    from tunelab.inference import (
        chat_prompt,
        completion_prompt,
        few_shot_budget,
        few_shot_sft_chats,
        few_shot_sft_examples,
        text_openings,
    )

    data, settings = config.data, config.eval
    if config.task == "text" and test and settings.text_samples:
        openings = text_openings(test, tokenizer, settings.text_samples, data.seed, settings.max_new_tokens)
        return {"test_prompts": [len(completion_prompt(tokenizer, o.opening, max_length=data.max_length).ids) for o in openings]}
    if config.task != "sft" or not test:
        return {}
    # prompt_room caps at max_length unless max_length + max_new_tokens exceeds the context (training refuses most such runs).
    prompts = [len(chat_prompt(tokenizer, with_system_prompt(r.prompt_messages, data.system_prompt), max_length=data.max_length).ids)
               for r in test]  # fmt: skip
    few_shot = None
    if "few_shot" in resolve_baselines(config.task, settings):
        # As evaluation.baselines.few_shot_sft: the same budget and examples, from the records a baseline learns from.
        budget = few_shot_budget(context, settings.few_shot_tokens, data.max_length + settings.max_new_tokens)
        examples = few_shot_sft_examples(learning_records(split), tokenizer, budget, seed=data.seed)
        chats = few_shot_sft_chats(test, examples, data.system_prompt) if examples else []
        few_shot = [len(chat_prompt(tokenizer, chat, max_length=data.max_length + budget).ids) for chat in chats]
    examples, _ = tokenize_records(split.train, "sft", tokenizer, max_length=data.max_length, stride=data.stride,
                                   system_prompt=data.system_prompt)  # fmt: skip
    answer = max((e.trained_tokens for e in examples), default=settings.max_new_tokens)
    return {"test_prompts": prompts, "few_shot_prompts": few_shot, "answer_tokens": answer}


def _scored_share(config: ResolvedConfig, split: Split, tokenizer: Any) -> float:
    """sft: answer tokens over all tokens of the training examples (1.0 for the other tasks)."""
    from tunelab.data.tokenize import tokenize_records

    if config.task != "sft" or not split.train:
        return 1.0
    examples, _ = tokenize_records(split.train, "sft", tokenizer, max_length=config.data.max_length,
                                   stride=config.data.stride, system_prompt=config.data.system_prompt)  # fmt: skip
    total = sum(len(e.input_ids) for e in examples)
    return sum(e.trained_tokens for e in examples) / total if total else 1.0


def _shared_prefix(config: ResolvedConfig, split: Split, tokenizer: Any, label_map: Any) -> int:
    """The prefix classify training will run once per micro-batch, as ``tasks.classify`` finds it."""
    from tunelab.data.tokenize import tokenize_records, training_prefix

    if config.task != "classify" or not config.train.reuses_prefix() or not split.train:
        return 0
    settings = {"max_length": config.data.max_length, "label_map": label_map, "system_prompt": config.data.system_prompt}
    train, _ = tokenize_records(split.train, "classify", tokenizer, **settings)
    # The loop validates on in-scope queries only (the out-of-scope label has no token), as tasks.classify does.
    in_scope = [r for r in split.validation if r.label != config.data.out_of_scope_label]
    validation, _ = tokenize_records(in_scope, "classify", tokenizer, **settings) if in_scope else ([], None)
    prefix = training_prefix([e.input_ids for e in train + validation])
    return len(prefix) if prefix else 0


def count_tokens_from_files(config: ResolvedConfig, tokenizer: Any) -> TokenCounts:
    """:func:`count_tokens` of the split ``tunelab.data`` makes from the config's files.

    Raises:
        DataError: for missing files, invalid records (unless data.skip_invalid) or too little data.
    """
    from tunelab.data.split import make_split

    config = require_resolved(config)
    if not config.data.train:
        raise DataError("the config has no data.train", "set data.train to your training file")
    return count_tokens(config, make_split(config), tokenizer)


@dataclass
class EstimateInputs:
    """What the estimate of one split is computed from: its token counts, the model's shape, the measured speed.

    ``estimate()`` is the split's estimate; ``estimate(train=...)`` is the same run over other training
    examples (a subset, or more of the same kind): a learning curve and ``tunelab advise`` price every
    size with the one calibration instead of measuring again.
    """

    config: ResolvedConfig
    counts: TokenCounts
    facts: ModelFacts
    calibration: Calibration | None
    device: str
    available_bytes: int | None
    prices: PriceTable | None = None
    machine: CpuState | None = None  # the CPU's state when measured (how many cores other processes kept busy)
    threads: int | None = None  # the threads the run will use there
    fit: FitCheck | None = None  # the split's run against the device's memory (``train.fit`` applied to ``config``)
    processes: int = 1  # training processes of a launch (``tunelab.tasks.launch.launch_processes``)

    def estimate(
        self, *, train: list[int] | None = None, validation: list[int] | None = None, test: list[int] | None = None,
        config: ResolvedConfig | None = None,
    ) -> Estimate:
        """The estimate with these training / validation / test token counts (default: the split's own).

        Raises:
            DataError: when there are no training examples.
        """
        counts = self.counts
        estimate = estimate_run(
            config or self.config,
            counts.train if train is None else train,
            self.facts,
            validation_token_counts=counts.validation if validation is None else validation,
            test_token_counts=counts.test if test is None else test,
            n_labels=counts.n_labels,
            shared_prefix=counts.shared_prefix,
            test_prompt_token_counts=counts.test_prompts if test is None else None,
            few_shot_prompt_token_counts=counts.few_shot_prompts if test is None else None,
            answer_tokens=counts.answer_tokens,
            skipped_baselines=counts.skipped_baselines,
            baseline_prefixes=counts.baseline_prefixes,
            calibration=self.calibration,
            prices=self.prices,
            device=self.device,
            available_bytes=self.available_bytes,
            machine=self.machine,
            threads=self.threads,
            processes=self.processes,
        )
        if train is None and config is None:
            estimate.fit = self.fit
        return estimate


def memory_limit(config: ResolvedConfig, device: str) -> int | None:
    """Bytes the run may take on ``device``: ``budget.max_memory_gib`` when set, else what is free there."""
    if config.budget.max_memory_gib is not None:
        return int(config.budget.max_memory_gib * GIB)
    return available_memory(device)


def _check_fit(config: ResolvedConfig, counts: TokenCounts, facts: ModelFacts, device: str) -> FitCheck:
    """The memory plan of ``config`` on ``device`` against :func:`memory_limit`, with what would make it fit."""
    from tunelab.runtime import resolve_precision

    tokens = plan_tokens(config, counts.train, shared_prefix=counts.shared_prefix)
    precision = resolve_precision(config.train.precision, device)
    return plan_fit(config, facts, tokens, precision, device, memory_limit(config, device), counts.n_labels)


def estimate_inputs(
    config: ResolvedConfig,
    split: Split,
    loaded: LoadedModel,
    *,
    label_map: LabelMap | None = None,
    calibrate_here: bool = True,
    calibration_steps: int = 3,
    calibration_model: Any = None,
    calibration_cache: bool = True,
    prices: PriceTable | None = None,
    processes: int = 1,
) -> EstimateInputs:
    """Count ``split``'s tokens, read the model's shape and (``calibrate_here``) time a few steps: see :func:`estimate_for_split`.

    Raises:
        ModelError: when the model cannot be loaded.
        ConfigError: for an unknown ``budget.gpu``, or rows longer than the model's context.
    """
    from tunelab.models.generate import check_context, context_length
    from tunelab.runtime import choose_threads, cpu_state, default_device

    config = require_resolved(config)
    if config.budget.gpu:
        (prices or load_price_table()).gpu(config.budget.gpu)  # an unknown name is a config error, before any work
    if config.train.backend == "local":
        check_context(config, loaded.model)  # training would refuse it; its timed steps would fail the same way
    counts = count_tokens(config, split, loaded.tokenizer, label_map, context=context_length(loaded.model))
    facts = model_facts(loaded.model, config.lora.r, config.lora.target_modules)
    device = "cuda" if default_device().startswith("cuda") else "cpu"
    # On a CPU the time here depends on how many cores other processes leave free now: the threads the run
    # will use, and the state the estimate states ("2 cores, 1 busy").
    machine = cpu_state() if device == "cpu" else None
    threads = choose_threads(config.train.threads, state=machine).threads if machine else None
    fit = _check_fit(config, counts, facts, device)
    if not fit.fits and config.train.fit == "auto" and fit.options:
        config = apply_fit(config, fit)  # the rest of the estimate is of the run that will happen
    calibration = None
    if not fit.fits and config.train.fit != "off":
        calibrate_here = False  # timing steps that will not fit would run out of memory themselves
    if calibrate_here:
        planned = plan_tokens(config, counts.train, shared_prefix=counts.shared_prefix)
        calibration = calibrate(
            config, planned.seq_len, rows=planned.rows_per_micro_batch, model=calibration_model, steps=calibration_steps, device=device, n_labels=counts.n_labels or 8,
            use_cache=calibration_cache, shared_prefix=counts.shared_prefix, scored_share=counts.scored_share, machine=machine,
            **_decode_shape(config, counts),
        )
    return EstimateInputs(config, counts, facts, calibration, device, fit.available, prices, machine, threads, fit, processes)


def _decode_shape(config: ResolvedConfig, counts: TokenCounts) -> dict[str, Any]:
    """sft: the rows of evaluation's generation batches and the KV-cache lengths it decodes over (the plain prompts',
    the few-shot prompts'); text: the continuation samples' (their openings'); rounded up to 64 so that runs of similar
    data share a calibration."""
    if config.task not in ("sft", "text") or not counts.test_prompts:
        return {}
    half_answer = config.eval.max_new_tokens / 2  # a decode step's cache: the prompt and half the answer, on average
    lengths = [counts.test_prompts, *([counts.few_shot_prompts] if counts.few_shot_prompts else [])]
    contexts = [64 * math.ceil((sum(p) / len(p) + half_answer) / 64) for p in lengths]
    return {"decode_rows": min(config.eval.batch_size, len(counts.test_prompts)), "decode_contexts": contexts}


def estimate_for_split(
    config: ResolvedConfig,
    split: Split,
    loaded: LoadedModel,
    *,
    label_map: LabelMap | None = None,
    calibrate_here: bool = True,
    calibration_steps: int = 3,
    calibration_model: Any = None,
    calibration_cache: bool = True,
    prices: PriceTable | None = None,
    processes: int = 1,
) -> Estimate:
    """The estimate of training ``config`` on ``split`` with the model ``loaded``: what ``tunelab run`` and
    ``tunelab estimate`` both report.

    Calibration adds adapters to the model it trains: ``calibration_model`` is a throwaway copy
    to use (None: a fresh copy is loaded, about 2 s, so ``loaded`` stays untouched). A calibration
    measured before on this machine for the same shape is read from the cache (``calibration_cache``,
    see :func:`tunelab.estimate.calibrate.calibrate`); then no copy is loaded at all. ``processes``: the training
    processes of a launch (``tunelab.tasks.launch.launch_processes``), whose global batch is that many times
    ``train.batch_size``.

    Raises:
        ModelError: when the model cannot be loaded.
        DataError: when there are no training examples.
        ConfigError: for an unknown ``budget.gpu``, or rows longer than the model's context.
    """
    return estimate_inputs(
        config, split, loaded, label_map=label_map, calibrate_here=calibrate_here, calibration_steps=calibration_steps,
        calibration_model=calibration_model, calibration_cache=calibration_cache, prices=prices, processes=processes,
    ).estimate()


def estimate_from_config(
    config: ResolvedConfig,
    *,
    calibrate_here: bool = True,
    calibration_steps: int = 3,
    prices: PriceTable | None = None,
    split: Split | None = None,
    loaded: LoadedModel | None = None,
    processes: int = 1,
) -> Estimate:
    """What ``tunelab estimate`` does: load the model (unless ``loaded`` is the config's model, loaded already), split
    the files (unless ``split`` is the config's split, made already), :func:`estimate_for_split`.

    Raises:
        ModelError: when the model cannot be loaded.
        DataError: when the data cannot be read.
        ConfigError: for an unknown ``budget.gpu``.
    """
    from tunelab.data.split import make_split
    from tunelab.runs import load_model

    config = require_resolved(config)
    if config.budget.gpu:
        (prices or load_price_table()).gpu(config.budget.gpu)
    if not config.data.train:
        raise DataError("the config has no data.train", "set data.train to your training file")
    # The data first: a missing or bad file is a one-line error before the model is loaded (a hub model: downloaded).
    split = split if split is not None else make_split(config)
    if loaded is None:
        loaded = load_model(config.model.name, allow_network=config.model.allow_network, revision=config.model.revision)
    # The CLI needs the model for nothing else: calibration may change this one in place.
    return estimate_for_split(
        config, split, loaded, calibrate_here=calibrate_here, calibration_steps=calibration_steps,
        calibration_model=loaded.model, prices=prices, processes=processes,
    )
