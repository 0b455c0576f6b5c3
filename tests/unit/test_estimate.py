"""The estimate: FLOP formulas, token plans, memory, money and budget against hand-computed numbers."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tunelab.config import parse_config
from tunelab.errors import ConfigError, DataError
from tunelab.estimate import (
    CloudPrice,
    GPUSpec,
    ModelFacts,
    PriceTable,
    calibrate,
    count_tokens_from_files,
    estimate_error,
    estimate_run,
    load_price_table,
    model_facts,
    plan_flops,
    plan_memory,
    plan_tokens,
)
from tunelab.estimate.plan import cheap_baseline_seconds

# A made-up model: 6,000 body weights, d_model 16, vocab 100, 2 layers, a 500-parameter adapter.
FACTS = ModelFacts(
    total_params=10_000, body_params=6_000, n_layers=2, d_model=16, d_kv=8, intermediate=32, vocab=100, lora_params=500
)
PRICES = PriceTable(
    table_date="2025-06",
    gpus=[GPUSpec("Toy", bf16_tflops=1.0, memory_gib=1, usd_per_hour=3.6), GPUSpec("Tiny", 2.0, 0.000001, 1.0)],
    cloud_fine_tuning=[CloudPrice("Hosted", "mini", 2.0, "as published 2025-06")],
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Calibrations are cached under the user cache: each test gets its own, empty one.
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))


def _config(**sections):
    base = {"task": "sft", "data": {"max_length": 64}, "train": {"batch_size": 2, "epochs": 2, "lr": 1e-4}}
    for key, value in sections.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return parse_config(base)


def test_packed_sft_tokens_and_lora_flops():
    config = _config()
    truncated = plan_tokens(config, [10, 100])
    assert (truncated.real_tokens_per_epoch, truncated.truncated_examples) == (10 + 64, 1)  # cut to max_length
    tokens = plan_tokens(config, [30, 30, 30, 30])
    # A step takes batch_size = 2 examples (the loop's schedule): 2 steps an epoch, 2 epochs. Each
    # micro-batch's two examples share one packed row of 60 tokens (a row holds max_length = 64).
    assert (tokens.real_tokens_per_epoch, tokens.rows_per_epoch, tokens.processed_tokens_per_epoch) == (120, 2, 120)
    assert (tokens.optimizer_steps, tokens.train_tokens, tokens.seq_len, tokens.packed) == (4, 240, 64, True)
    assert tokens.optimizer_steps == config.train.schedule(4).total_steps
    flops = plan_flops(config, FACTS, tokens)
    assert flops.matmul_params == 6_000 + 16 * 100
    assert flops.dense_flops_per_token == 4 * 7_600 + 6 * 500  # LoRA: 4N + 6 N_adapter
    assert flops.attention_flops_per_token == 6 * 2 * 64 * 16
    assert flops.train_flops == (33_400 + 12_288) * 240
    assert flops.trainable_params == 500


def test_full_freeze_classify_and_preference_flops():
    tokens = plan_tokens(_config(), [64])
    full = plan_flops(_config(train={"method": "full"}), FACTS, tokens)
    assert full.dense_flops_per_token == 6 * 7_600 and full.trainable_params == 10_000
    freeze = plan_flops(_config(train={"method": "freeze", "trainable_layers": [-1]}), FACTS, tokens)
    assert freeze.trainable_params == 3_000 and freeze.dense_flops_per_token == 4 * 7_600 + 2 * 3_000
    # classify: the head computes only the label columns.
    classify = _config(task="classify")
    classify_flops = plan_flops(classify, FACTS, plan_tokens(classify, [64]), n_labels=4)
    assert classify_flops.matmul_params == 6_000 + 16 * 4
    # Training also scores the prompts' next tokens over the vocabulary (classify.prompt_lm_weight, on by default):
    # the head's forward and activation gradients; evaluation still computes the label columns only.
    plain = plan_flops(_config(task="classify", classify={"prompt_lm_weight": 0}), FACTS, plan_tokens(classify, [64]), n_labels=4)
    assert classify_flops.dense_flops_per_token == plain.dense_flops_per_token + 4 * 16 * (100 - 4)
    assert classify_flops.eval_flops == plain.eval_flops
    preference = plan_flops(_config(task="preference"), FACTS, tokens)
    assert preference.dense_flops_per_token == 6 * 7_600 + 6 * 500  # + the reference forward, 2N


def test_unpacked_batches_are_padded_to_their_longest():
    config = _config(task="classify", train={"batch_size": 5, "packing": False})
    tokens = plan_tokens(config, [5, 9, 3, 7, 11])
    assert tokens.packed is False
    assert tokens.real_tokens_per_epoch == 35 and tokens.processed_tokens_per_epoch == 55  # one batch, padded to 11
    assert tokens.seq_len == 16  # rounded up to a multiple of 8
    single = plan_tokens(_config(task="classify", train={"batch_size": 1}), [5, 9, 3, 7, 11])
    assert single.processed_tokens_per_epoch == 35 and single.optimizer_steps == 10


def test_packing_honours_pack_tokens_and_classify_packs_too():
    lengths = [30, 30, 30, 30]
    default = plan_tokens(_config(task="classify", train={"batch_size": 4}), lengths)
    assert default.packed and default.rows_per_epoch == 2 and default.seq_len == 64  # two rows of 60 within 64
    longer = plan_tokens(_config(task="classify", train={"batch_size": 4, "pack_tokens": 128}), lengths)
    assert longer.rows_per_epoch == 1 and longer.processed_tokens_per_epoch == 120 and longer.seq_len == 120
    assert longer.optimizer_steps == default.optimizer_steps == 2  # packing never changes the step count


def test_a_shared_classify_prefix_is_processed_once_per_micro_batch():
    config = _config(task="classify", train={"batch_size": 4, "packing": False})
    full = plan_tokens(config, [30, 40, 50, 60], validation_token_counts=[30, 30])
    reused = plan_tokens(config, [30, 40, 50, 60], validation_token_counts=[30, 30], shared_prefix=20)
    assert full.processed_tokens_per_epoch == 4 * 60
    # Rows hold the suffixes (10..40 tokens, padded to 40), and the prefix runs once: 4 * 40 + 20.
    assert reused.processed_tokens_per_epoch == 4 * 40 + 20
    assert reused.real_tokens_per_epoch == full.real_tokens_per_epoch == 180  # the user's tokens, prefix included
    assert reused.validation_tokens == full.validation_tokens - 20 * full.validations  # 2 examples, 1 micro-batch


def test_the_calibration_step_holds_the_rows_of_one_micro_batch_and_evaluation_runs_the_prefix_once():
    # 8 classify prompts of 60 tokens that share 40 pack their 20-token suffixes into one row: a step of the
    # run is one row, not 8 (a calibration of 6 rows timed such a BANKING77 run 2.2x too fast).
    packed = plan_tokens(_config(task="classify", data={"max_length": 256}, train={"batch_size": 8}), [60] * 64,
                         test_token_counts=[60] * 10, shared_prefix=40)  # fmt: skip
    assert packed.micro_batches_per_epoch == 8 and packed.rows_per_epoch == 8 and packed.rows_per_micro_batch == 1
    assert packed.test_tokens == 10 * 60 - 9 * 40  # one KV cache of the prefix for the whole test set
    unpacked = plan_tokens(_config(train={"batch_size": 4, "packing": False}), [30] * 10)
    assert unpacked.micro_batches_per_epoch == 3 and unpacked.rows_per_micro_batch == 3  # 4 + 4 + 2 rows


def test_schedule_is_the_loops_with_max_steps_and_validations():
    config = _config(train={"batch_size": 2, "grad_accum": 2, "epochs": 3, "warmup_ratio": 0.1})
    schedule = config.train.schedule(10)
    # ceil(10 / 4) = 3 steps an epoch, 9 in all; validation every ceil(9 / 5) = 2 steps and at the end.
    assert (schedule.total_steps, schedule.steps_per_epoch, schedule.eval_every, schedule.warmup_steps) == (9, 3, 2, 1)
    assert [s for s in range(1, 10) if schedule.validates_at(s)] == [2, 4, 6, 8, 9] and schedule.validations == 5
    assert config.train.schedule(10, world_size=2).total_steps == 6
    capped = _config(train={"max_steps": 5}).train.schedule(10)
    assert capped.total_steps == 5 and capped.epochs_run == 1.0


def test_text_windows_and_max_steps():
    config = _config(task="text", data={"max_length": 64, "stride": 32}, train={"epochs": 1, "batch_size": 1})
    tokens = plan_tokens(config, [200, 10])
    # 200 tokens in windows of 64 every 32: ceil((200-64)/32) + 1 = 6 windows; plus the short document.
    assert tokens.real_tokens_per_epoch == 6 * 64 + 10
    limited = plan_tokens(_config(train={"max_steps": 1, "batch_size": 1, "epochs": 4}), [64, 64])
    assert limited.optimizer_steps == 1 and limited.train_tokens == 64
    with pytest.raises(DataError):
        plan_tokens(config, [])


def test_validation_and_eval_tokens():
    config = _config(eval={"max_new_tokens": 10})
    tokens = plan_tokens(config, [64, 64, 64, 64], validation_token_counts=[10, 10], test_token_counts=[5, 6, 7])
    assert tokens.optimizer_steps == 4 and tokens.validations == 4  # every max(1, 4 // 5) = 1 step
    assert tokens.validation_tokens == 20 * 4
    assert tokens.test_tokens == 18 + 3 * 10  # sft: prompts + at most max_new_tokens generated each
    flops = plan_flops(config, FACTS, tokens)
    assert flops.validation_flops == (2 * 7_600 + 2 * 2 * 64 * 16) * 80


def test_memory_arithmetic():
    config = _config()
    tokens = plan_tokens(config, [64])
    memory = plan_memory(config, FACTS, tokens, "fp32", trainable=500)
    # LoRA in fp32: the 10,000 base weights and the 500 adapter weights at 4 bytes.
    assert (memory.weights, memory.autocast_copies, memory.gradients, memory.optimizer) == (42_000, 0, 2_000, 4_000)
    per_token_layer = (8 * 16 + 4 * 8 + 4 * 32 + 6 * 16 + 32) * 4
    assert memory.activations == 2 * 64 * 2 * per_token_layer
    assert memory.logits == 2 * 64 * 100 * 4 * 2
    assert memory.total == 42_000 + 2_000 + 4_000 + memory.activations + memory.logits
    bf16 = plan_memory(config, FACTS, tokens, "bf16", trainable=500)
    # bf16: the frozen base in bf16, the adapter fp32 (autocast keeps a bf16 copy of it), not the other way round.
    assert (bf16.weights, bf16.autocast_copies) == (2 * 10_000 + 4 * 500, 2 * 500)
    assert bf16.activations == memory.activations // 2
    full = plan_memory(_config(train={"method": "full"}), FACTS, tokens, "bf16", trainable=10_000)
    assert (full.weights, full.autocast_copies) == (40_000, 12_000)  # fp32 master weights, bf16 copies of the body
    frozen = plan_memory(_config(train={"method": "freeze", "trainable_layers": [-1]}), FACTS, tokens, "bf16", trainable=3_000)
    assert (frozen.weights, frozen.autocast_copies) == (2 * 7_000 + 4 * 3_000, 2 * 3_000)
    qlora = plan_memory(_config(train={"method": "qlora"}), FACTS, tokens, "bf16", trainable=500)
    # 6,000 body weights at 4.127 bits, the 4,000 embedding weights in bf16, the adapter fp32.
    assert qlora.weights == int(6_000 * 4.126953125 / 8 + 2 * 4_000 + 4 * 500)
    assert qlora.activations == bf16.activations and qlora.total < bf16.total
    checkpointed = plan_memory(_config(train={"gradient_checkpointing": True}), FACTS, tokens, "fp32", trainable=500)
    assert checkpointed.activations == 2 * 64 * 2 * 16 * 4 + 2 * 64 * (8 * 16 + 4 * 8 + 4 * 32) * 4
    assert plan_memory(_config(task="classify"), FACTS, tokens, "fp32", trainable=500).logits == 0
    # Activations are one pass's: train.max_pass_tokens=64 runs the 2 x 64-token micro-batch as 2 passes.
    halved = plan_memory(_config(train={"max_pass_tokens": 64}), FACTS, tokens, "fp32", trainable=500)
    assert halved.activations == 1 * 64 * 2 * per_token_layer
    assert plan_memory(_config(train={"max_pass_tokens": 16}), FACTS, tokens, "fp32", trainable=500).activations == halved.activations


def test_gpu_time_money_cloud_and_fit():
    config = _config(budget={"utilization": 0.5})
    result = estimate_run(config, [30, 30, 30, 30], FACTS, prices=PRICES, available_bytes=10**9, precision="fp32")
    toy, tiny = result.gpus
    assert toy.seconds == pytest.approx(result.flops.train_flops / 0.5e12)
    assert toy.usd == pytest.approx(toy.seconds / 3600 * 3.6)
    assert toy.fits and not tiny.fits
    assert result.cloud[0].usd == pytest.approx(240 / 1e6 * 2.0)
    assert result.memory.fits is True and result.seconds is None
    assert json.loads(json.dumps(result.as_dict()))["tokens"]["train_tokens"] == 240


def test_a_launch_on_several_processes_is_estimated_with_its_global_batch():
    """`tunelab run --launch "--num_processes 2"` trains steps of 2 x batch_size examples: the estimate priced steps of
    batch_size (an epochs run twice the steps it makes, a max_steps run half the tokens it trains)."""
    epochs = _config(train={"batch_size": 2, "epochs": 2})
    one, two = (plan_tokens(epochs, [30] * 8, processes=n) for n in (1, 2))
    assert (one.optimizer_steps, two.optimizer_steps) == (8, 4) and two.train_tokens == one.train_tokens and two.processes == 2
    steps = _config(train={"batch_size": 2, "max_steps": 4})
    one, two = (plan_tokens(steps, [30] * 16, processes=n) for n in (1, 2))
    assert one.optimizer_steps == two.optimizer_steps == 4 and two.train_tokens == 2 * one.train_tokens
    # On 2 GPUs of a kind: the training is shared between them, each is billed.
    single, double = (estimate_run(epochs, [30] * 8, FACTS, prices=PRICES, precision="fp32", processes=n) for n in (1, 2))
    assert double.gpus[0].seconds == pytest.approx(single.gpus[0].seconds / 2)
    assert double.gpus[0].usd == pytest.approx(single.gpus[0].usd)


def test_budget_flags():
    over_hours = estimate_run(
        _config(budget={"gpu": "toy", "max_hours": 1e-12, "max_usd": 1e-15}), [64], FACTS, prices=PRICES, available_bytes=0
    )
    assert over_hours.budget.over and len(over_hours.budget.reasons) == 2
    # A tiny run over a tiny limit says both numbers, never "$0.00 exceeds 1e-15" or "0.00 h".
    assert not re.search(r"\$0\.00(?!\d)| 0\.00 h", " ".join(over_hours.budget.reasons)), over_hours.budget.reasons
    within = estimate_run(_config(budget={"gpu": "Toy", "max_hours": 1.0}), [64], FACTS, prices=PRICES, available_bytes=0)
    assert not within.budget.over and within.memory.fits is False
    unpriced = estimate_run(_config(budget={"max_usd": 1.0}), [64], FACTS, prices=PRICES)
    assert not unpriced.budget.over and "budget.gpu" in unpriced.budget.notes[0]
    with pytest.raises(ConfigError, match="unknown GPU 'V100'"):
        estimate_run(_config(budget={"gpu": "V100"}), [64], FACTS, prices=PRICES)


def test_estimate_error():
    assert estimate_error(100.0, 120.0) == {
        "step": "train", "estimated_s": 100.0, "actual_s": 120.0, "error": pytest.approx(0.2), "within_25_percent": True
    }
    assert estimate_error({"seconds": {"train": 100.0}}, 130.0)["within_25_percent"] is False
    assert estimate_error({"seconds": {"train": 100.0}}, 80.0)["error"] == pytest.approx(-0.2)
    with pytest.raises(ValueError):
        estimate_error({"seconds": None}, 10.0)


def test_bundled_price_table_is_complete():
    table = load_price_table()
    names = {gpu.name for gpu in table.gpus}
    assert {"A10G", "L4", "A100-40GB", "A100-80GB", "H100-SXM", "H200"} <= names
    assert all(gpu.bf16_tflops > 0 and gpu.usd_per_hour > 0 and gpu.source for gpu in table.gpus)
    assert table.cloud_fine_tuning and all("verify" in price.published for price in table.cloud_fine_tuning)


def test_model_facts_of_the_tiny_llama(tiny_model):
    facts = model_facts(tiny_model, lora_r=16, target_modules="all-linear")
    per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3 + 2 * 64
    assert facts.body_params == 2 * per_layer + 64
    assert facts.total_params == facts.body_params + facts.vocab * 64  # tied embeddings: counted once
    assert (facts.n_layers, facts.d_model, facts.d_kv, facts.intermediate) == (2, 64, 32, 128)
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_model, LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert facts.lora_params == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert model_facts(build_meta_copy(tiny_model), 4, ["q_proj", "v_proj"]).lora_params == 2 * 4 * (128 + 96)


def build_meta_copy(model):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model.config)


def test_a_cpu_calibration_times_only_the_rows_a_full_speed_step_needs():
    from tunelab.estimate.calibrate import CPU_CALIBRATION_TOKENS, calibration_rows

    assert calibration_rows(8, 64, "cpu") == 8  # 512 tokens: the whole batch
    assert calibration_rows(8, 512, "cpu") == CPU_CALIBRATION_TOKENS // 512  # 2 rows, not 8
    assert calibration_rows(8, 472, "cpu") == 2  # 944 tokens: a timed step never outgrows one of the loop's CPU passes
    assert calibration_rows(8, 4096, "cpu") == 1
    assert calibration_rows(8, 512, "cuda") == 8  # a GPU's speed depends on the batch


def test_calibration_trains_real_steps(tiny_model_dir, tiny_model):
    config = parse_config(
        {"task": "sft", "model": str(tiny_model_dir), "train": {"batch_size": 2, "precision": "fp32"}, "lora": {"r": 4}}
    )
    calibration = calibrate(config, 16, model=tiny_model, steps=2)
    assert len(calibration.step_seconds) == 2 and calibration.warmup_seconds > 0
    assert calibration.tokens_per_second == pytest.approx(2 * 16 / calibration.seconds_per_step)
    # LoRA B matrices start at zero: after AdamW steps they must have moved.
    lora_b = [p for name, p in tiny_model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    # Loading by name (the tiny model folder) and a classify step also work.
    classify = parse_config({"task": "classify", "model": str(tiny_model_dir), "train": {"batch_size": 2, "method": "full"}})
    assert calibrate(classify, 8, steps=1, n_labels=3).seq_len == 8
    # With a shared prompt prefix the timed step runs it once and the rows on top of it, as training does.
    lora = parse_config({"task": "classify", "model": str(tiny_model_dir), "train": {"batch_size": 2}, "lora": {"r": 4}})
    reused = calibrate(lora, 8, steps=1, n_labels=3, shared_prefix=20, use_cache=False)
    assert reused.seq_len == 8 and len(reused.step_seconds) == 1


def test_calibration_stops_timing_once_the_timed_steps_add_up_to_the_budget(tiny_model_dir, tiny_model):
    config = parse_config(
        {"task": "sft", "model": str(tiny_model_dir), "train": {"batch_size": 2, "precision": "fp32"}, "lora": {"r": 4}}
    )
    # A budget any step exceeds: one timed step after the warm-up, however many are allowed.
    assert len(calibrate(config, 16, model=tiny_model, steps=3, timed_seconds=0.0, use_cache=False).step_seconds) == 1
    # No budget: every allowed step is timed.
    assert len(calibrate(config, 16, model=tiny_model, steps=3, timed_seconds=None, use_cache=False).step_seconds) == 3


def test_an_sft_calibration_runs_the_head_only_on_the_share_of_positions_that_carry_loss(tiny_model_dir, tiny_model):
    from tunelab.models.heads import causal_lm_of

    config = parse_config({"task": "sft", "model": str(tiny_model_dir), "train": {"batch_size": 2, "precision": "fp32"}, "lora": {"r": 4}})
    rows = []
    head = causal_lm_of(tiny_model).get_output_embeddings()
    handle = head.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    try:
        calibrate(config, 16, model=tiny_model, steps=1, scored_share=0.25, use_cache=False)
    finally:
        handle.remove()
    # Evaluation's timed forward (the head on each row's last position), then the warm-up and the timed step: 2 rows x
    # 4 of their 16 positions.
    assert rows == [2, 2 * 4, 2 * 4]


def test_the_sft_scored_share_is_the_answers_share_of_the_tokens_and_in_the_calibration_key(
    tmp_path, tiny_model_dir, tiny_tokenizer, tiny_model, monkeypatch
):
    from tunelab.data.split import make_split
    from tunelab.data.tokenize import tokenize_sft
    from tunelab.estimate.calibrate import calibration_key

    train = tmp_path / "train.jsonl"
    rows = [{"prompt": f"What is the leave policy number {i}?", "completion": "Twenty days a year." * (1 + i % 3)} for i in range(20)]
    train.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    config = parse_config({"task": "sft", "model": str(tiny_model_dir), "data": {"train": str(train), "test_size": 0.2, "validation_size": 0.1}})
    counts = count_tokens_from_files(config, tiny_tokenizer)
    examples = [tokenize_sft(r, tiny_tokenizer, config.data.max_length) for r in make_split(config).train]
    expected = sum(e.trained_tokens for e in examples) / sum(len(e.input_ids) for e in examples)
    assert 0 < counts.scored_share < 1 and counts.scored_share == pytest.approx(expected)
    arguments = {"device": "cpu", "precision": "fp32", "threads": 2, "n_labels": 8, "steps": 3}
    assert calibration_key(config, 64, **arguments, scored_share=0.3) != calibration_key(config, 64, **arguments)
    # The estimate step hands that share to its calibration.
    import types

    from tunelab import estimate as estimate_package

    seen = {}
    monkeypatch.setattr(estimate_package, "calibrate", lambda *args, **kwargs: seen.update(kwargs))
    estimate_package.estimate_for_split(config, make_split(config), types.SimpleNamespace(tokenizer=tiny_tokenizer, model=tiny_model))
    assert seen["scored_share"] == pytest.approx(expected)
    planned = plan_tokens(config, counts.train)
    assert seen["rows"] == planned.rows_per_micro_batch and seen["machine"] is not None  # the run's step, the machine now


def _machine(others_busy: float | None):
    from tunelab.runtime import CpuState

    return CpuState(cpus=2, physical_cores=2, others_busy=others_busy)


def test_a_calibration_is_cached_and_read_back_without_a_model(tiny_model_dir, tiny_model, monkeypatch):
    from tunelab import models

    quiet = _machine(0.1)  # the same quiet machine throughout
    config = parse_config({"task": "sft", "model": str(tiny_model_dir), "train": {"batch_size": 2, "precision": "fp32", "threads": 1}, "lora": {"r": 4}})
    first = calibrate(config, 16, model=tiny_model, steps=1, machine=quiet)
    assert not first.cached and first.machine == quiet and first.threads == 1
    first = calibrate(config, 16, steps=1, use_cache=False, machine=quiet)  # loads the model folder, measures, replaces the entry
    assert not first.cached

    def no_load(*args, **kwargs):
        raise AssertionError("a cached calibration must not load the model")

    monkeypatch.setattr(models.loader, "load_model", no_load)
    again = calibrate(config, 16, steps=1, machine=quiet)
    assert again.cached and again.step_seconds == first.step_seconds and again.warmup_seconds == first.warmup_seconds
    assert again.machine == quiet  # the state it was measured in comes back with it
    # A different shape is measured anew (here it would load the model: the patched loader says so).
    with pytest.raises(AssertionError, match="must not load"):
        calibrate(config, 32, steps=1, machine=quiet)


@pytest.mark.parametrize(
    "threads, measured, now, reused",
    [
        (1, 0.0, 1.0, True),   # one thread had a core to itself then and has one now
        (1, 1.0, 0.0, True),
        (2, 0.0, 0.0, True),
        (2, 0.0, 1.0, False),  # two threads measured idle say nothing about two threads beside a busy core
        (2, 1.0, 0.0, False),  # nor the other way round
        (1, 2.0, 0.0, False),  # every core was busy: the one thread shared its core then
        (1, 0.0, 2.3, False),
        (1, None, 1.0, True),  # a state not known on either side keeps the measurement
    ],
)
def test_the_calibration_load_rule(threads, measured, now, reused):
    from tunelab.estimate.calibrate import same_load

    assert same_load(_machine(measured), _machine(now), threads) is reused


def test_a_calibration_is_measured_again_when_the_load_leaves_its_threads_other_cores(tiny_model_dir, tiny_model, monkeypatch):
    idle, one_busy, full = _machine(0.0), _machine(1.0), _machine(2.0)
    one = parse_config({"task": "sft", "model": str(tiny_model_dir), "train": {"batch_size": 2, "precision": "fp32", "threads": 1}, "lora": {"r": 4}})
    calibrate(one, 24, model=tiny_model, steps=1, use_cache=False, machine=idle)
    assert calibrate(one, 24, steps=1, machine=one_busy).cached  # one thread on the free core: the measurement stands
    assert not calibrate(one, 24, steps=1, machine=full).cached  # it would share a core now: measured again
    assert calibrate(one, 24, steps=1, machine=full).cached  # and stored with the new state

    two = parse_config({"task": "sft", "model": str(tiny_model_dir), "train": {"batch_size": 2, "precision": "fp32", "threads": 2}, "lora": {"r": 4}})
    calibrate(two, 24, steps=1, use_cache=False, machine=idle)
    assert calibrate(two, 24, steps=1, machine=idle).cached
    assert not calibrate(two, 24, steps=1, machine=one_busy).cached


def test_the_calibration_and_the_estimate_run_with_the_threads_the_run_will_use(tmp_path, tiny_model_dir, tiny_model, tiny_tokenizer, monkeypatch):
    import types

    from tunelab import estimate as estimate_package
    from tunelab import runtime
    from tunelab.data.split import make_split

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = []
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *args, **kwargs: seen.append(torch.get_num_threads()))
    config = parse_config({"task": "sft", "model": str(tiny_model_dir), "train": {"batch_size": 2, "precision": "fp32"}, "lora": {"r": 4}})
    before = torch.get_num_threads()
    calibration = calibrate(config, 24, model=tiny_model, steps=1, use_cache=False, machine=_machine(1.0))
    assert calibration.threads == 1 and set(seen) == {1}  # one core busy: the run will have one thread, so has the measurement
    assert torch.get_num_threads() == before

    # The estimate states the machine and the threads: "2 cores, 1 busy, 1 thread".
    monkeypatch.setattr(runtime, "cpu_state", lambda **kwargs: _machine(1.0))
    monkeypatch.setattr(estimate_package, "calibrate", lambda *args, **kwargs: calibration)
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps({"prompt": f"question {i}?", "completion": "an answer."}) for i in range(12)) + "\n")
    config = parse_config({"task": "sft", "model": str(tiny_model_dir), "data": {"train": str(train)}})
    result = estimate_package.estimate_for_split(config, make_split(config), types.SimpleNamespace(tokenizer=tiny_tokenizer, model=tiny_model))
    assert result.threads == 1 and result.here == "2 cores, 1 busy, 1 thread"
    assert result.as_dict()["machine"]["busy"] == 1 and result.as_dict()["here"] == "2 cores, 1 busy, 1 thread"


BASE_KEY_CONFIG = {
    "task": "sft", "model": "default", "data": {"max_length": 128}, "train": {"batch_size": 4, "method": "lora", "precision": "fp32"},
    "lora": {"r": 16, "target_modules": "all-linear"},
}  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        {"train": {"batch_size": 8}},
        {"data": {"max_length": 256}},
        {"train": {"method": "full"}},
        {"task": "classify"},
        {"lora": {"r": 8}},
        {"lora": {"target_modules": ["q_proj", "v_proj"]}},
        {"train": {"threads": 1}},
        {"train": {"gradient_checkpointing": True}},
        {"model": "some/other-model"},
    ],
    ids=lambda change: json.dumps(change),
)
def test_changing_what_sets_the_speed_misses_the_calibration_cache(change):
    from tunelab.estimate.calibrate import calibration_cache_path, calibration_key

    def key(raw):
        config = parse_config(raw)
        return calibration_key(config, 64, device="cpu", precision="fp32", threads=config.train.threads or 2, n_labels=8, steps=3)

    changed = json.loads(json.dumps(BASE_KEY_CONFIG))
    for section, value in change.items():
        if isinstance(value, dict):
            changed[section] = {**changed[section], **value}
        else:
            changed[section] = value
    assert calibration_cache_path(key(changed)) != calibration_cache_path(key(BASE_KEY_CONFIG))
    assert calibration_cache_path(key(json.loads(json.dumps(BASE_KEY_CONFIG)))) == calibration_cache_path(key(BASE_KEY_CONFIG))


def test_a_shared_classify_prefix_is_in_the_calibration_key():
    from tunelab.estimate.calibrate import calibration_key

    config = parse_config({**BASE_KEY_CONFIG, "task": "classify"})
    arguments = {"device": "cpu", "precision": "fp32", "threads": 2, "n_labels": 8, "steps": 3}
    assert calibration_key(config, 64, **arguments, shared_prefix=40) != calibration_key(config, 64, **arguments)


@pytest.mark.parametrize("what", ["seq_len", "precision", "device", "versions", "cpu"])
def test_the_machine_libraries_precision_and_shape_are_in_the_calibration_key(what, monkeypatch):
    import importlib

    from tunelab import runtime

    # The package exports the function calibrate under the module's name: import the module itself.
    calibrate_module = importlib.import_module("tunelab.estimate.calibrate")

    config = parse_config(BASE_KEY_CONFIG)
    arguments = {"seq_len": 64, "device": "cpu", "precision": "fp32", "threads": 2, "n_labels": 8, "steps": 3}
    before = calibrate_module.calibration_cache_path(calibrate_module.calibration_key(config, **arguments))
    if what == "seq_len":
        arguments["seq_len"] = 128
    elif what == "precision":
        arguments["precision"] = "bf16"
    elif what == "device":
        arguments["device"] = "cuda"
    elif what == "versions":
        monkeypatch.setattr(calibrate_module, "_library_versions", lambda: {"torch": "9.9", "transformers": "9.9", "peft": "9.9"})
    else:
        monkeypatch.setattr(runtime, "cpu_model_name", lambda: "Some Other CPU")
    assert calibrate_module.calibration_cache_path(calibrate_module.calibration_key(config, **arguments)) != before


def test_token_counts_from_files_and_the_whole_estimate(tmp_path, tiny_model_dir, tiny_tokenizer):
    train = tmp_path / "train.jsonl"
    rows = [{"text": f"my card number {i} has not arrived yet", "label": ["billing", "account"][i % 2]} for i in range(20)]
    train.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    config = parse_config(
        {"task": "classify", "model": str(tiny_model_dir), "data": {"train": str(train), "test_size": 0.2, "validation_size": 0.1}}
    )
    counts = count_tokens_from_files(config, tiny_tokenizer)
    assert (len(counts.train), len(counts.test), len(counts.validation), counts.n_labels) == (14, 4, 2, 2)
    assert all(count > 10 for count in counts.train)
    (tmp_path / "bad.jsonl").write_text('{"text": "no label here"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1\b.*label"):
        count_tokens_from_files(config.model_copy(update={"data": config.data.model_copy(update={"train": str(tmp_path / "bad.jsonl")})}), tiny_tokenizer)

    from tunelab.estimate import estimate_from_config

    result = estimate_from_config(config, calibration_steps=1)
    assert result.calibration is not None and set(result.seconds) >= {"train", "validation", "baseline", "eval"}
    assert result.seconds["train"] == pytest.approx(result.tokens.train_tokens / result.calibration.tokens_per_second)


def test_the_plan_is_arithmetic_without_torch():
    import subprocess
    import sys

    code = "import sys, tunelab.estimate.plan, tunelab.estimate.prices; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_pipeline_and_cli_make_the_one_estimate_for_split(tmp_path, tiny_model_dir, monkeypatch):
    import tunelab.estimate as estimate_package
    from tunelab.tasks import pipeline

    calls = []
    real = estimate_package.estimate_for_split

    def spy(config, split, loaded, **options):
        calls.append(len(split.train))
        return real(config, split, loaded, **options)

    monkeypatch.setattr(estimate_package, "estimate_for_split", spy)
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps({"prompt": f"question {i}?", "completion": f"answer {i}."}) for i in range(20)) + "\n")
    config = parse_config({
        "task": "sft", "model": str(tiny_model_dir), "name": "one",
        "data": {"train": str(train), "max_length": 32}, "train": {"output_dir": str(tmp_path / "runs")},
    })
    context = pipeline.open_pipeline(config, calibrate=False)
    pipeline.check_step(context)
    pipeline.split_step(context)
    from_pipeline = pipeline.estimate_step(context)
    from_cli = estimate_package.estimate_from_config(config, calibrate_here=False).as_dict()
    assert len(calls) == 2 and calls[0] == calls[1]
    assert from_pipeline["tokens"] == from_cli["tokens"] and from_pipeline["flops"] == from_cli["flops"]


def test_the_monthly_cost_of_re_tuning_follows_the_monitor_cadence():
    from tunelab.config import MonitorConfig
    from tunelab.estimate.plan import GPUEstimate, plan_retune

    gpus = [GPUEstimate("big", 600.0, 0.50, True, 80, "t"), GPUEstimate("small", 1200.0, 0.20, False, 8, "t")]
    retune = plan_retune(MonitorConfig(every="6h", retrain_on="drift"), 900.0, gpus)
    assert retune.checks_per_month == 120 and retune.max_retrains_per_month == 120
    assert retune.usd_per_month == {"big": pytest.approx(60.0), "small": pytest.approx(24.0)}
    # The cheapest GPU the run fits on, not the cheapest one.
    assert retune.cheapest_gpu == "big" and retune.seconds_here_per_month == 900.0 * 120
    assert plan_retune(MonitorConfig(every="1d", retrain_on="never"), 900.0, gpus).cheapest_usd_per_month == 0.0


def test_duration_reads_as_a_person_would_and_the_ui_shows_the_same():
    from tunelab.estimate.plan import duration
    from tunelab.ui import app as ui_app

    assert [duration(s) for s in (None, 45, 119.9, 270, 7199, 7560)] == ["-", "45.0 s", "119.9 s", "4.5 min", "120.0 min", "2.1 h"]
    # One home: the web interface's templates render with the very function the CLI uses.
    assert ui_app.duration is duration


def _damaged(kind: str, stored: dict) -> str:
    if kind in ("[]", "null", "not json at all"):
        return kind
    fields = stored["calibration"]
    if kind == "calibration-list":
        stored["calibration"] = []
    elif kind == "no-steps":
        fields["step_seconds"] = []
    elif kind == "negative":
        fields["step_seconds"] = [-0.5, -0.4]
    elif kind == "nan":
        fields["step_seconds"] = [float("nan")]
    return json.dumps(stored)


@pytest.mark.parametrize("damage", ["[]", "null", "not json at all", "calibration-list", "no-steps", "negative", "nan"])
def test_a_damaged_calibration_cache_is_measured_again_never_a_negative_estimate(tiny_model_dir, tiny_model, monkeypatch, tmp_path, damage):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    quiet = _machine(0.1)
    config = parse_config({"task": "sft", "model": str(tiny_model_dir), "train": {"batch_size": 2, "precision": "fp32", "threads": 1}, "lora": {"r": 4}})
    calibrate(config, 16, model=tiny_model, steps=1, use_cache=False, machine=quiet)
    (path,) = (tmp_path / "calibration").glob("*.json")
    path.write_text(_damaged(damage, json.loads(path.read_text())))
    again = calibrate(config, 16, steps=1, machine=quiet)
    assert not again.cached  # measured anew
    assert again.step_seconds and min(again.step_seconds) > 0 and again.seconds_per_step > 0
    assert calibrate(config, 16, steps=1, machine=quiet).cached  # and stored again


def test_validation_does_not_change_the_training_micro_batches():
    """With a shared classify prefix, the validation's micro-batches overwrote the training's: `tunelab estimate
    --json` said 2 micro-batches (and 4 rows per micro-batch) for an epoch of 8 micro-batches of one row."""
    config = _config(task="classify", data={"max_length": 256}, train={"batch_size": 8})
    alone = plan_tokens(config, [60] * 64, shared_prefix=40)
    validated = plan_tokens(config, [60] * 64, validation_token_counts=[60] * 10, shared_prefix=40)
    assert validated.micro_batches_per_epoch == alone.micro_batches_per_epoch == 8
    assert validated.rows_per_micro_batch == alone.rows_per_micro_batch == 1


def _generation_calibration(**changes):
    from tunelab.estimate import Calibration

    # Training at 100 tokens/s; a prefill forward of 1 row x 32 tokens in 0.32 s; a decode step of 2 rows 0.1 s over a
    # KV cache of 32 tokens, 0.3 s over 132, and 0.15 s at 32 with the run's adapters.
    fields = {"device": "cpu", "precision": "fp32", "method": "lora", "batch_size": 1, "seq_len": 32, "threads": 1,
              "step_seconds": [0.32], "warmup_seconds": 1.0, "forward_seconds": 0.32, "decode_rows": 2,
              "decode_contexts": [32, 132], "decode_seconds": [0.1, 0.3], "adapted_decode_seconds": 0.15}  # fmt: skip
    return Calibration(**{**fields, **changes})


def test_sft_generation_is_priced_by_its_decode_steps_and_the_few_shot_prompts_it_sends():
    # qa-assistant's estimate said 11.8 s for baselines that took 195.8 s: it priced base and few-shot as two test
    # evaluations at the training FLOP rate (few-shot prompts as short as the plain ones, a new token as a token
    # of a forward pass). Now: a prefill of every batch, then one measured decode step per new token.
    config = _config(eval={"max_new_tokens": 10, "batch_size": 2, "baselines": ["base", "few_shot", "retrieval"]})
    calibration = _generation_calibration()
    counts = {"test_prompt_token_counts": [12, 10, 20], "few_shot_prompt_token_counts": [112, 110, 120], "answer_tokens": 4}
    estimate = estimate_run(config, [64] * 4, FACTS, test_token_counts=[20, 18, 30], calibration=calibration, prices=PRICES, **counts)

    def prefill(rows, longest):  # 0.01 s a token at 32 tokens; FLOPs 2 x 6,000 + 2 x 2 layers x 16 x length
        return rows * longest * 0.01 * (12_000 + 64 * longest) / (12_000 + 64 * 32)

    def decode(context):  # the line through (32, 0.1) and (132, 0.3), never below 0.1
        return max(0.1, 0.1 + 0.2 * (context - 32) / 100)

    # Sorted and batched by eval.batch_size: [10, 12] and [20]; 10 new tokens each over prompt + 5.
    base = prefill(2, 12) + 10 * decode(17) + prefill(1, 20) + 10 * decode(25)
    few_shot = prefill(2, 112) + 10 * decode(117) + prefill(1, 120) + 10 * decode(125)
    # retrieval runs no model: its measured constant per text (4 training prompts, 3 test prompts).
    retrieval = cheap_baseline_seconds("retrieval", 4 + 3)
    assert estimate.seconds["baseline"] == pytest.approx(base + few_shot + retrieval)
    # The tuned model stops at its longest trained answer (4 tokens), each step with its adapters (+0.05 s).
    tuned = prefill(2, 12) + 4 * (decode(14) + 0.05) + prefill(1, 20) + 4 * (decode(22) + 0.05)
    assert estimate.seconds["eval"] == pytest.approx(tuned)
    assert estimate.seconds["baseline"] > 20 * estimate.seconds["validation"]

    # A few-shot prompt that cannot hold one example is skipped by the baseline: not priced.
    skipped = estimate_run(config, [64] * 4, FACTS, test_token_counts=[20, 18, 30], calibration=calibration, prices=PRICES,
                           **{**counts, "few_shot_prompt_token_counts": []}, skipped_baselines=["few_shot"])  # fmt: skip
    assert skipped.seconds["baseline"] == pytest.approx(base + retrieval)
    assert skipped.gpus[0].seconds < estimate.gpus[0].seconds  # one evaluation less of work on a GPU too
    # The tuned model never decodes past eval.max_new_tokens.
    long_answers = estimate_run(config, [64] * 4, FACTS, calibration=calibration, prices=PRICES, **{**counts, "answer_tokens": 500})
    assert long_answers.seconds["eval"] == pytest.approx(prefill(2, 12) + 10 * (decode(17) + 0.05) + prefill(1, 20) + 10 * (decode(25) + 0.05))
    # A calibration that did not time generation (classify, text, an older cache entry) prices as before.
    untimed = estimate_run(config, [64] * 4, FACTS, test_token_counts=[20, 18, 30], prices=PRICES, **counts,
                           calibration=_generation_calibration(forward_seconds=None, decode_rows=None, decode_seconds=[]))  # fmt: skip
    assert untimed.seconds["eval"] == pytest.approx(untimed.flops.eval_flops / (100 * untimed.flops.train_flops_per_token), rel=0.2)


def test_an_sft_calibration_times_generation_as_evaluation_runs_it(tmp_path, tiny_model_dir, tiny_model, tiny_tokenizer):
    from tunelab.data.split import make_split
    from tunelab.estimate import count_tokens
    from tunelab.estimate.calibrate import calibration_key
    from tunelab.inference import chat_prompt

    config = parse_config({"task": "sft", "model": str(tiny_model_dir), "train": {"batch_size": 2, "precision": "fp32", "threads": 1},
                           "lora": {"r": 4}})  # fmt: skip
    calibration = calibrate(config, 16, model=tiny_model, steps=1, decode_rows=3, decode_contexts=[40, 8])
    assert calibration.forward_seconds > 0 and calibration.decode_rows == 3 and calibration.decode_contexts == [8, 40]
    assert len(calibration.decode_seconds) == 2 and calibration.adapted_decode_seconds > 0 and calibration.times_generation
    again = calibrate(config, 16, steps=1, decode_rows=3, decode_contexts=[8, 40])
    assert again.cached and again.decode_seconds == calibration.decode_seconds and again.forward_seconds == calibration.forward_seconds
    shape = {"device": "cpu", "precision": "fp32", "threads": 1, "n_labels": 8, "steps": 1}
    assert calibration_key(config, 16, **shape, decode=(3, [8, 40])) != calibration_key(config, 16, **shape, decode=(16, [8, 40]))

    # The token counts: the prompts as evaluation sends them, the few-shot baseline's own prompts, the longest answer.
    train = tmp_path / "train.jsonl"
    rows = [{"prompt": f"question number {i} about leave", "completion": "answer " * (1 + i % 5)} for i in range(30)]
    train.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    data = {"train": str(train), "test_size": 0.2, "validation_size": 0.1, "system_prompt": "Be brief."}
    config = parse_config({"task": "sft", "model": str(tiny_model_dir), "data": data, "eval": {"baselines": ["base", "few_shot"], "few_shot_tokens": 120}})
    split = make_split(config)
    counts = count_tokens(config, split, tiny_tokenizer, context=2048)
    sent = [len(chat_prompt(tiny_tokenizer, r.prompt_messages, system_prompt="Be brief.").ids) for r in split.test]
    assert counts.test_prompts == sent
    assert len(counts.few_shot_prompts) == len(sent) and all(f > s for f, s in zip(counts.few_shot_prompts, sent, strict=True))
    assert all(f <= s + 120 for f, s in zip(counts.few_shot_prompts, sent, strict=True))
    assert counts.answer_tokens >= 2  # the longest answer and its end of turn
    assert counts.skipped_baselines == []
    no_room = parse_config({**config.model_dump(mode="json"), "eval": {**config.eval.model_dump(mode="json"), "few_shot_tokens": 1}})
    skipped = count_tokens(no_room, split, tiny_tokenizer, context=2048)
    assert skipped.few_shot_prompts == [] and skipped.skipped_baselines == ["few_shot"]  # skipped by the baseline: not priced


def test_a_classify_few_shot_prompt_that_cannot_show_every_label_is_not_priced(tmp_path, tiny_model_dir, tiny_tokenizer):
    # "Time to verdict": the whole estimate priced base and few-shot on BANKING77 before the few-shot baseline was
    # skipped (1,024 tokens held 36 examples, not one per intent). The skip is decided by the baseline's own rule.
    from tunelab.data.split import make_split
    from tunelab.estimate import count_tokens

    train = tmp_path / "train.jsonl"
    rows = [{"text": f"my card number {i} has not arrived yet", "label": f"label{i % 6}"} for i in range(60)]
    train.write_text("\n".join(json.dumps(row) for row in rows) + "\n")

    def counts(few_shot_tokens):
        config = parse_config({"task": "classify", "model": str(tiny_model_dir), "data": {"train": str(train), "test_size": 0.2},
                               "eval": {"baselines": ["classical", "base", "few_shot"], "few_shot_tokens": few_shot_tokens}})  # fmt: skip
        return config, count_tokens(config, make_split(config), tiny_tokenizer, context=2048)

    config, roomy = counts(1024)
    assert roomy.skipped_baselines == []
    # What each baseline's prompt adds to the trained one, run once per scoring pass: the instruction and label list,
    # and for few-shot the solved examples too.
    assert roomy.baseline_prefixes["few_shot"] > roomy.baseline_prefixes["base"] > 0
    _, tight = counts(30)  # room for a few examples, not one of each of the 6 labels
    assert tight.skipped_baselines == ["few_shot"]
    calibration = _generation_calibration()
    both = estimate_run(config, roomy.train, FACTS, test_token_counts=roomy.test, n_labels=6, calibration=calibration, prices=PRICES)
    one = estimate_run(config, roomy.train, FACTS, test_token_counts=roomy.test, n_labels=6, calibration=calibration, prices=PRICES,
                       skipped_baselines=tight.skipped_baselines)  # fmt: skip
    classical = cheap_baseline_seconds("classical", len(roomy.train) + len(roomy.test))  # no model: per text read
    assert one.seconds["baseline"] - classical == pytest.approx((both.seconds["baseline"] - classical) / 2)
    assert one.seconds["eval"] == both.seconds["eval"]


def test_a_preference_estimate_prices_the_reference_once_and_evaluation_as_two_passes():
    """`tunelab estimate` of a DPO run said eval 7.0 s (as its baseline) for an evaluation that took 46 s: the timed
    step (the policy alone) was taken to include the reference's forward, which inflated the FLOP rate 1.5x, and the
    tuned evaluation (policy and reference, per pair) was priced as one pass."""
    calibration = _generation_calibration(forward_seconds=None, decode_rows=None, decode_seconds=[])
    shape = {"validation_token_counts": [40] * 4, "test_token_counts": [50] * 6, "calibration": calibration, "prices": PRICES}
    sft = estimate_run(_config(eval={"baselines": ["base"]}), [64] * 8, FACTS, **shape)
    preference = estimate_run(_config(task="preference", eval={"baselines": ["base"]}), [64] * 8, FACTS, **shape)
    assert preference.flops.dense_flops_per_token == sft.flops.dense_flops_per_token + 2 * sft.flops.matmul_params
    # The same measured step, the same forward passes: the same FLOP rate, so validation and a baseline cost the same.
    assert preference.seconds["validation"] == pytest.approx(sft.seconds["validation"])
    forward = sft.seconds["validation"] / sft.flops.validation_flops  # seconds per forward FLOP
    assert preference.seconds["baseline"] == pytest.approx(forward * preference.flops.eval_flops)
    # The tuned evaluation scores every pair with the policy and with its reference.
    assert preference.seconds["eval"] == pytest.approx(2 * preference.seconds["baseline"])
    # The reference pass over the training pairs and the validation pairs, once, at that rate.
    tokens = preference.tokens
    reference_tokens = tokens.processed_tokens_per_epoch + tokens.validation_tokens / tokens.validations
    assert preference.seconds["reference"] == pytest.approx(forward * preference.flops.eval_flops / tokens.test_tokens * reference_tokens, rel=0.05)


def test_model_facts_of_an_sft_run_count_what_a_preference_run_trains(tiny_model):
    """`tunelab estimate` of a DPO run on top of a LoRA SFT run said 9,876,480 trainable parameters (and 4.9M more
    in matmuls) where training trained 4,884,480: the parent's adapter was counted as weights and as linears to adapt,
    while training folds it into the weights before adding its own."""
    import copy

    from peft import LoraConfig, get_peft_model

    plain = model_facts(tiny_model, lora_r=16, target_modules="all-linear")
    parent = get_peft_model(copy.deepcopy(tiny_model), LoraConfig(r=8, target_modules="all-linear"))
    assert model_facts(parent, lora_r=16, target_modules="all-linear") == plain
    assert model_facts(parent, lora_r=4, target_modules=["q_proj", "v_proj"]).lora_params == model_facts(tiny_model, 4, ["q_proj", "v_proj"]).lora_params


def test_estimate_reports_a_missing_or_bad_data_file_before_loading_the_model(tmp_path, monkeypatch):
    """`tunelab estimate` loaded the model (seconds; a hub model: a download) and only then read the data, so a typo in
    data.train cost a model load before its one-line error; `tunelab run` and `advise` read the data first."""
    import tunelab.runs
    from tunelab.estimate import estimate_from_config

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was read")

    monkeypatch.setattr(tunelab.runs, "load_model", no_model)
    (tmp_path / "bad.jsonl").write_text('{"text": "fine", "label": "a"}\n{"text": "broken", "label": \n')
    for name, message in (("missing.jsonl", "data not found"), ("bad.jsonl", r"bad.jsonl:2\b")):
        config = parse_config({"task": "classify", "model": "no-such-model", "data": {"train": str(tmp_path / name)}})
        with pytest.raises(DataError, match=message):
            estimate_from_config(config, calibrate_here=False)


def test_text_test_tokens_are_the_windows_perplexity_reads(tmp_path, tiny_tokenizer):
    """Perplexity reads each held-out document in windows that overlap by half (``perplexity_stride``); the estimate
    counted them at data.stride (no overlap: half the tokens), one reason an FDR speeches run's evaluation took 57 s
    against 6 s estimated."""
    from tunelab.data.records import TextRecord
    from tunelab.data.split import Split
    from tunelab.data.tokenize import perplexity_stride, tokenize_text
    from tunelab.estimate import count_tokens

    document = " ".join(f"word{i % 37} and more text" for i in range(400))
    records = [TextRecord(id=f"d{i}", text=document, source=f"d{i}.txt") for i in range(3)]
    config = parse_config({"task": "text", "model": "default", "data": {"train": "unused", "max_length": 64}})
    counts = count_tokens(config, Split("text", records[:1], records[1:2], records[2:], seed=0), tiny_tokenizer)
    read = [len(w.input_ids) for w in tokenize_text(records[2], tiny_tokenizer, 64, perplexity_stride(config.data))]
    assert perplexity_stride(config.data) == 32 and len(read) > 2
    assert counts.test == read
    trained = [len(w.input_ids) for w in tokenize_text(records[0], tiny_tokenizer, 64, 64)]
    assert counts.train == trained  # training and its validation loss keep data.stride


@pytest.mark.parametrize("task", ["classify", "text"])
def test_evaluation_and_the_model_baselines_are_priced_at_the_measured_forward_rate(task):
    """The quickstart's classify evaluation ran 1.8-2.2x and a text run's 4.6x longer than estimated: evaluation (fp32
    weights, no autograd) was priced at the training step's bf16 FLOP rate. A calibration that timed evaluation's
    forward prices it, and the baselines that run the model, at the forward's own rate; training and validation
    (inside the loop, in its dtype) keep the step's."""
    from tunelab.estimate import Calibration

    config = _config(task=task, eval={"baselines": ["base"]})
    shape = {"validation_token_counts": [40] * 4, "test_token_counts": [50] * 6, "n_labels": 4, "prices": PRICES}

    def estimate(forward_seconds):
        calibration = Calibration(device="cpu", precision="bf16", method="lora", batch_size=2, seq_len=32, threads=1,
                                  step_seconds=[0.5], warmup_seconds=1.0, forward_seconds=forward_seconds)  # fmt: skip
        return estimate_run(config, [64] * 8, FACTS, calibration=calibration, **shape)

    fast, slow = estimate(0.1), estimate(0.4)
    assert slow.seconds["eval"] == pytest.approx(4 * fast.seconds["eval"])
    assert slow.seconds["baseline"] == pytest.approx(4 * fast.seconds["baseline"])
    assert (slow.seconds["train"], slow.seconds["validation"]) == (fast.seconds["train"], fast.seconds["validation"])
    # The timed forward: 2 rows of 32 tokens through the body and attention, the head on each row's last position.
    timed = 2 * (32 * (2 * 6_000 + 2 * 2 * 32 * 16) + 2 * 16 * 100)
    assert fast.seconds["eval"] == pytest.approx(fast.flops.eval_flops / (timed / 0.1))
    # A calibration stored before the forward was timed prices evaluation as before, at the training step's rate.
    untimed = estimate(None)
    step_rate = untimed.seconds["validation"] / untimed.flops.validation_flops
    assert untimed.seconds["eval"] == pytest.approx(step_rate * untimed.flops.eval_flops)


