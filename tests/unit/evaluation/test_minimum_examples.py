"""No verdict from too few examples: the rule in the verdict, what it names, and the warning at the split step."""

import numpy as np
import pytest

from tunelab.config import parse_config
from tunelab.data.split import make_split
from tunelab.evaluation.compare import (
    MIN_TEST_EXAMPLES,
    TOO_FEW,
    compare_evaluations,
    compare_with_baselines,
    examples_needed,
)
from tunelab.evaluation.result import EvalResult
from tunelab.tasks.pipeline import too_few_test_examples


def _classify(name, correct):
    rows = [{"id": f"x{i}", "source": f"t:{i}", "prompt": "p", "reference": "a", "prediction": "a" if ok else "b",
             "scores": {"correct": float(ok), "confidence": 0.9}} for i, ok in enumerate(correct)]
    return EvalResult("classify", name, len(rows), {}, rows, labels=["a", "b"], test_fingerprint="same")


def _text(name, nll):
    rows = [{"id": f"d{i}", "source": f"d:{i}", "prompt": "", "reference": "", "prediction": "",
             "scores": {"nll": float(v), "tokens": 100, "bytes": 400, "perplexity": float(np.exp(v / 100))}} for i, v in enumerate(nll)]
    return EvalResult("text", name, len(rows), {}, rows, test_fingerprint="same")


def test_a_verdict_from_fewer_than_the_minimum_says_too_few_and_how_many_would_be_needed():
    n = MIN_TEST_EXAMPLES - 1
    opponent = _classify("classical", [i % 3 == 0 for i in range(n)])
    tuned = _classify("tuned", [True] * n)  # far better: significant by the interval alone
    verdict = compare_with_baselines({"classical": opponent}, tuned, samples=500)
    assert verdict.against("classical").low > 0  # the bootstrap alone would have said "paid off"
    assert verdict.verdict == TOO_FEW and not verdict.paid_off
    needed = examples_needed(verdict.against("classical"), n)
    assert f"n={n}" in verdict.summary and f"about {needed} test examples" in verdict.summary
    assert compare_evaluations(opponent, tuned, samples=500).verdict == TOO_FEW

    enough = MIN_TEST_EXAMPLES
    verdict = compare_with_baselines({"classical": _classify("c", [i % 3 == 0 for i in range(enough)])},
                                     _classify("t", [True] * enough), samples=500)
    assert verdict.paid_off


def test_the_rule_holds_for_every_opponent_not_only_the_first_listed():
    # A baseline file evaluated on fewer rows (tunelab eval --limit, then tunelab report) pairs with the tuned model
    # on those rows only: 20 shared examples were judged "paid off" because the first baseline shared 40.
    enough, few = MIN_TEST_EXAMPLES + 10, MIN_TEST_EXAMPLES - 10
    tuned = _classify("tuned", [True] * enough)
    base = _classify("base", [i % 3 == 0 for i in range(enough)])
    classical = _classify("classical", [i % 3 == 0 for i in range(few)])
    classical.test_fingerprint = "fewer"
    verdict = compare_with_baselines({"base": base, "classical": classical}, tuned, samples=500)
    assert verdict.comparisons["classical"].n == few and verdict.against("classical").low > 0
    assert verdict.verdict == TOO_FEW and not verdict.paid_off
    assert verdict.n == few and f"n={few}" in verdict.summary and "against classical" in verdict.summary


def test_the_same_rule_holds_for_text_documents():
    documents = _text("base", [300.0] * 5), _text("tuned", [200.0] * 5)
    verdict = compare_with_baselines({"base": documents[0]}, documents[1], samples=200)
    assert verdict.verdict == TOO_FEW and "n=5" in verdict.summary


def test_examples_needed_scales_the_standard_error_by_one_over_root_n():
    from tunelab.evaluation.compare import MetricComparison

    # 95% interval +-0.1 at n=100 -> standard error 0.1/1.96; detecting 0.05 at 80% power needs n*(2.8016*se/0.05)^2.
    metric = MetricComparison("accuracy", 0.5, 0.55, 0.05, -0.05, 0.15, True)
    expected = int(np.ceil(100 * ((1.959964 + 0.841621) * (0.1 / 1.959964) / 0.05) ** 2))
    assert examples_needed(metric, 100) == expected
    assert examples_needed(MetricComparison("accuracy", 0.5, 0.5, 0.0, 0.0, 0.0, True), 10) is None


@pytest.mark.parametrize("task, rows", [
    ("classify", [{"text": f"request {i}", "label": "ab"[i % 2]} for i in range(60)]),
    ("preference", [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(11)]),
])
def test_the_split_step_warns_before_any_compute_when_the_test_split_is_too_small(tmp_path, task, rows):
    import json

    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = parse_config({"task": task, "data": {"train": str(path)}})
    split = make_split(config)
    message = too_few_test_examples(config, split)
    assert len(split.test) < MIN_TEST_EXAMPLES
    unit = "pairs" if task == "preference" else "examples"
    assert message is not None and f"the test split has {len(split.test)} {unit}" in message and "data.test_size" in message
    bigger = parse_config({"task": task, "data": {"train": str(path), "test_size": 0.6}})
    if len(make_split(bigger).test) >= MIN_TEST_EXAMPLES:
        assert too_few_test_examples(bigger, make_split(bigger)) is None


def test_the_report_and_the_cli_table_call_no_baseline_beaten_under_the_minimum():
    # report.md/html's "outcome for the tuned model" said "better" against base at n=8 (the CLI coloured the cell
    # green) while the verdict above it said "too few test examples to decide".
    from rich.console import Console

    from tunelab.cli.common import verdict_rich_table
    from tunelab.evaluation.report import opponent_table

    n = MIN_TEST_EXAMPLES - 1
    base = _classify("base", [i % 3 == 0 for i in range(n)])
    verdict = compare_with_baselines({"base": base}, _classify("tuned", [True] * n), samples=500)
    assert verdict.against("base").outcome == "better"  # the interval alone excludes zero
    header, rows = opponent_table(verdict)
    assert rows[0][header.index("outcome for the tuned model")] == TOO_FEW
    console = Console(record=True, color_system="standard", force_terminal=True, width=200)
    console.print(verdict_rich_table(verdict.to_dict(), tuned="tuned"))
    assert "\x1b[32m" not in console.export_text(styles=True)  # green: a baseline beaten


def test_the_split_warning_names_data_max_test_examples_when_that_cap_makes_the_test_split_small(tmp_path):
    # max_test_examples=5 on a 40-row test split: the warning said "raise data.test_size, or give data.test", neither of
    # which changes the 5 examples scored.
    import json

    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"request {i}", "label": "ab"[i % 2]}) for i in range(200)) + "\n")
    config = parse_config({"task": "classify", "data": {"train": str(path), "test_size": 0.2, "max_test_examples": 5}})
    split = make_split(config)
    assert len(split.test) >= MIN_TEST_EXAMPLES
    message = too_few_test_examples(config, split)
    # The split step's own line says "test 40" beside it: the warning names both counts, never "the test split has 5".
    assert message is not None and f"the test split has {len(split.test)} examples, 5 of them evaluated (data.max_test_examples)" in message
    assert "raise data.max_test_examples" in message
