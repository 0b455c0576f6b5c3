"""The loop on a tiny model: what trains, what stays frozen, that the loss falls, the guards."""

import json

import pytest
import torch
from train_helpers import assert_same_training, classify_records, records_split, sft_records, tiny_config

from tunelab.data.tokenize import tokenize_records
from tunelab.errors import ConfigError
from tunelab.models.adapters import apply_method
from tunelab.runs import RunFolder, load_model
from tunelab.tasks import run_training
from tunelab.train.batching import LMCollate
from tunelab.train.loop import TrainingError, train_loop
from tunelab.train.losses import lm_loss_sum
from tunelab.train.run import make_accelerator


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _train_directly(model, config, tiny_tokenizer, run_dir, loss_fn=lm_loss_sum):
    examples, _ = tokenize_records(sft_records(8), "sft", tiny_tokenizer, max_length=64)
    accelerator, _ = make_accelerator(config, RunFolder(run_dir))
    return train_loop(
        model=model, train_examples=examples, validation_examples=[], collate=LMCollate(tiny_tokenizer.pad_token_id, 64),
        loss_fn=loss_fn, config=config.train, max_length=64, run=RunFolder(run_dir), accelerator=accelerator,
    )


@pytest.mark.parametrize(
    "method, extra", [("lora", {}), ("full", {}), ("freeze", {"trainable_layers": [-1]})]
)
def test_every_trainable_parameter_changes_and_frozen_ones_do_not(method, extra, tiny_model, tiny_model_dir, tiny_tokenizer, tmp_path):
    config = tiny_config(tiny_model_dir, method=method, max_steps=3, **extra)
    model = apply_method(tiny_model, config)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable
    if method == "lora":
        # all-linear adapts every projection but never the (tied) output head.
        assert all("lora_" in name for name in trainable) and not any("lm_head" in n for n in trainable)
        assert any("q_proj" in n for n in trainable) and any("down_proj" in n for n in trainable)
    if method == "freeze":
        assert all(".layers.1." in name for name in trainable)
    _train_directly(model, config, tiny_tokenizer, tmp_path / "run")
    for name, parameter in model.named_parameters():
        changed = not torch.equal(before[name], parameter.detach())
        assert changed == (name in trainable), name


def test_loss_falls_on_a_memorisable_set(tiny_model_dir, tmp_path):
    # Full fine-tuning: a random tiny model's frozen head and norm cap what LoRA alone can fit (the
    # real-model test checks LoRA's loss falling).
    config = tiny_config(tiny_model_dir, method="full", max_steps=30, lr=1e-2, log_every=5)
    result = run_training(config, records_split(sft_records(8)), run_dir=tmp_path / "run")
    losses = [m["loss"] for m in _metrics(tmp_path / "run") if "loss" in m]
    assert result.steps == 30 and len(losses) >= 6, losses
    assert losses[-1] < 0.5 * losses[0], losses
    assert result.final_loss == losses[-1] and result.trainable_parameters > 0


def test_run_folder_holds_what_load_run_needs(tiny_model_dir, tmp_path):
    from tunelab.runs import load_run

    config = tiny_config(tiny_model_dir, task="classify", max_steps=2)
    split = records_split(classify_records(12), classify_records(6))
    result = run_training(config, split, run_dir=tmp_path / "run")
    run = RunFolder(tmp_path / "run")
    assert run.config.is_file() and run.adapter.is_dir() and run.tokenizer.is_dir() and run.labels.is_file()
    assert run.split.is_file() and (run.checkpoints / "best").is_dir()
    assert any("validation_loss" in m for m in _metrics(run.root))
    loaded = load_run(run.root)
    assert loaded.label_map.labels == ["billing", "login", "shipping"]
    assert result.best_validation_loss is not None
    # Never overwritten silently.
    with pytest.raises(ConfigError, match="already exists"):
        run_training(config, split, run_dir=run.root)