def test_a_classify_calibration_times_evaluations_forward_and_caches_it(tiny_model_dir, tiny_model):
    from tunelab.models.heads import causal_lm_of

    config = parse_config({"task": "classify", "model": str(tiny_model_dir), "train": {"batch_size": 2, "precision": "fp32", "threads": 1},
                           "lora": {"r": 4}})  # fmt: skip
    rows = []
    head = causal_lm_of(tiny_model).get_output_embeddings()
    handle = head.register_forward_hook(lambda module, inputs, output: rows.append(tuple(inputs[0].shape)))
    try:
        calibration = calibrate(config, 8, model=tiny_model, steps=1, n_labels=3)
    finally:
        handle.remove()
    # Evaluation's forward: the full head on each row's last position, in fp32, before the adapters are added.
    assert rows and rows[0] == (2, tiny_model.config.hidden_size)
    assert calibration.forward_seconds > 0 and not calibration.times_generation
    again = calibrate(config, 8, steps=1, n_labels=3)
    assert again.cached and again.forward_seconds == calibration.forward_seconds


def _forward_calibration():
    from tunelab.estimate import Calibration

    return Calibration(device="cpu", precision="bf16", method="lora", batch_size=2, seq_len=32, threads=1,
                       step_seconds=[0.5], warmup_seconds=1.0, forward_seconds=0.2)  # fmt: skip


