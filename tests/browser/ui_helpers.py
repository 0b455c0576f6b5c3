"""Helpers of the browser tests: screenshots kept as artefacts, and the tiny classify run configs."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
WORDS = {"A": ["apple", "pear", "plum", "fruit"], "B": ["billing", "account", "card", "refund"]}


def shot(page, name: str) -> Path:
    """Keep a full-page screenshot as a test artefact."""
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def write_config(folder: Path, model_dir: Path, name: str, **train) -> Path:
    rows = [
        {"text": f"{WORDS['AB'[i % 2]][i % 4]} {WORDS['AB'[i % 2]][(i // 2) % 4]} number {i}", "label": "AB"[i % 2]} for i in range(48)
    ]
    data = folder / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = {
        "task": "classify", "model": str(model_dir), "name": name,
        "data": {"train": str(data), "test_size": 0.25, "validation_size": 0.1, "max_length": 64},
        "train": {"method": "full", "lr": 3e-3, "epochs": 2, "batch_size": 8, "output_dir": str(folder / "runs"), **train},
        "eval": {"bootstrap_samples": 200},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
