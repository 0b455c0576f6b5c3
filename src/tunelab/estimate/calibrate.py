"""What is measured rather than computed: the model's shape, free memory, and a few real training steps here.

The calibration trains exactly as a run does: the parameters come from
``tunelab.models.adapters.apply_method`` (with its checks), and classify scores only the label
tokens through ``tunelab.models.heads`` (no full-vocabulary logits), as the classify loss does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from tunelab.config import CPU_PASS_TOKENS, ResolvedConfig
from tunelab.estimate.plan import Calibration, ModelFacts
from tunelab.paths import atomic_write_text, cache_dir

CALIBRATION_SUBDIR = "calibration"
# Bumped whenever what calibrate() times changes, so measurements of an older recipe are not reused.
CALIBRATION_RECIPE_VERSION = 5
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
    total = sum(p.numel() for p in model.parameters())
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
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
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
    shared_prefix: int = 0, scored_share: float = 1.0,
) -> dict[str, Any]:
    """Everything that changes the speed of a calibrated step: the cache key of :func:`calibrate`.

    The machine (CPU model, cores, device), the libraries' versions, the model, the task and method,
    the step's shape (batch, sequence length, max_length, labels) and what runs in it (LoRA rank and
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
        "shared_prefix": shared_prefix if config.task == "classify" else None,
        "scored_share": round(scored_share, 2) if config.task in ("sft", "text") else None,
    }


def calibration_cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_dir() / CALIBRATION_SUBDIR / f"{digest}.json"


def _load_per_core() -> float | None:
    try:
        return os.getloadavg()[0] / max(1, os.cpu_count() or 1)
    except OSError:
        return None


def measured_while_busier(stored_load: float | None, current_load: float | None) -> bool:
    """True when a measurement was taken on an oversubscribed machine (load above the core count)
    that is no longer so: its step times would overstate every estimate made on the quiet machine."""
    if stored_load is None or current_load is None:
        return False
    return stored_load > 1.0 and current_load < 0.5 * stored_load


def _read_cached(path: Path, key: dict[str, Any]) -> Calibration | None:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if stored.get("key") != json.loads(json.dumps(key, default=str)):  # a hash collision or an older layout
        return None
    if measured_while_busier(stored.get("load_per_core"), _load_per_core()):
        return None
    fields = stored.get("calibration", {})
    try:
        return Calibration(
            device=fields["device"], precision=fields["precision"], method=fields["method"],
            batch_size=int(fields["batch_size"]), seq_len=int(fields["seq_len"]), threads=int(fields["threads"]),
            step_seconds=[float(v) for v in fields["step_seconds"]], warmup_seconds=float(fields["warmup_seconds"]),
            cached=True,
        )  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None


# On a CPU a step of about this many tokens already runs the matmuls at their per-token speed, so a
# bigger batch only makes the calibration slower (measured: sft at 512 tokens, 2 rows 42.6 tok/s vs
# 8 rows 40.9 tok/s, one cold calibration 89 s vs 299 s, same load). GPUs need the real batch. It is
# the loop's own CPU pass (train.max_pass_tokens=auto), and a timed step stays within it: 3 rows of 472
# tokens (1,416) timed slower per token than the loop's passes of at most 1,024, an sft estimate 25 % slow.
CPU_CALIBRATION_TOKENS = CPU_PASS_TOKENS


def calibration_rows(batch_size: int, seq_len: int, device: str) -> int:
    """Rows of the timed steps: the run's batch, on a CPU as many as fit in ``CPU_CALIBRATION_TOKENS`` (at least one)."""
    if device != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_CALIBRATION_TOKENS // max(1, seq_len)))


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
) -> Calibration:
    """Time one warm-up and up to ``steps`` real training steps (forward, backward, AdamW step) at the run's shape.

    The timed steps stop early once they add up to ``timed_seconds`` (None: all ``steps`` are timed).
    sft and text score the output head on ``scored_share`` of each row's positions (the share of the
    run's tokens that carry loss: an sft answer, not its prompt), as their loss does.

    A measurement is cached under the user cache (``calibration/``), keyed by
    :func:`calibration_key` (machine, libraries, model, task, method, shape, precision, threads):
    the same run shape on the same machine is measured once, and a later estimate reads it back
    without loading a model (``Calibration.cached`` says which). ``use_cache=False`` measures anew
    and replaces the stored measurement.

    Loads ``config.model.name`` unless ``model`` (a transformers causal LM) is given; that model is
    changed in place (adapters added, moved to the device), so pass a throwaway copy. Inputs are
    random token ids: speed does not depend on content. Precision comes from
    ``resolve_precision(config.train.precision)``; bf16 runs under autocast with fp32 weights, as
    training does.

    Raises:
        ModelError: when the model cannot be loaded.
        ConfigError: when ``apply_method`` refuses the config (see there).
    """
    import torch

    from tunelab.models.adapters import apply_method
    from tunelab.models.heads import causal_lm_of, label_logits
    from tunelab.models.prefix import prefix_hidden_states
    from tunelab.runtime import default_device, resolve_precision

    device = device or default_device()
    if device not in ("cpu",) and not device.startswith("cuda"):
        device = "cpu"
    precision = resolve_precision(config.train.precision, device)
    key = calibration_key(
        config, seq_len, device=device, precision=precision, threads=config.train.threads or torch.get_num_threads(),
        n_labels=n_labels, steps=steps, shared_prefix=shared_prefix, scored_share=scored_share,
    )  # fmt: skip
    cache_path = calibration_cache_path(key)
    if use_cache:
        cached = _read_cached(cache_path, key)
        if cached is not None:
            return cached
    if model is None:
        from tunelab.models import load_model

        model = load_model(config.model.name, allow_network=config.model.allow_network, revision=config.model.revision).model
    previous_threads = torch.get_num_threads()
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    try:
        model = apply_method(model, config)
        if config.train.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        model.to(device)
        model.train()
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=config.train.lr, weight_decay=config.train.weight_decay)
        generator = torch.Generator().manual_seed(0)
        vocab = model.get_input_embeddings().weight.shape[0]
        batch = calibration_rows(config.train.batch_size, seq_len, device)
        input_ids = torch.randint(0, vocab, (batch, seq_len), generator=generator).to(device)
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
        threads = torch.get_num_threads()
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
    )
    try:
        stored = {"key": key, "calibration": {k: v for k, v in calibration.as_dict().items() if k != "cached"}, "measured_at": time.time(),
                  "load_per_core": _load_per_core()}
        atomic_write_text(cache_path, json.dumps(stored, indent=1, default=str) + "\n")
    except OSError:
        pass  # a read-only cache costs the next estimate a measurement, not this one its result
    return calibration