def test_the_baselines_without_a_language_model_are_priced_per_text_they_read():
    """The quickstart's estimate priced classical and embedding at nothing: the embedding baseline loads
    all-MiniLM-L6-v2 and encodes every learning and test text, and both fit a cross-validated logistic regression."""
    from tunelab.estimate.plan import (
        EMBEDDING_LOAD_SECONDS,
        EMBEDDING_SECONDS_PER_TEXT,
        TFIDF_SECONDS_PER_TEXT,
    )

    shape = {"validation_token_counts": [40] * 4, "test_token_counts": [50] * 6, "n_labels": 4, "calibration": _forward_calibration(),
             "prices": PRICES}  # fmt: skip

    def baseline(names):
        return estimate_run(_config(task="classify", eval={"baselines": names}), [64] * 10, FACTS, **shape).seconds.get("baseline")

    texts = 10 + 4 + 6  # learning, validation and test records
    assert EMBEDDING_LOAD_SECONDS > 0 and EMBEDDING_SECONDS_PER_TEXT > 0 and TFIDF_SECONDS_PER_TEXT > 0
    assert baseline(["classical"]) == pytest.approx(texts * TFIDF_SECONDS_PER_TEXT)
    assert baseline(["embedding"]) == pytest.approx(EMBEDDING_LOAD_SECONDS + texts * EMBEDDING_SECONDS_PER_TEXT)
    assert baseline(["classical", "embedding"]) == pytest.approx(baseline(["classical"]) + baseline(["embedding"]))
    # sft's retrieval and embedding retrieval read the prompts the same way.
    sft = estimate_run(_config(eval={"baselines": ["retrieval", "embedding"]}), [64] * 10, FACTS, **shape)
    assert sft.seconds["baseline"] == pytest.approx(texts * TFIDF_SECONDS_PER_TEXT + EMBEDDING_LOAD_SECONDS + texts * EMBEDDING_SECONDS_PER_TEXT)


