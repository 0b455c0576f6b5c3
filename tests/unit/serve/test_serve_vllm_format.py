"""The adapter folders tunelab writes (PEFT, in <run>/adapter/) are the format vLLM's --lora-modules loads."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

from tunelab.serve.vllm import vllm_adapter_problems


def test_peft_adapter_folder_is_vllm_format(fake_runs, tiny_model_dir):
    folder = fake_runs["france"] / "adapter"
    assert vllm_adapter_problems(folder) == []
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    assert config["r"] == 4 and config["lora_alpha"] == 8 and {m.rsplit(".", 1)[-1] for m in config["target_modules"]} >= {"q_proj", "v_proj"}
    keys = list(load_file(str(folder / "adapter_model.safetensors")))
    assert keys and all(key.startswith("base_model.model.") and key.endswith((".lora_A.weight", ".lora_B.weight")) for key in keys)


def test_checker_names_what_vllm_would_refuse(fake_runs, tmp_path):
    source = fake_runs["germany"] / "adapter"
    broken = tmp_path / "adapter"
    broken.mkdir()
    config = json.loads((source / "adapter_config.json").read_text())
    del config["target_modules"]
    (broken / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(str(source / "adapter_model.safetensors"))
    # keys with the adapter name inside (what saving a raw state dict would give) are not loadable
    save_file({key.replace(".lora_A.weight", ".lora_A.default.weight"): value.contiguous() for key, value in tensors.items()}, str(broken / "adapter_model.safetensors"))
    problems = vllm_adapter_problems(broken)
    assert any("target_modules" in p for p in problems)
    assert any("tensor names" in p for p in problems)
    (broken / "adapter_model.safetensors").unlink()
    torch.save(tensors, broken / "adapter_model.bin")
    assert any("safetensors" in p for p in vllm_adapter_problems(broken))
    assert vllm_adapter_problems(tmp_path / "nowhere") != []
