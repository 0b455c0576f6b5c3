"""Frozen weights in the compute dtype, trained ones in fp32; QLoRA (a 4-bit NF4 base) trains, resumes and merges."""

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import assert_same_training, classify_records, records_split, sft_records, tiny_config

from tunelab.config import parse_config
from tunelab.models.adapters import apply_method
from tunelab.models.loader import weights_dtype
from tunelab.runs import RunFolder, load_for_training
from tunelab.tasks import run_training
from tunelab.train.run import start_run


def _loaded_and_applied(config, tmp_path):
    session = start_run(config, records_split(sft_records(6)), run_dir=tmp_path / "run")
    model = apply_method(session.load_model().model, config)
    return session, model


@pytest.mark.parametrize("method, extra", [("lora", {}), ("freeze", {"trainable_layers": [-1]}), ("full", {})])
def test_under_bf16_frozen_weights_are_bf16_and_trained_ones_fp32(method, extra, tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, method=method, precision="bf16", **extra)
    session, model = _loaded_and_applied(config, tmp_path)
    assert session.precision == "bf16"
    trained = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    assert trained and set(trained.values()) == {torch.float32}
    if method == "full":
        assert not frozen  # every weight is a master weight: fp32
    else:
        assert frozen and set(frozen.values()) == {torch.bfloat16}, frozen


def test_under_fp32_every_weight_stays_fp32(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, precision="fp32")
    _, model = _loaded_and_applied(config, tmp_path)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert weights_dtype("lora", "fp32") == weights_dtype("full", "bf16") == "float32"


def test_a_bf16_run_trains_its_adapter_and_keeps_optimizer_state_in_fp32(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, precision="bf16", max_steps=8, lr=2e-2, save_every=8, log_every=1)
    result = run_training(config, records_split(sft_records(8)), run_dir=tmp_path / "run")
    run = RunFolder(tmp_path / "run")
    assert result.precision == "bf16"
    losses = [r["loss"] for r in map(__import__("json").loads, run.metrics.read_text().splitlines()) if "loss" in r]
    assert losses[-1] < losses[0], losses
    checkpoint = run.checkpoints / "step-8"
    assert {t.dtype for t in load_file(str(checkpoint / "trainable.safetensors")).values()} == {torch.float32}
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=False)
    moments = [v for state in optimizer["state"].values() for k, v in state.items() if k in ("exp_avg", "exp_avg_sq")]
    assert moments and {m.dtype for m in moments} == {torch.float32}
    adapter = load_file(str(run.adapter / "adapter_model.safetensors"))
    assert any(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)  # lora_B starts at zero


bitsandbytes = pytest.importorskip("bitsandbytes", reason="qlora needs bitsandbytes (pip install 'tunelab[qlora]')")


def test_qlora_loads_a_4bit_nf4_base_with_double_quantization_and_fp32_adapters(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, method="qlora", precision="bf16")
    loaded = load_for_training(config, "bf16")
    layer = loaded.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bitsandbytes.nn.Linear4bit)
    assert layer.weight.quant_state.quant_type == "nf4" and layer.weight.quant_state.nested  # double quantization
    assert layer.compute_dtype == torch.bfloat16
    model = apply_method(loaded.model, config)
    trained = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained) and set(trained.values()) == {torch.float32}
    assert {p.dtype for n, p in model.named_parameters() if not p.requires_grad} <= {torch.bfloat16, torch.uint8}


def test_qlora_trains_every_adapter_weight_and_the_loss_falls(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, method="qlora", precision="bf16", max_steps=12, lr=5e-3, log_every=1)
    result = run_training(config, records_split(sft_records(8)), run_dir=tmp_path / "run")
    run = RunFolder(tmp_path / "run")
    losses = [r["loss"] for r in map(__import__("json").loads, run.metrics.read_text().splitlines()) if "loss" in r]
    assert result.method == "qlora" and losses[-1] < losses[0], losses
    adapter = load_file(str(run.adapter / "adapter_model.safetensors"))
    assert all(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name) and len(adapter) == 28


def test_qlora_resumed_after_an_interruption_ends_where_an_uninterrupted_run_ends(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, method="qlora", precision="bf16", max_steps=6, save_every=3, lr=1e-2, lora={"dropout": 0.1})
    split = records_split(sft_records(12))
    run_training(config, split, run_dir=tmp_path / "a")

    def stop_after_the_first_checkpoint(progress) -> None:
        if progress.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(config, split, run_dir=tmp_path / "b", progress=stop_after_the_first_checkpoint)
    assert not (tmp_path / "b" / "adapter").exists()
    seen = []
    run_training(config, split, run_dir=tmp_path / "b", resume=True, progress=lambda p: seen.append(p.step))
    assert seen[0] == 4  # continued after step 3
    assert_same_training(tmp_path / "a", tmp_path / "b")


def test_a_qlora_classify_run_merges_into_a_plain_bf16_model_that_scores_as_the_run(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunelab.models.heads import causal_lm_of, label_logits
    from tunelab.runs import export_folder, load_run

    config = tiny_config(tiny_model_dir, task="classify", method="qlora", precision="bf16", max_steps=4, lr=2e-2)
    run_training(config, records_split(classify_records(12), classify_records(6)), run_dir=tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    assert isinstance(loaded.model.base_model.model.model.layers[0].mlp.up_proj.base_layer, bitsandbytes.nn.Linear4bit)
    export_folder(tmp_path / "run", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert merged.dtype == torch.bfloat16 and not hasattr(merged.config, "quantization_config")
    columns = torch.tensor(loaded.label_map.token_ids)
    ids = torch.randint(3, 300, (2, 9))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = causal_lm_of(loaded.model).get_decoder()(input_ids=ids).last_hidden_state[:, -1]
        run_scores = label_logits(loaded.model, hidden, columns, loaded.label_head).float()
        merged_scores = merged(input_ids=ids).logits[:, -1, columns].float()
    # Merged into the dequantized NF4 weights the adapter was trained over: equal to bf16 rounding.
    torch.testing.assert_close(merged_scores, run_scores, rtol=0.05, atol=0.05)


def test_qlora_is_a_method_with_lora_defaults():
    config = parse_config({"task": "classify", "train": {"method": "qlora"}})
    assert config.train.method == "qlora" and config.train.lr == 1e-3
    assert parse_config({"task": "sft", "train": {"method": "qlora"}}).train.lr == 2e-4


def test_a_validation_pass_leaves_qlora_gradients_as_they_were(tiny_model_dir, tiny_tokenizer):
    """bitsandbytes repacks a 4-bit layer for its CPU inference kernel on an eval-mode forward without
    gradients (the loop's validation) and then computes with a kernel that has no backward: the steps after
    the first validation would pass no gradient through the frozen 4-bit weights. The gradients of the
    lowest layer's adapter after a validation-like pass must equal those before it."""
    config = tiny_config(tiny_model_dir, method="qlora", precision="bf16")
    model = apply_method(load_for_training(config, "bf16").model, config)
    ids = torch.randint(3, len(tiny_tokenizer), (2, 12))
    lowest = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight

    def gradient() -> torch.Tensor:
        model.train()
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, labels=ids).loss.backward()
        return lowest.grad.clone()

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # lora_B starts at zero, which would give layer 0 no gradient at all
    before = gradient()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids)
    after = gradient()
    assert before.abs().sum() > 0
    torch.testing.assert_close(after, before)
