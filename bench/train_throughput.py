"""Real tokens/s of tunelab's training loop on the default model (LoRA r=16 all-linear, batch 8).

Trains on 256-token windows of tinyshakespeare (``text`` task, so every row is a full 8x256 batch of
real tokens) and reports the loop's own tokens/s (training time only, validation and checkpoints
excluded). Run::

    PYTHONPATH=src python bench/train_throughput.py --steps 12 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.config import parse_config
from tunelab.data.records import TextRecord
from tunelab.tasks import run_training

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


@dataclass
class _Split:
    train: list
    validation: list = field(default_factory=list)
    test: list = field(default_factory=list)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "auto"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    if not DATA.is_file():
        sys.exit(f"needs {DATA}")
    text = DATA.read_text(encoding="utf-8")
    # Paragraph documents, long enough that windows are full max_length rows.
    documents = [TextRecord(text[i : i + 4000], source=f"input.txt@{i}") for i in range(0, 4000 * 60, 4000)]
    config = parse_config({
        "task": "text", "model": args.model, "data": {"max_length": args.max_length},
        "train": {"method": "lora", "batch_size": args.batch_size, "max_steps": args.steps, "precision": args.precision,
                  "log_every": args.steps, "save_every": args.steps, "eval_every": args.steps},
        "lora": {"r": 16, "alpha": 32, "target_modules": "all-linear"},
    })
    with tempfile.TemporaryDirectory() as folder:
        result = run_training(config, _Split(documents), run_dir=Path(folder) / "run")
    print(json.dumps({
        "tokens_per_second": round(result.tokens_per_second, 1), "steps": result.steps, "tokens": result.tokens,
        "seconds": round(result.seconds, 1), "precision": result.precision, "final_loss": result.final_loss,
        "batch": f"{args.batch_size}x{args.max_length}",
    }))


if __name__ == "__main__":
    main()
