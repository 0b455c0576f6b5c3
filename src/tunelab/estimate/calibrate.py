"""What is measured rather than computed: the model's shape, free memory, and a few real training steps here.

The calibration trains exactly as a run does: the parameters come from
``tunelab.models.adapters.apply_method`` (with its checks), and classify scores only the label
tokens through ``tunelab.models.heads`` (no full-vocabulary logits), as the classify loss does.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from tunelab.config import ResolvedConfig
from tunelab.estimate.plan import Calibration, ModelFacts


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


def calibrate(
    config: ResolvedConfig,
    seq_len: int,
    *,
    model: Any = None,
    steps: int = 3,
    device: str | None = None,
    n_labels: int = 8,
) -> Calibration:
    """Time ``1 + steps`` real training steps (forward, backward, AdamW step) at the run's shape.

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
    from tunelab.runtime import default_device, resolve_precision

    device = device or default_device()
    if device not in ("cpu",) and not device.startswith("cuda"):
        device = "cpu"
    precision = resolve_precision(config.train.precision, device)
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
        batch = config.train.batch_size
        input_ids = torch.randint(0, vocab, (batch, seq_len), generator=generator).to(device)
        label_columns = torch.arange(min(n_labels, vocab), device=device)
        targets = torch.randint(0, len(label_columns), (batch,), generator=generator).to(device)
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
                    # As classify training does: the decoder's last hidden state, only the label tokens' rows of the head.
                    hidden = causal_lm_of(model).get_decoder()(input_ids=input_ids).last_hidden_state[:, -1]
                    loss = torch.nn.functional.cross_entropy(label_logits(model, hidden, label_columns).float(), targets)
                else:
                    loss = model(input_ids=input_ids, labels=input_ids).loss
            loss.backward()
            if config.train.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(parameters, config.train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    return Calibration(
        device=device,
        precision=precision,
        method=config.train.method,
        batch_size=batch,
        seq_len=seq_len,
        threads=threads,
        step_seconds=times[1:],
        warmup_seconds=times[0],
    )
