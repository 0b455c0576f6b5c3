"""What is measured rather than computed: the model's shape, free memory, and a few real training steps here.

The calibration trains exactly as a run does: the parameters come from
``tunelab.models.adapters.apply_method`` (with its checks), and classify scores only the label
tokens through ``tunelab.models.heads`` (no full-vocabulary logits), as the classify loss does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.config import CPU_PASS_TOKENS, ResolvedConfig
from tunelab.errors import ConfigError
from tunelab.estimate.plan import Calibration, ModelFacts
from tunelab.paths import atomic_write_text, cache_dir
from tunelab.runtime import CpuState, choose_threads, cpu_state, is_out_of_memory

CALIBRATION_SUBDIR = "calibration"
# Bumped whenever what calibrate() times changes, so measurements of an older recipe are not reused.
# 6: the threads are the run's own (the free cores), and the machine's state is stored with each measurement.
# 7: frozen weights in the compute dtype (bf16 under bf16), a 4-bit base for qlora, as training holds them.
# 8: sft also times evaluation's generation (a prefill forward, decode steps of the plain and the adapted model).
# 9: every task times evaluation's forward (fp32 weights, inference mode): classify and text evaluation ran 1.8-4.6x
#    longer than the training step's bf16 FLOP rate priced them (bench/README.md, "Decide before spending").
CALIBRATION_RECIPE_VERSION = 9
# Decode steps timed per KV-cache length (after one untimed): each is a few milliseconds to a tenth of a second.
DECODE_STEPS = 3
# The timed steps stop once they add up to this many seconds (at least one is timed): a slow step already
# averages over much work, and a cold estimate must stay well under half a minute (sft at 512 tokens on
# a 2-core CPU: 3 timed steps of 10 s made the cold estimate 39 s).
CALIBRATION_TIMED_SECONDS = 8.0


def _lora_targets(target_modules: str | list[str]) -> tuple[bool, set[str]]:
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            return True, set()
        return False, {target_modules}
    return False, set(target_modules)


def model_facts(model: Any, lora_r: int = 16, target_modules: str | list[str] = "all-linear") -> ModelFacts:
    """Measure a loaded (or meta-device) transformers causal LM.

    LoRA adds ``r·(in + out)`` parameters per adapted ``nn.Linear``; ``all-linear`` adapts every
    Linear but the LM head (peft's rule).
    """
    import torch

    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    d_model = int(text_config.hidden_size)
    n_heads = int(text_config.num_attention_heads)
    head_dim = int(getattr(text_config, "head_dim", None) or d_model // n_heads)
    n_kv = int(getattr(text_config, "num_key_value_heads", None) or n_heads)
    # A LoRA run's model comes with its adapter active (PEFT's lora_A / lora_B beside each adapted layer's
    # base_layer); training folds it into the weights before adding its own (models.adapters.apply_method), so the
    # facts are those of the folded model: adapter weights are neither parameters nor linears to adapt.
    def adapter_part(name: str) -> bool:
        return any(part.startswith("lora_") for part in name.split("."))

    total = sum(p.numel() for name, p in model.named_parameters() if not adapter_part(name))
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if embedding.device.type == "meta":  # meta tensors have no storage to compare
        tied = bool(getattr(text_config, "tie_word_embeddings", False))
    else:
        tied = head is not None and head.weight.data_ptr() == embedding.data_ptr()
    body = total - embedding.numel() - (0 if tied or head is None else head.weight.numel())
    all_linear, names = _lora_targets(target_modules)
    lora = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head or adapter_part(name):
            continue
        name = name.removesuffix(".base_layer")
        if all_linear or name.split(".")[-1] in names:
            lora += lora_r * (module.in_features + module.out_features)
    return ModelFacts(
        total_params=total,
        body_params=body,
        n_layers=int(text_config.num_hidden_layers),
        d_model=d_model,
        d_kv=n_kv * head_dim,
        intermediate=int(getattr(text_config, "intermediate_size", 4 * d_model)),
        vocab=int(embedding.shape[0]),
        lora_params=lora,
    )


def available_memory(device: str = "cpu") -> int | None:
    """Bytes free for a run: CUDA free device memory, else MemAvailable (psutil or /proc/meminfo)."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info()[0])
        return None
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in ("torch", "transformers", "peft"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _model_identity(config: ResolvedConfig) -> dict[str, Any]:
    # A local folder or file can be replaced by another model under the same name: its resolved path
    # and modification time are part of what was measured.
    identity: dict[str, Any] = {"name": config.model.name, "revision": config.model.revision}
    path = Path(config.model.name).expanduser()
    if config.model.name != "default" and path.exists():
        identity["path"] = str(path.resolve())
        identity["mtime_ns"] = path.stat().st_mtime_ns
    return identity


def calibration_key(
    config: ResolvedConfig, seq_len: int, *, device: str, precision: str, threads: int, n_labels: int, steps: int,
    shared_prefix: int = 0, scored_share: float = 1.0, rows: int | None = None, decode: tuple[int, list[int]] | None = None,
) -> dict[str, Any]:
    """Everything that changes the speed of a calibrated step: the cache key of :func:`calibrate`.

    The machine (CPU model, cores, device), the libraries' versions, the model, the task and method,
    the step's shape (batch, rows, sequence length, max_length, labels) and what runs in it (LoRA rank and
    targets, precision, threads, gradient checkpointing, compile, gradient clipping).
    """
    from tunelab.runtime import cpu_model_name

    return {
        "recipe": CALIBRATION_RECIPE_VERSION,
        "cpu": cpu_model_name(),
        "cores": os.cpu_count(),
        "device": device,
        "versions": _library_versions(),
        "model": _model_identity(config),
        "task": config.task,
        "method": config.train.method,
        "lora_r": config.lora.r if config.train.method in ("lora", "qlora") else None,
        "lora_targets": config.lora.target_modules if config.train.method in ("lora", "qlora") else None,
        "lora_dropout": config.lora.dropout if config.train.method in ("lora", "qlora") else None,
        "batch_size": config.train.batch_size,
        "seq_len": seq_len,
        "max_length": config.data.max_length,
        "n_labels": n_labels if config.task == "classify" else None,
        "precision": precision,
        "threads": threads,
        "gradient_checkpointing": config.train.gradient_checkpointing,
        "compile": config.train.compile,
        "max_grad_norm": bool(config.train.max_grad_norm),
        "steps": steps,
        "rows": rows,
        "shared_prefix": shared_prefix if config.task == "classify" else None,
        "scored_share": round(scored_share, 2) if config.task in ("sft", "text") else None,
        "decode": list(decode) if decode else None,
    }


def calibration_cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_dir() / CALIBRATION_SUBDIR / f"{digest}.json"


def unshared_cores(state: CpuState) -> int:
    """Cores no other process kept busy (0 when they all were: every thread of ours shared one)."""
    return max(0, state.cores - state.busy)


def same_load(measured: CpuState | None, now: CpuState | None, threads: int) -> bool:
    """Whether a step measured in the machine state ``measured`` times what ``threads`` threads do ``now``.

    The calibration's load rule: as many of the threads must have had a core to themselves then as will
    now. One thread beside one busy core of two runs as fast as on an idle machine (the measurement
    stands); two threads beside it ran 12x slower than one (bench/README.md, "Threads that follow the
    free cores"), so a measurement of two threads on an idle machine says nothing about them beside a
    neighbour, nor the other way round. An unknown state on either side keeps the measurement.
    """
    if measured is None or now is None or measured.others_busy is None or now.others_busy is None:
        return True
    return min(threads, unshared_cores(measured)) == min(threads, unshared_cores(now))


def _stored_state(stored: dict[str, Any]) -> CpuState | None:
    fields = stored.get("machine")
    if not isinstance(fields, dict):
        return None
    try:
        others = fields.get("others_busy")
        return CpuState(cpus=int(fields["cpus"]), physical_cores=int(fields["physical_cores"]),
                        quota=None if fields.get("quota") is None else float(fields["quota"]),
                        others_busy=None if others is None else float(others))  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None


def _read_cached(path: Path, key: dict[str, Any], machine: CpuState | None) -> Calibration | None:
    """The stored calibration for ``key``, or None when there is none or it cannot be trusted (measured anew then).

    Anything but a complete measurement of positive, finite durations is ignored: a damaged entry
    (``[]``, no timed step, negative times) once gave a negative estimate or a crash.
    """
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != json.loads(json.dumps(key, default=str)):
        return None  # damaged, a hash collision or an older layout
    measured = _stored_state(stored)
    fields = stored.get("calibration")
    if not isinstance(fields, dict):
        return None
    try:
        threads = int(fields["threads"])
        if not same_load(measured, machine, threads):
            return None
        calibration = Calibration(
            device=str(fields["device"]), precision=str(fields["precision"]), method=str(fields["method"]),
            batch_size=int(fields["batch_size"]), seq_len=int(fields["seq_len"]), threads=threads,
            step_seconds=[float(v) for v in fields["step_seconds"]], warmup_seconds=float(fields["warmup_seconds"]),
            cached=True, machine=measured,
            forward_seconds=None if fields.get("forward_seconds") is None else float(fields["forward_seconds"]),
            decode_rows=None if fields.get("decode_rows") is None else int(fields["decode_rows"]),
            decode_contexts=[int(v) for v in fields.get("decode_contexts") or []],
            decode_seconds=[float(v) for v in fields.get("decode_seconds") or []],
            adapted_decode_seconds=None if fields.get("adapted_decode_seconds") is None else float(fields["adapted_decode_seconds"]),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None
    durations = [*calibration.step_seconds, calibration.warmup_seconds, *calibration.decode_seconds]
    durations += [d for d in (calibration.forward_seconds, calibration.adapted_decode_seconds) if d is not None]
    if not calibration.step_seconds or not all(math.isfinite(d) and d > 0 for d in durations):
        return None
    if calibration.batch_size < 1 or calibration.seq_len < 1 or calibration.threads < 1:
        return None
    return calibration


# On a CPU a step of about this many tokens already runs the matmuls at their per-token speed, so a
# bigger batch only makes the calibration slower (measured: sft at 512 tokens, 2 rows 42.6 tok/s vs
# 8 rows 40.9 tok/s, one cold calibration 89 s vs 299 s, same load). GPUs need the real batch. It is
# the loop's own CPU pass (train.max_pass_tokens=auto), and a timed step stays within it: 3 rows of 472
# tokens (1,416) timed slower per token than the loop's passes of at most 1,024, an sft estimate 25 % slow.
CPU_CALIBRATION_TOKENS = CPU_PASS_TOKENS


def calibration_rows(batch_size: int, seq_len: int, device: str) -> int:
    """Rows of the timed steps: the rows of the run's micro-batch (``batch_size``), on a CPU as many of them
    as fit in ``CPU_CALIBRATION_TOKENS`` (at least one)."""
    if device != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_CALIBRATION_TOKENS // max(1, seq_len)))


def _fp32_fits(model: Any, device: str) -> bool:
    """Whether ``model``'s weights in fp32 fit where it is: always on the CPU; on the GPU as evaluation places a model
    there (``models.loader.GPU_WEIGHTS_SHARE`` of the free memory, the weights it already holds counted free)."""
    if not device.startswith("cuda"):
        return True
    import torch

    from tunelab.models.loader import GPU_WEIGHTS_SHARE

    tensors = [*model.parameters(), *model.buffers()]
    held = sum(t.numel() * t.element_size() for t in tensors)
    fp32 = sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in tensors)
    return fp32 <= GPU_WEIGHTS_SHARE * (torch.cuda.mem_get_info(device)[0] + held)


def _time_generation(
    model: Any, input_ids: Any, rows: int | None, contexts: list[int], *, device: str, quantized: bool = False
) -> dict[str, Any]:
    """Seconds of what evaluation runs: a forward of ``input_ids`` (None: not timed) with the head on the last position
    only, as ``generate`` computes a prefill and classify scores a prompt (every task's evaluation and the baselines
    that run the model), and one decode step (a new token for each of ``rows`` rows) over a KV cache of each of
    ``contexts`` tokens (none: no generation timed).

    In fp32 (evaluation loads models in fp32: ``runs.load_model``; a 4-bit base stays as it is) and inference mode; on
    a GPU where the fp32 weights would not fit (``_fp32_fits``: evaluation would not place them there either) in the
    model's own dtype, without the copy that ran the estimate out of memory. Running out of memory anyway is one line.
    The KV cache is zeros: speed does not depend on its values (zeros are a memset; random values for a few-shot
    cache are a large draw, about 200M numbers for qa-assistant), and filling it by a real prefill of ``rows`` rows of a few-shot prompt would cost more than the rest of
    the calibration.
    """
    import statistics as stats

    import torch
    from transformers import DynamicCache

    from tunelab.models.heads import causal_lm_of
    from tunelab.models.prefix import cache_argument

    if not quantized and _fp32_fits(model, device):
        model = model.float()
    was_training = model.training
    model.eval()
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_heads = int(text_config.num_attention_heads)
    head_dim = int(getattr(text_config, "head_dim", None) or text_config.hidden_size // n_heads)
    n_kv = int(getattr(text_config, "num_key_value_heads", None) or n_heads)
    dtype = model.get_input_embeddings().weight.dtype
    vocab = model.get_input_embeddings().weight.shape[0]
    lm = causal_lm_of(model)

    def synchronize() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    timed: dict[str, Any] = {"decode_rows": rows, "decode_contexts": list(contexts), "decode_seconds": []}
    generator = torch.Generator().manual_seed(1)
    try:
        with torch.inference_mode():
            if input_ids is not None:
                lm.get_decoder()(input_ids=input_ids[:1, :8])  # warm-up: first-call allocations
                synchronize()
                start = time.perf_counter()
                hidden = lm.get_decoder()(input_ids=input_ids).last_hidden_state[:, -1]
                lm.get_output_embeddings()(hidden).argmax(-1)
                synchronize()
                timed["forward_seconds"] = time.perf_counter() - start
            for context in contexts:
                cache = DynamicCache()
                for layer in range(int(text_config.num_hidden_layers)):
                    keys = torch.zeros((rows, n_kv, context, head_dim), device=device, dtype=dtype)
                    cache.update(keys, torch.zeros_like(keys), layer)
                mask = torch.ones((rows, context + DECODE_STEPS + 1), dtype=torch.long, device=device)
                token = torch.randint(0, vocab, (rows, 1), generator=generator).to(device)
                times = []
                for step in range(1 + DECODE_STEPS):
                    synchronize()
                    start = time.perf_counter()
                    # The causal LM inside a PEFT wrapper still runs the adapters (they are its layers).
                    out = lm(input_ids=token, attention_mask=mask[:, : context + step + 1], use_cache=True, logits_to_keep=1,
                             **{cache_argument(lm): cache})  # fmt: skip
                    token = out.logits[:, -1].argmax(-1, keepdim=True)
                    synchronize()
                    times.append(time.perf_counter() - start)
                timed["decode_seconds"].append(stats.median(times[1:]))
                del cache
    except RuntimeError as error:
        if is_out_of_memory(error):
            timing = [f"a forward of {input_ids.shape[0]} rows of {input_ids.shape[1]} tokens"] if input_ids is not None else []
            timing += [f"decode steps of {rows} rows"] if contexts else []
            raise ConfigError(
                f"out of memory on {device} timing evaluation for the estimate ({', '.join(timing)})",
                "lower train.batch_size or data.max_length (the forward's rows and tokens), or eval.batch_size (the decode rows)",
            ) from None
        raise
    model.train(was_training)
    return timed


def calibrate(
    config: ResolvedConfig,
    seq_len: int,
    *,
    model: Any = None,
    steps: int = 3,
    device: str | None = None,
    n_labels: int = 8,
    use_cache: bool = True,
    shared_prefix: int = 0,
    scored_share: float = 1.0,
    timed_seconds: float | None = CALIBRATION_TIMED_SECONDS,
    machine: CpuState | None = None,
    rows: int | None = None,
    decode_rows: int | None = None,
    decode_contexts: Sequence[int] = (),
) -> Calibration:
    """Time one warm-up and up to ``steps`` real training steps (forward, backward, AdamW step) at the run's shape.

    A step holds ``rows`` rows of ``seq_len`` tokens: the rows of one of the run's micro-batches
    (``TokenPlan.rows_per_micro_batch``: packed examples share rows; None: ``train.batch_size``, one
    example a row). The timed steps stop early once they add up to ``timed_seconds`` (None: all ``steps`` are timed).
    Every task also times evaluation's forward as evaluation runs it (fp32 weights, inference mode), before the
    adapters are added: one forward of the rows with the head on the last position (a classify prompt, an sft
    prefill; ``Calibration.forward_seconds``). sft and text with ``decode_rows`` and ``decode_contexts`` (evaluation's
    generation batch and the KV-cache lengths it decodes over; text: its continuation samples) also times decode steps at each length, of the plain
    model (base, few-shot) and of the trained model after the steps (the tuned model's evaluation).
    sft and text score the output head on ``scored_share`` of each row's positions (the share of the
    run's tokens that carry loss: an sft answer, not its prompt), as their loss does.

    The steps run with the threads the run will have (``tunelab.runtime.choose_threads``: ``train.threads``,
    an explicit ``OMP_NUM_THREADS``, else the cores free now), beside whatever else runs on the machine
    now; ``machine`` is that state (None: sampled here), stored with the measurement.

    A measurement is cached under the user cache (``calibration/``), keyed by
    :func:`calibration_key` (machine, libraries, model, task, method, shape, precision, threads):
    the same run shape on the same machine is measured once, and a later estimate reads it back
    without loading a model (``Calibration.cached`` says which) while the machine's load leaves the
    threads as many free cores as when it was measured (:func:`same_load`). ``use_cache=False``
    measures anew and replaces the stored measurement.

    Loads ``config.model.name`` unless ``model`` (a transformers causal LM) is given; that model is
    changed in place (adapters added, moved to the device), so pass a throwaway copy. Inputs are
    random token ids: speed does not depend on content. Precision comes from
    ``resolve_precision(config.train.precision)``; bf16 runs under autocast with the frozen weights in
    bf16 and the trained ones in fp32, as training does (``models.loader.load_for_training``).

    Raises:
        ModelError: when the model cannot be loaded.
        ConfigError: when ``apply_method`` refuses the config (see there), or out of memory on ``device`` (one line
            naming what to lower).
    """
    import torch

    from tunelab.models.adapters import apply_method
    from tunelab.models.fused import compile_model
    from tunelab.models.heads import causal_lm_of, label_logits
    from tunelab.models.prefix import prefix_hidden_states
    from tunelab.runtime import default_device, resolve_precision

    device = device or default_device()
    if device not in ("cpu",) and not device.startswith("cuda"):
        device = "cpu"
    precision = resolve_precision(config.train.precision, device)
    if device == "cpu":
        machine = machine or cpu_state()
        threads = choose_threads(config.train.threads, state=machine).threads
    else:
        threads = config.train.threads or torch.get_num_threads()
    batch = calibration_rows(rows or config.train.batch_size, seq_len, device)
    # sft answers and a text run's continuation samples are generated: their decode steps are timed.
    decode = (decode_rows, sorted(set(decode_contexts))) if config.task in ("sft", "text") and decode_rows and decode_contexts else None
    key = calibration_key(
        config, seq_len, device=device, precision=precision, threads=threads,
        n_labels=n_labels, steps=steps, shared_prefix=shared_prefix, scored_share=scored_share, rows=batch, decode=decode,
    )  # fmt: skip
    cache_path = calibration_cache_path(key)
    if use_cache:
        cached = _read_cached(cache_path, key, machine)
        if cached is not None:
            return cached
    from tunelab.models.loader import weights_dtype
    from tunelab.runs import load_for_training

    if model is None or config.train.method == "qlora":
        # The model as training holds it (frozen weights in the compute dtype, a 4-bit base for qlora).
        model = load_for_training(config, precision).model
    else:
        model = model.to(getattr(torch, weights_dtype(config.train.method, precision)))
    if config.train.method != "qlora":
        # Loaded on the CPU; the timed forward and decode steps feed it their tokens on ``device`` (a 4-bit base is
        # already there: it is placed as it is quantized).
        model = model.to(device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    generation: dict[str, Any] = {}
    try:
        generator = torch.Generator().manual_seed(0)
        vocab = model.get_input_embeddings().weight.shape[0]
        input_ids = torch.randint(0, vocab, (batch, seq_len), generator=generator).to(device)
        # Evaluation's forward, whatever the task (sft: with its decode steps): evaluation holds the weights in fp32 and
        # runs no autograd, so the training step's bf16 FLOP rate priced it up to 4.6x fast.
        generation = _time_generation(model, input_ids, *(decode or (None, [])), device=device, quantized=config.train.method == "qlora")
        if config.train.method != "qlora":
            model = model.to(getattr(torch, weights_dtype(config.train.method, precision)))  # back as training holds it
        model = apply_method(model, config)
        compile_model(model, config.train.compile, device=device.split(":")[0], precision=precision)  # as the loop does
        if config.train.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        model.to(device)
        model.train()
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=config.train.lr, weight_decay=config.train.weight_decay)
        label_columns = torch.arange(min(n_labels, vocab), device=device)
        prefix_batch = None
        if config.task == "classify" and shared_prefix:
            causal = torch.ones((seq_len, seq_len), dtype=torch.bool).tril()
            prefix_batch = {
                "prefix_ids": torch.randint(0, vocab, (shared_prefix,), generator=generator).to(device),
                "input_ids": input_ids,
                "position_ids": (torch.arange(seq_len) + shared_prefix).expand(batch, -1).to(device),
                "attention_mask": torch.cat([torch.ones((seq_len, shared_prefix), dtype=torch.bool), causal], dim=-1)
                .expand(batch, 1, -1, -1).to(device),
            }
        targets = torch.randint(0, len(label_columns), (batch,), generator=generator).to(device)
        scored = max(1, min(seq_len, round(seq_len * scored_share)))
        token_targets = torch.randint(0, vocab, (batch * scored,), generator=generator).to(device)
        autocast = (
            torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        )
        times = []
        for _ in range(1 + steps):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            with autocast:
                if config.task == "classify":
                    # As classify training does: the decoder's last hidden state, only the label tokens' rows of the head;
                    # with a shared prefix (train.prefix_reuse) the prefix once, the rows on top of it.
                    if prefix_batch is not None:
                        hidden = prefix_hidden_states(model, prefix_batch)[:, -1]
                    else:
                        hidden = causal_lm_of(model).get_decoder()(input_ids=input_ids).last_hidden_state[:, -1]
                    loss = torch.nn.functional.cross_entropy(label_logits(model, hidden, label_columns).float(), targets)
                else:
                    # The head only at the positions that carry loss (the last ones of a row: an sft answer
                    # follows its prompt), as the training loss computes it; on every position it timed
                    # full-vocabulary logits the loop never computes.
                    hidden = causal_lm_of(model).get_decoder()(input_ids=input_ids).last_hidden_state[:, -scored:]
                    logits = causal_lm_of(model).get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1]))
                    loss = torch.nn.functional.cross_entropy(logits.float(), token_targets)
            loss.backward()
            if config.train.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(parameters, config.train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            if timed_seconds is not None and len(times) > 1 and sum(times[1:]) >= timed_seconds:
                break
        if decode is not None:
            # The tuned model's evaluation: the trained adapters on the fp32 base (runs.Run.load), one context.
            adapted = _time_generation(model, None, decode[0], decode[1][:1], device=device, quantized=config.train.method == "qlora")
            generation["adapted_decode_seconds"] = adapted["decode_seconds"][0]
    except RuntimeError as error:
        # The timed training steps at the run's shape did not fit where the run would train: the run itself would stop
        # the same way, so the estimate says which settings make the step smaller instead of torch's traceback.
        if is_out_of_memory(error):
            # train.fit: auto changes only a run its memory estimate says will not fit: this one's it expected to (a
            # step is timed only then), so it is named only where the check was off.
            auto = ", or set train.fit: auto (the memory check then makes the step fit)" if config.train.fit == "off" else ""
            raise ConfigError(
                f"out of memory on {device} timing training steps for the estimate ({batch} rows of {seq_len} tokens: "
                f"train.batch_size={config.train.batch_size}, data.max_length={config.data.max_length})",
                "lower train.batch_size (raise train.grad_accum to keep the same effective batch) or data.max_length, set "
                f"train.max_pass_tokens (the same step in smaller passes) or train.gradient_checkpointing=true{auto}",
            ) from None
        raise
    finally:
        torch.set_num_threads(previous_threads)
    calibration = Calibration(
        device=device,
        precision=precision,
        method=config.train.method,
        batch_size=batch,
        seq_len=seq_len,
        threads=threads,
        step_seconds=times[1:],
        warmup_seconds=times[0],
        machine=machine,
        **generation,
    )
    try:
        fields = {k: v for k, v in calibration.as_dict().items() if k not in ("cached", "machine")}
        stored = {"key": key, "calibration": fields, "measured_at": time.time(),
                  "machine": None if machine is None else dataclasses.asdict(machine)}
        atomic_write_text(cache_path, json.dumps(stored, indent=1, default=str) + "\n")
    except OSError:
        pass  # a read-only cache costs the next estimate a measurement, not this one its result
    return calibration
