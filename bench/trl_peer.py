"""The peer: Hugging Face TRL's SFTTrainer doing the same LoRA SFT job as tunelab, in one process.

Same model object (tunelab's loader, fp32 weights, SDPA attention), same records, same max_length,
same LoRA (r=16, alpha=32, dropout=0.05, all linear layers), same effective batch, same number of
optimizer steps and the same peak learning rate. Everything else is TRL's default: padding to the
longest row of each batch, gradient checkpointing on, linear schedule without warm-up, fused AdamW.
On a CPU TRL 1.16's literal default (bf16=True without use_cpu) refuses to start, so "default"
here means what a user does to make it run, ``bf16=False`` (fp32); ``--precision bf16`` is
``bf16=True, use_cpu=True`` (bf16 autocast).

The data is the conversational prompt/completion format, so TRL renders it with the chat template
and masks the prompt (completion_only_loss). The first optimizer step (warm-up) and the last are not timed.
Real tokens are counted by wrapping TRL's collator: the length of every example it is handed, before
padding, per micro-batch, in order.

classify (``--task classify``): BANKING77 prompts built exactly as tunelab builds them
(``classify_messages``), the label's token (tunelab's LabelMap for the same training records) as the
completion. Accuracy is judged by one-pass label scoring over the same label tokens for both.

Usage: python bench/trl_peer.py --task sft --steps 8 --batch-size 8 --max-length 512 --precision fp32
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import (
    TAIL_STEPS,
    WARMUP_STEPS,
    add_training_args,
    child_result,
    classify_label_map,
    completion_loss,
    label_scores_accuracy,
    machine_info,
    task_data,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_args(parser)
    parser.add_argument("--no-gradient-checkpointing", action="store_true", help="turn off TRL's default")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tunelab.data.templates import classify_messages
    from tunelab.data.tokenize import tokenize_classify, tokenize_sft
    from tunelab.runs import load_model

    total_steps = WARMUP_STEPS + args.steps + TAIL_STEPS
    n_train = total_steps * args.batch_size * args.grad_accum
    train_records, validation_records, data_name = task_data(args.task, n_train, args.validation, args.seed)

    loaded = load_model("default")
    model, tokenizer = loaded.model, loaded.tokenizer
    if args.task == "sft":
        validation = [tokenize_sft(r, tokenizer, args.max_length) for r in validation_records]

        def evaluate(m):
            return completion_loss(m, validation)

        rows = [
            {"prompt": list(r.prompt_messages), "completion": [{"role": "assistant", "content": r.completion}]}
            for r in train_records
        ]
    else:
        label_map = classify_label_map(train_records, tokenizer)
        validation = [tokenize_classify(r, tokenizer, label_map, args.max_length) for r in validation_records]

        def evaluate(m):
            return label_scores_accuracy(m, validation, label_map.token_ids)

        rows = [
            {
                "prompt": classify_messages(r.text),
                "completion": [{"role": "assistant", "content": label_map.token_strings[label_map.index(r.label)]}],
            }
            for r in train_records
        ]
    base_score = evaluate(model) if args.eval_base else None

    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-peer-"),
        report_to="none",
        max_steps=total_steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        max_length=args.max_length,
        learning_rate=args.lr,
        bf16=args.precision == "bf16",
        use_cpu=not torch.cuda.is_available(),  # on a GPU, TRL's own default device
        gradient_checkpointing=not args.no_gradient_checkpointing,
        save_strategy="no",
        logging_steps=total_steps,
        seed=args.seed,
        disable_tqdm=True,
    )

    step_ends: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, _args, _state, _control, **_kwargs):
            step_ends.append(time.perf_counter())

    trainer = SFTTrainer(
        model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=peft_config
    )

    # Count real (non-padding) tokens per micro-batch as TRL's own collator receives the examples.
    micro_batch_tokens: list[int] = []
    micro_batch_padded: list[int] = []
    collator = trainer.data_collator

    def counting_collator(examples):
        micro_batch_tokens.append(sum(len(e["input_ids"]) for e in examples))
        batch = collator(examples)
        micro_batch_padded.append(int(batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting_collator
    trainer.add_callback(StepTimer())
    setup_s = time.perf_counter() - started
    train_started = time.perf_counter()
    output = trainer.train()
    train_s = time.perf_counter() - train_started

    accumulation = args.grad_accum
    timed = slice(WARMUP_STEPS * accumulation, (WARMUP_STEPS + args.steps) * accumulation)
    timed_tokens = sum(micro_batch_tokens[timed])
    timed_padded = sum(micro_batch_padded[timed])
    timed_seconds = step_ends[WARMUP_STEPS + args.steps - 1] - step_ends[WARMUP_STEPS - 1]
    score = evaluate(trainer.model)
    metric = "validation_loss" if args.task == "sft" else "accuracy"

    child_result(
        {
            "runner": f"trl_{args.precision}" + ("_nogc" if args.no_gradient_checkpointing else ""),
            "task": args.task,
            "data": data_name,
            "settings": vars(args) | {"trl_gradient_checkpointing": config.gradient_checkpointing, "optim": str(config.optim)},
            "optimizer_steps": total_steps,
            "timed_steps": args.steps,
            "timed_seconds": round(timed_seconds, 2),
            "real_tokens": timed_tokens,
            "padded_tokens": timed_padded,
            "real_tokens_per_s": round(timed_tokens / timed_seconds, 1),
            "examples_per_s": round(args.steps * args.batch_size * accumulation / timed_seconds, 3),
            "seconds_per_step": round(timed_seconds / args.steps, 2),
            "setup_s": round(setup_s, 2),
            "first_step_s": round(step_ends[0] - started, 2),
            "train_s": round(train_s, 2),
            "train_loss": round(output.training_loss, 4),
            metric: round(score, 4),
            f"base_{metric}": round(base_score, 4) if base_score is not None else None,
            "validation_examples": len(validation),
            "machine": machine_info(),
        }
    )


if __name__ == "__main__":
    main()