def test_a_model_baseline_skip_hopeless_may_skip_is_priced_with_its_validation_pass_and_a_note():
    """The quickstart's estimate priced base and few-shot in full; eval.skip_hopeless scored them on the 32
    validation rows and skipped both. The estimate cannot know the validation scores: it keeps the price, adds the
    validation pass each one runs first, and says what skipping would save."""
    from tunelab.estimate.plan import duration

    shape = {"validation_token_counts": [40] * 4, "test_token_counts": [50] * 6, "n_labels": 4, "calibration": _forward_calibration(),
             "prices": PRICES}  # fmt: skip
    names = ["classical", "base", "few_shot"]
    hopeful = estimate_run(_config(task="classify", eval={"baselines": names}), [64] * 10, FACTS, **shape)
    rate = hopeful.seconds["eval"] / hopeful.flops.eval_flops  # seconds per forward FLOP
    validation_pass = rate * hopeful.flops.validation_flops / hopeful.tokens.validations
    classical = cheap_baseline_seconds("classical", 20)
    assert hopeful.seconds["baseline"] == pytest.approx(2 * (hopeful.seconds["eval"] + validation_pass) + classical)
    (note,) = hopeful.notes
    assert "base, few_shot may be skipped by eval.skip_hopeless" in note and "classical" in note
    assert duration(hopeful.seconds["eval"]) in note
    # Without the rule, or without a cheap opponent to compare with, nothing is scored first and nothing noted.
    ruled_out = estimate_run(_config(task="classify", eval={"baselines": names, "skip_hopeless": False}), [64] * 10, FACTS, **shape)
    assert ruled_out.seconds["baseline"] == pytest.approx(2 * hopeful.seconds["eval"] + classical) and ruled_out.notes == []
    alone = estimate_run(_config(task="classify", eval={"baselines": ["base"]}), [64] * 10, FACTS, **shape)
    assert alone.seconds["baseline"] == pytest.approx(hopeful.seconds["eval"]) and alone.notes == []
    # Each pass runs the baseline's longer prompt once as a shared prefix the scored tokens attend over.
    from tunelab.estimate.plan import shared_prefix_flops

    prefixed = estimate_run(_config(task="classify", eval={"baselines": names}), [64] * 10, FACTS, **shape,
                            baseline_prefixes={"base": 10, "few_shot": 200})  # fmt: skip
    one_validation = hopeful.tokens.validation_tokens / hopeful.tokens.validations
    added = sum(shared_prefix_flops(FACTS, prefix, hopeful.tokens.test_tokens) + shared_prefix_flops(FACTS, prefix, one_validation)
                for prefix in (10, 200))  # fmt: skip
    assert prefixed.seconds["baseline"] == pytest.approx(hopeful.seconds["baseline"] + rate * added)
    assert shared_prefix_flops(FACTS, 200, 50) == 200 * (2 * 6_000 + 2 * 2 * 16 * 200) + 50 * 2 * 2 * 16 * 200
    # The note is what `tunelab show` and the web interface print with the estimate.
    from tunelab.estimate.summary import estimate_summary

    assert ("note", note) in estimate_summary(hopeful.as_dict())
