"""Evaluation: predict (batched generation, one-pass label scoring, perplexity), score, compare, report.

The names below are imported on first use (PEP 562 ``__getattr__``), so a command that only reads a
stored comparison (``tunelab show``) does not import torch through ``evaluate``.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Comparison": "compare",
    "MetricComparison": "compare",
    "compare_evaluations": "compare",
    "compare_files": "compare",
    "evaluate": "evaluate",
    "EvalResult": "result",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"tunelab.evaluation.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'tunelab.evaluation' has no attribute {name!r}")