def test_full_run_writes_a_plain_model_folder(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = tiny_config(tiny_model_dir, method="full", max_steps=2)
    run_training(config, records_split(sft_records(6)), run_dir=tmp_path / "run")
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    AutoTokenizer.from_pretrained(tmp_path / "run" / "model")


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tiny_model, tiny_model_dir, tiny_tokenizer, tmp_path):
    config = tiny_config(tiny_model_dir, max_steps=8, save_every=2, log_every=1)
    calls = []

    def poisoned(model, batch):
        calls.append(1)
        loss = lm_loss_sum(model, batch)
        return loss * float("nan") if len(calls) > 3 else loss

    model = apply_method(tiny_model, config)
    with pytest.raises(TrainingError, match="NaN") as caught:
        _train_directly(model, config, tiny_tokenizer, tmp_path / "run", loss_fn=poisoned)
    assert "step-2" in str(caught.value)
    assert (tmp_path / "run" / "checkpoints" / "step-2" / "trainable.safetensors").is_file()
    assert not (tmp_path / "run" / "checkpoints" / "step-4").exists()


def test_merged_export_generates_the_same_as_the_adapter(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunelab.runs import export_folder as merge_and_save
    from tunelab.runs import load_run

    config = tiny_config(tiny_model_dir, max_steps=4, lr=2e-2)
    run_training(config, records_split(sft_records(6)), run_dir=tmp_path / "run")
    merge_and_save(tmp_path / "run", tmp_path / "merged")
    adapted = load_run(tmp_path / "run")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    prompt = adapted.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 3 plus 3?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    settings = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": adapted.tokenizer.pad_token_id}
    with torch.no_grad():
        a = adapted.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **settings)
        b = merged.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **settings)
        base = load_model(str(tiny_model_dir)).model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **settings)
    assert torch.equal(a, b)
    assert not torch.equal(a, base)  # the adapter really changed the model
    with pytest.raises(Exception, match="already exists"):
        merge_and_save(tmp_path / "run", tmp_path / "merged")


def test_split_passes_keeps_order_and_the_token_budget(tiny_tokenizer):
    from tunelab.train.batching import real_tokens, split_passes

    examples, _ = tokenize_records(sft_records(6), "sft", tiny_tokenizer, max_length=64)
    sizes = [real_tokens(e) for e in examples]
    budget = sizes[0] + sizes[1]
    passes = split_passes(examples, budget)
    assert [e for p in passes for e in p] == examples and passes[0] == examples[:2]
    assert all(sum(real_tokens(e) for e in p) <= budget or len(p) == 1 for p in passes)
    assert split_passes(examples, 1) == [[e] for e in examples]  # longer than the budget: a pass of its own
    assert split_passes(examples, None) == [examples] and split_passes([], 8) == []


@pytest.mark.parametrize("task", ["sft", "classify"])
def test_a_step_in_smaller_passes_trains_the_same_weights(task, tiny_model_dir, tiny_tokenizer, tmp_path):
    from tunelab.train.batching import split_passes

    records = sft_records(8) if task == "sft" else classify_records(8)
    if task == "sft":
        examples, _ = tokenize_records(records, "sft", tiny_tokenizer, max_length=64)
        assert len(split_passes(examples, 40)) >= 4  # the budget really splits each step
    for name, budget in (("one-pass", None), ("passes", 40)):
        config = tiny_config(tiny_model_dir, task, max_steps=3, batch_size=8, lr=1e-2, max_pass_tokens=budget)
        run_training(config, records_split(records), run_dir=tmp_path / name)
    assert_same_training(tmp_path / "one-pass", tmp_path / "passes")


