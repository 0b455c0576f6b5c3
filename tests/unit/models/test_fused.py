"""The compiled elementwise kernels (``train.compile: elementwise``) compute what the eager blocks compute."""

from __future__ import annotations

import copy

import pytest
import torch

from tunelab.models.fused import fuse_elementwise, rms_norm, silu_mul


def _loss_and_grads(model, input_ids, autocast: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        hidden = model.model(input_ids=input_ids).last_hidden_state
    loss = hidden.float().pow(2).mean()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_fused_blocks_give_the_same_outputs_and_gradients(tiny_model, autocast, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    eager = tiny_model
    fused = copy.deepcopy(eager)
    layers = len(eager.model.layers)
    assert fuse_elementwise(fused, torch.bfloat16 if autocast else None) == 3 * layers  # each block's MLP and two norms
    assert type(fused.model.norm) is type(eager.model.norm)
    assert fuse_elementwise(fused) == 0  # applying it twice changes nothing
    assert list(fused.state_dict()) == list(eager.state_dict())  # saved under the same names
    input_ids = torch.randint(0, eager.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    loss, grads = _loss_and_grads(eager, input_ids, autocast)
    fused_loss, fused_grads = _loss_and_grads(fused, input_ids, autocast)
    tolerance = {"rtol": 2e-2, "atol": 2e-3} if autocast else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(fused_loss, loss, **tolerance)
    assert fused_grads.keys() == grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, **tolerance, msg=name)


def test_the_functions_are_the_eager_formulas():
    gate, up = torch.randn(3, 5), torch.randn(3, 5)
    torch.testing.assert_close(silu_mul(gate, up), torch.nn.functional.silu(gate) * up)
    hidden, weight = torch.randn(2, 4, 8), torch.randn(8)
    expected = weight * (hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-5))
    torch.testing.assert_close(rms_norm(hidden, weight, 1e-5, torch.float32), expected)
    assert rms_norm(hidden, weight, 1e-5, torch.bfloat16).dtype == torch.bfloat16


def test_a_machine_where_compiling_fails_trains_eagerly(tiny_model, monkeypatch):
    from tunelab.models import fused as fused_module

    def broken(function):
        def call(*args, **kwargs):
            raise RuntimeError("InductorError: no C++ compiler")

        return call

    monkeypatch.setattr(fused_module, "compiled", broken)
    classes = [type(m) for m in tiny_model.modules()]
    assert fuse_elementwise(tiny_model) == 0
    assert [type(m) for m in tiny_model.modules()] == classes


def test_auto_fuses_on_a_cpu_and_not_on_a_gpu(tiny_model, tmp_path, monkeypatch):
    from tunelab.models.fused import compile_model

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    assert compile_model(copy.deepcopy(tiny_model), "auto", device="cuda") == 0
    assert compile_model(copy.deepcopy(tiny_model), False) == 0
    assert compile_model(tiny_model, "auto", device="cpu") == 3 * len(tiny_model.model.layers)
