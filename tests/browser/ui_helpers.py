"""Helpers of the browser tests: screenshots kept as artefacts (and checked), and the tiny classify run configs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import yaml

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
WORDS = {"A": ["apple", "pear", "plum", "fruit"], "B": ["billing", "account", "card", "refund"]}
SCREEN = {"width": 1400, "height": 1000}


def shot(page, name: str) -> Path:
    """Keep a full-page screenshot as a test artefact."""
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def check_screen(page, name: str) -> Path:
    """The page at 1400x1000 as a person first sees it: kept as ``<name>-1400x1000.png``, with what must hold.

    Nothing wider than the screen (no sideways scrolling of the page: wide tables scroll in their own box),
    no script error, and the screenshot really is 1400x1000.
    """
    page.set_viewport_size(SCREEN)
    page.wait_for_timeout(300)  # charts redraw on resize
    path = ARTIFACTS / f"{name}-1400x1000.png"
    page.screenshot(path=str(path), full_page=False)
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    assert (width, height) == (1400, 1000), (width, height)
    overflow = page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= SCREEN["width"], f"{name}: the page is {overflow} px wide at a 1400 px window"
    errors = getattr(page, "script_errors", [])
    assert not errors, f"{name}: script errors {errors}"
    shot(page, name)
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
        # The base model is scored although it answers at chance (eval.skip_hopeless would skip it): the review is then
        # against it. Against the strongest baseline (classical, every test row right) the tuned model of 'longer'
        # answers all 12 test rows the same, which leaves the review test no row to ask.
        "eval": {"bootstrap_samples": 200, "skip_hopeless": False},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
