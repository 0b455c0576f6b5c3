"""Check that an adapter folder is what vLLM's ``--enable-lora --lora-modules name=path`` loads as is.

vLLM reads a PEFT LoRA folder: ``adapter_config.json`` (peft_type LORA, base_model_name_or_path,
target_modules, r, lora_alpha) and ``adapter_model.safetensors`` whose tensor names look like
``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight`` (no adapter name inside the
key, no ``.default.``). A classify run's adapter also holds its trained label rows as PEFT trainable
tokens (``trainable_token_indices``): plain PEFT loads them, vLLM's LoRA does not, so such a folder is
reported with the way out (serve the merged export, ``tunelab export --merge RUN OUT``, which vLLM loads as
a plain model). vLLM cannot run in this project's CPU environment, so this check is what tests (and
``tunelab`` runs) use to keep the folders compatible.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

LORA_KEY = re.compile(r"^base_model\.model\.[\w.]+\.lora_(A|B)\.weight$")
REQUIRED_CONFIG_KEYS = ("base_model_name_or_path", "target_modules", "r", "lora_alpha")


def vllm_adapter_problems(folder: Path) -> list[str]:
    """Everything that would stop vLLM from loading ``folder`` as a LoRA module (empty: loadable)."""
    folder = Path(folder)
    problems: list[str] = []
    config_path = folder / "adapter_config.json"
    weights_path = folder / "adapter_model.safetensors"
    if not config_path.is_file():
        return [f"{config_path} is missing"]
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        return [f"{config_path} is not valid JSON: {error}"]
    for key in REQUIRED_CONFIG_KEYS:
        if config.get(key) in (None, "", []):
            problems.append(f"adapter_config.json has no '{key}'")
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}; vLLM serves LORA adapters only")
    if not isinstance(config.get("r"), int) or (isinstance(config.get("r"), int) and config["r"] < 1):
        problems.append("'r' must be a positive integer")
    if config.get("trainable_token_indices"):
        problems.append(
            "the adapter holds trained label rows as PEFT trainable tokens (a classify run), which vLLM's LoRA support "
            "does not load: serve the merged export (`tunelab export --merge RUN OUT`) with vLLM instead"
        )
    if not weights_path.is_file():
        problems.append(f"{weights_path} is missing (vLLM reads safetensors, not adapter_model.bin)")
        return problems
    from safetensors import safe_open

    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as error:  # noqa: BLE001 - any unreadable file is one problem to report
        return [*problems, f"{weights_path} cannot be read: {error}"]
    lora_keys = [key for key in keys if ".lora_" in key]
    if not lora_keys:
        problems.append("adapter_model.safetensors holds no lora_A/lora_B tensors")
    bad = [key for key in lora_keys if not LORA_KEY.match(key)]
    if bad:
        problems.append(f"{len(bad)} tensor names are not base_model.model.<module>.lora_A/B.weight, e.g. {bad[0]}")
    a_modules = {key.rsplit(".lora_A", 1)[0] for key in lora_keys if ".lora_A." in key}
    b_modules = {key.rsplit(".lora_B", 1)[0] for key in lora_keys if ".lora_B." in key}
    if a_modules != b_modules:
        problems.append("some modules have lora_A without lora_B (or the reverse)")
    return problems
