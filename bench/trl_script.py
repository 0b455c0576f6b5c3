"""The peer of ``bench/whole_process.py``: the script a user writes to fine-tune with TRL's SFTTrainer.

TRL's defaults throughout (learning rate, schedule, padding, gradient checkpointing, fused AdamW),
with what the job fixes: LoRA r=16 / alpha=32 on all linear layers, the batch, one epoch, the
maximum length, the validation file (evaluated once, at the end of the epoch), and fp32 (TRL's
literal default, bf16=True, refuses to start on a CPU). The adapter is saved, as a user would.

    python bench/trl_script.py --model FOLDER --train train.jsonl --validation validation.jsonl --output DIR
"""

from __future__ import annotations

import argparse
import json
import time

STARTED = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a transformers model folder")
    parser.add_argument("--train", required=True, help="JSONL of {'messages': [...]}")
    parser.add_argument("--validation", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()

    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    data = load_dataset("json", data_files={"train": args.train, "validation": args.validation})

    def prompt_completion(row: dict) -> dict:
        # The conversational prompt/completion format: TRL applies the chat template and trains on the answer only.
        return {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}

    data = data.map(prompt_completion, remove_columns=["messages"])
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    config = SFTConfig(
        output_dir=args.output,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        max_length=args.max_length,
        bf16=False,
        eval_strategy="epoch",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=data["train"], eval_dataset=data["validation"],
        processing_class=tokenizer, peft_config=peft_config,
    )  # fmt: skip
    trainer.train()
    trainer.save_model(args.output)
    losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    print(json.dumps({"trl_eval_loss": losses[-1] if losses else None, "script_s": round(time.perf_counter() - STARTED, 1)}))


if __name__ == "__main__":
    main()