def test_max_pass_tokens_auto_limits_passes_on_a_cpu_only_where_it_pays():
    from tunelab.config import CPU_PASS_TOKENS, TrainConfig, parse_config

    auto = TrainConfig()
    assert auto.max_pass_tokens == "auto"
    assert auto.pass_token_budget("cpu") == CPU_PASS_TOKENS
    assert parse_config({"task": "sft"}).train.pass_token_budget("cpu") == CPU_PASS_TOKENS
    classify = parse_config({"task": "classify"}).train  # each pass would re-run the shared prefix
    assert classify.max_pass_tokens is None and classify.pass_token_budget("cpu") is None
    assert auto.pass_token_budget("cuda") is None
    assert parse_config({"task": "classify", "train": {"max_pass_tokens": 300}}).train.pass_token_budget("cuda") == 300
    assert TrainConfig(max_pass_tokens=None).pass_token_budget("cpu") is None
    for bad in (0, "fast", 1.5):
        with pytest.raises(ValueError):
            TrainConfig(max_pass_tokens=bad)


def test_the_best_weights_of_a_validation_between_checkpoints_are_the_ones_kept(tiny_model, tiny_model_dir, tiny_tokenizer, tmp_path):
    """best/ is written when a validation improves, not only when a checkpoint is due: with save_every above
    eval_every, a best validation between two checkpoints once ended the run on its last weights instead."""
    from tunelab.models.adapters import apply_method
    from tunelab.train.checkpoints import trainable_state

    config = tiny_config(tiny_model_dir, max_steps=6, eval_every=1, save_every=3, log_every=1)
    model = apply_method(tiny_model, config)
    examples, _ = tokenize_records(sft_records(8), "sft", tiny_tokenizer, max_length=64)
    validations, snapshots = [], {}

    def score(model_, batch):  # the second validation (step 2, no checkpoint there) scores best
        validations.append(1)
        return torch.tensor(10.0 if len(validations) == 2 else 1.0)

    def progress(event):
        snapshots[event.step] = trainable_state(model)

    accelerator, _ = make_accelerator(config, RunFolder(tmp_path / "run"))
    result = train_loop(
        model=model, train_examples=examples, validation_examples=examples[:2], collate=LMCollate(tiny_tokenizer.pad_token_id, 64),
        loss_fn=lm_loss_sum, config=config.train, max_length=64, run=RunFolder(tmp_path / "run"), accelerator=accelerator,
        validation_score=score, progress=progress,
    )
    assert result.best_step == 2 and result.steps == 6
    final = trainable_state(model)
    assert final.keys() == snapshots[2].keys()
    assert all(torch.equal(final[name], snapshots[2][name]) for name in final)
    assert not all(torch.equal(final[name], snapshots[6][name]) for name in final)


def test_a_run_stopped_early_and_interrupted_before_its_weights_are_saved_resumes_to_the_same_stop(tiny_model, tiny_model_dir, tiny_tokenizer, tmp_path):
    """Early stopping writes its checkpoint, then the run saves its weights; interrupted in between, a resume once
    went on training past the step where the uninterrupted run stopped."""
    from tunelab.models.adapters import apply_method

    config = tiny_config(tiny_model_dir, max_steps=10, eval_every=1, save_every=10, early_stopping_patience=2)
    examples, _ = tokenize_records(sft_records(8), "sft", tiny_tokenizer, max_length=64)
    scores = iter([10.0, 1.0, 1.0])  # the first validation is the best; two worse ones stop the run at step 3

    class Interrupted(Exception):
        pass

    def progress(event):
        if event.step == 3:
            raise Interrupted  # after the step's checkpoint, before the loop returns

    def train(model, *, resume, **extra):
        accelerator, _ = make_accelerator(config, RunFolder(tmp_path / "run"))
        return train_loop(
            model=apply_method(model, config), train_examples=examples, validation_examples=examples[:2],
            collate=LMCollate(tiny_tokenizer.pad_token_id, 64), loss_fn=lm_loss_sum, config=config.train, max_length=64,
            run=RunFolder(tmp_path / "run"), accelerator=accelerator, resume=resume,
            validation_score=lambda model_, batch: torch.tensor(next(scores, 1.0)), **extra,
        )

    with pytest.raises(Interrupted):
        train(tiny_model, resume=False, progress=progress)
    resumed = train(load_model(str(tiny_model_dir)).model, resume=True)
    assert resumed.stopped_early and resumed.steps == 3 and resumed.best_step == 1
    assert [row["step"] for row in _metrics(tmp_path / "run") if "loss" in row] == [1, 2, 3]


