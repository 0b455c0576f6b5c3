"""Evaluation: predict (batched generation, one-pass label scoring, perplexity), score, compare, report.

The names below are imported on first use (PEP 562 ``__getattr__``), so importing one light submodule (the verdict's
``compare.MIN_TEST_EXAMPLES`` for ``tunelab data split``) does not import torch through ``evaluate``.
"""

from __future__ import annotations

import importlib
import sys
import types
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
    if name not in _WHERE:
        raise AttributeError(f"module 'tunelab.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tunelab.evaluation.{_WHERE[name]}"), name)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Importing a submodule binds it on its package: `tunelab.evaluation.evaluate` would then be the module once
        # anything imported it, where it has always been the function (`from tunelab.evaluation import evaluate`).
        if name in _WHERE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
