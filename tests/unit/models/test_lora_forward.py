"""The fused LoRA forward gives PEFT's outputs and gradients, and stays a PEFT layer in every other way."""

from __future__ import annotations

import copy

import pytest
import torch

from tunelab.config import RunConfig
from tunelab.models.adapters import apply_method
from tunelab.models.lora_forward import FusedLoraLinear, fuse_lora_forward


def peft_pair(model, dropout: float = 0.0):
    """Two identical LoRA models: PEFT's own forward, and the fused one. lora_B is random (PEFT starts it at
    zero, which would hide any error in the low-rank path)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    plain = get_peft_model(model, config)
    torch.manual_seed(1)
    for name, parameter in plain.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)
    fused = copy.deepcopy(plain)
    assert fuse_lora_forward(fused) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    return plain, fused


def loss_and_grads(model, ids: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach(), out.loss.detach(), grads


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_fused_forward_matches_peft_outputs_loss_and_every_gradient(tiny_model, tiny_tokenizer, dropout):
    plain, fused = peft_pair(tiny_model, dropout)
    plain.train()
    fused.train()
    ids = torch.randint(3, len(tiny_tokenizer), (3, 11))
    logits_a, loss_a, grads_a = loss_and_grads(plain, ids)
    logits_b, loss_b, grads_b = loss_and_grads(fused, ids)
    assert torch.allclose(logits_a, logits_b, atol=1e-5)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == 28
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4), name


def test_the_fast_path_runs_and_its_result_differs_from_the_base_layer(tiny_model):
    _, fused = peft_pair(tiny_model)
    layer = next(m for m in fused.modules() if isinstance(m, FusedLoraLinear))
    x = torch.randn(2, 5, layer.in_features)
    calls = []
    original = torch.Tensor.addmm_
    try:
        torch.Tensor.addmm_ = lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
        out = layer(x)
    finally:
        torch.Tensor.addmm_ = original
    assert calls == [1]
    expected = layer.base_layer(x) + layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, layer.base_layer(x), atol=1e-3)


def test_disabled_adapter_merge_and_save_behave_as_peft(tiny_model, tiny_tokenizer, tmp_path):
    base = copy.deepcopy(tiny_model)
    plain, fused = peft_pair(tiny_model)
    ids = torch.randint(3, len(tiny_tokenizer), (2, 7))
    with torch.no_grad(), fused.disable_adapter():
        assert torch.allclose(fused(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-5)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    fused.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    with torch.no_grad():
        expected = plain(input_ids=ids).logits
        merged = fused.merge_and_unload()
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)


def test_apply_method_gives_lora_runs_the_fused_layers(tiny_model):
    model = apply_method(tiny_model, RunConfig.model_validate({"task": "sft", "data": {"train": "x.jsonl"}}))
    kinds = {type(m) for m in model.modules() if type(m).__name__ in ("Linear", "FusedLoraLinear") and hasattr(m, "lora_A")}
    assert kinds == {FusedLoraLinear}


def test_under_autocast_over_bf16_base_weights_the_fused_path_runs_and_matches_peft(tiny_model, tiny_tokenizer):
    """bf16 training: frozen weights in bf16, adapters in fp32, bf16 autocast. The fused GEMM runs there too
    (it used to hand every such call to PEFT) and gives PEFT's loss and gradients to bf16 rounding."""
    from tunelab.models.adapters import trained_in_fp32

    plain, fused = peft_pair(tiny_model.to(torch.bfloat16))
    for model in (plain, fused):
        trained_in_fp32(model)
        model.train()
    assert {p.dtype for n, p in fused.named_parameters() if "lora_" in n} == {torch.float32}
    ids = torch.randint(3, len(tiny_tokenizer), (3, 11))
    calls = []
    original = torch.Tensor.addmm_
    try:
        torch.Tensor.addmm_ = lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits_b, loss_b, grads_b = loss_and_grads(fused, ids)
    finally:
        torch.Tensor.addmm_ = original
    assert len(calls) == 14  # every adapted layer took the fused path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits_a, loss_a, grads_a = loss_and_grads(plain, ids)
    torch.testing.assert_close(loss_b, loss_a, rtol=2e-2, atol=2e-2)
    for name in grads_a:
        assert grads_b[name].dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(grads_a[name].flatten(), grads_b[name].flatten(), dim=0)
        assert cosine > 0.99, name
