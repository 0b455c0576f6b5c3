"""Shared by the training tests and the scripts they run in subprocesses (resume, two processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunelab.config import parse_config
from tunelab.data.records import ClassifyRecord, SFTRecord
from tunelab.data.split import Split


def records_split(train: list, validation: list | None = None, test: list | None = None) -> Split:
    """A real Split of these records (no file read): what the recipes train on."""
    task = "classify" if isinstance(train[0], ClassifyRecord) else "sft"
    return Split(task, list(train), list(validation or []), list(test or []))


def sft_records(n: int = 12) -> list[SFTRecord]:
    return [
        SFTRecord(({"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"It is {2 * i}."}))
        for i in range(n)
    ]


def classify_records(n: int = 12) -> list[ClassifyRecord]:
    texts = {"billing": "my card was charged twice", "shipping": "my parcel has not arrived", "login": "cannot log in"}
    labels = sorted(texts)
    return [ClassifyRecord(f"{texts[labels[i % 3]]} ({i})", labels[i % 3]) for i in range(n)]


def tiny_config(model_dir: Path, task: str = "sft", max_length: int = 64, **train):
    settings = {"batch_size": 4, "lr": 5e-3, "max_steps": 6, "log_every": 1, "precision": "fp32", "seed": 0}
    settings.update(train)
    lora = settings.pop("lora", {})
    return parse_config(
        {"task": task, "model": str(model_dir), "data": {"max_length": max_length}, "train": settings, "lora": lora}
    )


def assert_same_training(a: Path, b: Path) -> None:
    """Two runs of the same steps agree: every step's loss, and the weights up to Adam's amplified rounding
    (an element whose gradient is near zero can move by up to lr on noise; a lost or doubled pass moves them all)."""
    def losses(run_dir: Path) -> list[float]:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [row["loss"] for row in rows if "loss" in row]

    losses_a, losses_b = losses(a), losses(b)
    assert len(losses_a) == len(losses_b) >= 3 and losses_b == pytest.approx(losses_a, rel=1e-4)
    weights_a = load_file(str(a / "adapter" / "adapter_model.safetensors"))
    weights_b = load_file(str(b / "adapter" / "adapter_model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        close = torch.isclose(weights_b[key], weights_a[key], rtol=1e-3, atol=1e-5)
        assert close.float().mean() >= 0.99, key