def test_the_learning_rate_logged_at_a_step_is_the_one_that_step_trained_with(tiny_model, tiny_model_dir, tiny_tokenizer, tmp_path):
    """metrics.jsonl and the progress once showed the next step's rate (0.0 at the last step of a decaying schedule)."""
    config = tiny_config(tiny_model_dir, max_steps=4, warmup_ratio=0.5, scheduler="linear", lr=3e-3)
    used, shown = [], []
    model = apply_method(tiny_model, config)
    examples, _ = tokenize_records(sft_records(8), "sft", tiny_tokenizer, max_length=64)
    accelerator, _ = make_accelerator(config, RunFolder(tmp_path / "run"))
    original_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "step", step)
        train_loop(
            model=model, train_examples=examples, validation_examples=[], collate=LMCollate(tiny_tokenizer.pad_token_id, 64),
            loss_fn=lm_loss_sum, config=config.train, max_length=64, run=RunFolder(tmp_path / "run"), accelerator=accelerator,
            progress=lambda event: shown.append(event.lr),
        )
    # Two warmup steps (1/3, 2/3 of the peak), then linear decay from the peak over the last two.
    assert used == pytest.approx([1e-3, 2e-3, 3e-3, 1.5e-3])
    assert [row["lr"] for row in _metrics(tmp_path / "run") if "lr" in row] == pytest.approx(used)
    assert shown == pytest.approx(used)


def test_sft_conversations_with_every_answer_at_weight_zero_are_named_as_such(tiny_model_dir, tmp_path):
    """Every assistant turn at weight 0 trains nothing: the run blamed data.max_length and said to raise it."""
    from tunelab.data.records import SFTRecord
    from tunelab.errors import DataError

    unweighted = [
        SFTRecord(({"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello.", "weight": 0}), source=f"chat.jsonl:{i}")
        for i in range(3)
    ]
    config = tiny_config(tiny_model_dir, max_steps=1)
    with pytest.raises(DataError, match="weight 0") as info:
        run_training(config, records_split(unweighted), run_dir=tmp_path / "none")
    assert "raise data.max_length" not in str(info.value.hint)
    result = run_training(config, records_split(sft_records(4) + unweighted[:1]), run_dir=tmp_path / "some")
    assert [w for w in result.warnings if "chat.jsonl:0" in w] and all("weight 0" in w for w in result.warnings if "chat.jsonl:0" in w)


def test_early_stopping_without_a_validation_split_says_it_never_applies(tiny_model_dir, tmp_path):
    """train.early_stopping_patience with no validation examples was ignored without a word."""
    config = tiny_config(tiny_model_dir, max_steps=2, early_stopping_patience=1)
    result = run_training(config, records_split(sft_records(4)), run_dir=tmp_path / "run")
    assert result.steps == 2 and any("early_stopping_patience" in w and "no validation" in w for w in result.warnings)
    quiet = run_training(tiny_config(tiny_model_dir, max_steps=2), records_split(sft_records(4)), run_dir=tmp_path / "quiet")
    assert not any("early_stopping_patience" in w for w in quiet.warnings)


def test_resuming_a_finished_run_keeps_its_training_rate(tiny_model_dir, tmp_path):
    """`tunelab train --resume` of a run that had finished trained nothing more, and reported (and registered)
    0 tokens/s: the rate of an empty session replaced the run's own."""
    config = tiny_config(tiny_model_dir, max_steps=2)
    split = records_split(sft_records(8))
    first = run_training(config, split, run_dir=tmp_path / "run")
    again = run_training(config, split, run_dir=tmp_path / "run", resume=True)
    assert again.steps == first.steps == 2 and again.tokens == first.tokens
    assert first.tokens_per_second > 0
    assert again.tokens_per_second == pytest.approx(first.tokens_per_second, rel=0.05)
