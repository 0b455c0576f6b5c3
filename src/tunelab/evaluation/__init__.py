"""Evaluation: predict (batched generation, one-pass label scoring, perplexity), score, compare, report."""

from tunelab.evaluation.compare import Comparison, MetricComparison, compare_evaluations, compare_files
from tunelab.evaluation.evaluate import evaluate
from tunelab.evaluation.result import EvalResult

__all__ = ["Comparison", "EvalResult", "MetricComparison", "compare_evaluations", "compare_files", "evaluate"]
