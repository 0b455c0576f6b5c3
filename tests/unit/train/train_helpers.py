"""Shared by the training tests and the scripts they run in subprocesses (resume, two processes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunelab.config import parse_config
from tunelab.data.records import ClassifyRecord, SFTRecord


@dataclass
class SimpleSplit:
    """What the training recipes read from a split: record lists (the data layer's Split has more)."""

    train: list
    validation: list = field(default_factory=list)
    test: list = field(default_factory=list)
    fingerprint: str = "test"

    def save(self, path: Path) -> None:
        import json

        ids = {name: [r.id for r in getattr(self, name)] for name in ("train", "validation", "test")}
        path.write_text(json.dumps({"fingerprint": self.fingerprint, **ids}))


def sft_records(n: int = 12) -> list[SFTRecord]:
    return [
        SFTRecord(({"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"It is {2 * i}."}))
        for i in range(n)
    ]


def classify_records(n: int = 12) -> list[ClassifyRecord]:
    texts = {"billing": "my card was charged twice", "shipping": "my parcel has not arrived", "login": "cannot log in"}
    labels = sorted(texts)
    return [ClassifyRecord(f"{texts[labels[i % 3]]} ({i})", labels[i % 3]) for i in range(n)]


def tiny_config(model_dir: Path, task: str = "sft", **train):
    settings = {"batch_size": 4, "lr": 5e-3, "max_steps": 6, "log_every": 1, "precision": "fp32", "seed": 0}
    settings.update(train)
    lora = settings.pop("lora", {})
    return parse_config(
        {"task": task, "model": str(model_dir), "data": {"max_length": 64}, "train": settings, "lora": lora}
    )
