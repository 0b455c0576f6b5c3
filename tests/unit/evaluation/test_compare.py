import numpy as np
import pytest

from tunelab.errors import DataError
from tunelab.evaluation.compare import Comparison, compare_evaluations, compare_files
from tunelab.evaluation.metrics import corpus_statistics, sft_example_scores
from tunelab.evaluation.result import EvalResult


def _classify(name, correct, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i, ok in enumerate(correct):
        reference = "ab"[i % 2]
        prediction = reference if ok else "ab"[(i + 1) % 2]
        rows.append(
            {"id": f"x{i}", "source": f"t:{i}", "prompt": "p", "reference": reference, "prediction": prediction,
             "scores": {"correct": float(ok), "confidence": float(rng.uniform(0.5, 1))}}
        )
    return EvalResult("classify", name, len(rows), {}, rows, labels=["a", "b"], test_fingerprint="same")


def _constructed(n=200):
    rng = np.random.default_rng(1)
    base = _classify("base", rng.random(n) < 0.5)
    tuned = _classify("tuned", rng.random(n) < 0.85)
    return base, tuned


def test_bootstrap_is_reproducible_with_a_seed_and_finds_the_right_sign():
    base, tuned = _constructed()
    first = compare_evaluations(base, tuned, seed=3, samples=500)
    again = compare_evaluations(base, tuned, seed=3, samples=500)
    assert first.to_dict() == again.to_dict()
    assert Comparison.from_dict(first.to_dict()).to_dict() == first.to_dict()
    accuracy = first.metric("accuracy")
    assert accuracy.low > 0 and accuracy.high > accuracy.low
    assert accuracy.low < accuracy.difference < accuracy.high
    assert first.verdict == "better"
    assert first.metric("macro_f1").low > 0
    other = compare_evaluations(base, tuned, seed=4, samples=500).metric("accuracy")
    assert (other.low, other.high) != (accuracy.low, accuracy.high)  # the seed matters
    assert compare_evaluations(tuned, base, seed=3, samples=500).verdict == "worse"


def test_identical_evaluations_are_no_significant_difference():
    base, _ = _constructed()
    comparison = compare_evaluations(base, base, samples=200)
    assert comparison.verdict == "no significant difference"
    assert comparison.metric("accuracy").low == comparison.metric("accuracy").high == 0


def test_small_noisy_difference_is_not_significant():
    rng = np.random.default_rng(5)
    correct = rng.random(30) < 0.6
    flipped = correct.copy()
    flipped[:2] = ~flipped[:2]
    comparison = compare_evaluations(_classify("a", correct), _classify("b", flipped), samples=500)
    assert comparison.verdict == "no significant difference"


def _text(name, nll_per_token, n=40):
    rows = [{"id": f"d{i}", "source": "", "prompt": "", "reference": "", "prediction": "",
             "scores": {"nll": nll_per_token * (10 + i) * (1 + 0.1 * np.sin(i)), "tokens": 10 + i, "bytes": 40 + 4 * i}} for i in range(n)]
    return EvalResult("text", name, n, {}, rows)


def test_lower_perplexity_is_better():
    comparison = compare_evaluations(_text("base", 3.0), _text("tuned", 2.0), samples=300)
    perplexity = comparison.metric("perplexity")
    assert perplexity.before == pytest.approx(np.exp(3.0), rel=0.05)
    assert perplexity.high < 0
    assert comparison.verdict == "better"
    assert comparison.metric("bits_per_byte").outcome == "better"


def _sft(name, predictions, references):
    stats = corpus_statistics(predictions, [[r] for r in references])
    rows = []
    for i, (p, r) in enumerate(zip(predictions, references, strict=True)):
        scores = {**sft_example_scores(p, [r]), "bleu_stats": stats["bleu"][i], "chrf_stats": stats["chrf"][i]}
        rows.append({"id": f"s{i}", "source": "", "prompt": "q", "reference": r, "prediction": p, "scores": scores})
    return EvalResult("sft", name, len(rows), {}, rows)


def test_sft_comparison_round_trips_through_files(tmp_path):
    references = [f"the answer number {i} is here" for i in range(30)]  # MIN_TEST_EXAMPLES: fewer is no verdict
    base = _sft("base", ["something else entirely"] * 30, references)
    tuned = _sft("tuned", [r if i % 5 else "wrong" for i, r in enumerate(references)], references)
    comparison = compare_files(base.save(tmp_path / "a.json"), tuned.save(tmp_path / "b.json"), samples=200)
    assert comparison.verdict == "better"
    assert comparison.metric("bleu").low > 0 and comparison.metric("chrf").low > 0
    assert comparison.metric("length").outcome in ("changed", "no significant difference")
    assert "rougeL" in comparison.summary


def test_mismatched_evaluations_are_clear_errors(tmp_path):
    base, _ = _constructed()
    with pytest.raises(DataError, match="cannot compare"):
        compare_evaluations(base, _text("t", 2.0))
    with pytest.raises(DataError, match="share no test example"):
        compare_evaluations(base, EvalResult("classify", "o", 1, {}, [{**base.rows[0], "id": "zzz"}]))
    with pytest.raises(DataError, match="not found"):
        compare_files(tmp_path / "missing.json", tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="not a tunelab evaluation"):
        EvalResult.load(tmp_path / "bad.json")


def test_partial_overlap_is_compared_with_a_warning():
    base, tuned = _constructed()
    tuned.rows = tuned.rows[:150]
    tuned.test_fingerprint = "other"
    comparison = compare_evaluations(base, tuned, samples=200)
    assert comparison.n == 150
    assert "different test sets" in comparison.warnings[0]


def test_verdict_is_never_paid_off_while_a_baseline_is_significantly_better():
    from tunelab.evaluation.compare import PAID_OFF, compare_with_baselines

    rng = np.random.default_rng(11)
    seen = set()
    for trial in range(40):
        n = int(rng.integers(30, 120))
        tuned = _classify("tuned", rng.random(n) < rng.uniform(0.3, 0.9), seed=trial)
        opponents = {name: _classify(name, rng.random(n) < rng.uniform(0.2, 0.95), seed=trial + 100)
                     for name in ("base", "classical", "few_shot")[: int(rng.integers(1, 4))]}
        verdict = compare_with_baselines(opponents, tuned, seed=trial, samples=200)
        outcomes = {name: verdict.against(name).outcome for name in opponents}
        # Each comparison is the same paired bootstrap as compare_evaluations.
        for name, result in opponents.items():
            assert verdict.comparisons[name].to_dict() == compare_evaluations(result, tuned, seed=trial, samples=200).to_dict()
        significantly_better = [name for name, outcome in outcomes.items() if outcome == "worse"]
        assert verdict.paid_off == all(outcome == "better" for outcome in outcomes.values())
        if significantly_better:
            assert verdict.verdict != PAID_OFF and not verdict.paid_off
            winner = verdict.verdict.removeprefix("use ").removesuffix(" instead")
            assert winner in significantly_better
            assert verdict.against(winner).before == max(verdict.against(b).before for b in significantly_better)
            assert f"use {winner} instead: it wins by" in verdict.summary
        elif not verdict.paid_off:
            assert verdict.verdict == "no significant difference"
        accuracies = {name: verdict.against(name).before for name in opponents}
        assert accuracies[verdict.strongest] == max(accuracies.values())
        seen.add(verdict.verdict.split()[0])
    assert seen == {"fine-tuning", "use", "no"}  # the trials reach all three verdicts


def test_verdict_for_lower_is_better_metrics_and_round_trip():
    from tunelab.evaluation.compare import Verdict, compare_with_baselines

    verdict = compare_with_baselines({"base": _text("base", 3.0), "other": _text("other", 1.5)}, _text("tuned", 2.0), samples=300)
    assert verdict.strongest == "other" and verdict.verdict == "use other instead"
    lead = verdict.against("other")
    assert f"wins by {lead.difference:.4g} perplexity" in verdict.summary  # tuned - other > 0: other's lead
    assert Verdict.from_dict(verdict.to_dict()).to_dict() == verdict.to_dict()
    paid = compare_with_baselines({"base": _text("base", 3.0)}, _text("tuned", 2.0), samples=300)
    assert paid.paid_off and paid.summary.startswith("fine-tuning paid off")
    with pytest.raises(DataError, match="no baseline"):
        compare_with_baselines({}, _text("tuned", 2.0))


def test_one_non_inferiority_rule_for_retrain_and_distillation():
    """retrain called a difference whose interval ends exactly at -margin non-inferior, distillation did not, and
    distillation read a metric without a direction as lower-is-better: one rule now, used by both."""
    import inspect

    from tunelab.evaluation.compare import MetricComparison
    from tunelab.tasks import distill, retrain

    at_margin = MetricComparison("accuracy", 0.8, 0.78, -0.02, -0.05, 0.01, True)
    assert not at_margin.non_inferior(0.05) and at_margin.non_inferior(0.06)
    lower = MetricComparison("perplexity", 10.0, 10.2, 0.2, -0.1, 0.4, False)
    assert lower.worst_case() == pytest.approx(-0.4) and lower.non_inferior(0.5) and not lower.non_inferior(0.3)
    undirected = MetricComparison("length", 1.0, 1.0, 0.0, -0.01, 0.02, None)
    assert undirected.non_inferior(0.05)  # read as higher-is-better, as retrain always did
    assert not MetricComparison("accuracy", 0.8, 0.8, 0.0, float("nan"), float("nan"), True).non_inferior(0.05)
    for module in (retrain, distill):
        assert ".non_inferior(" in inspect.getsource(module)


def test_the_verdict_keeps_the_tuned_models_test_fingerprint():
    # What `tunelab compare RUN RUN` checks (through the registry's comparison column) before setting runs side by side.
    from tunelab.evaluation.compare import Verdict, compare_with_baselines

    base, tuned = _constructed(60)
    tuned.test_fingerprint = "fp-of-the-split"
    verdict = compare_with_baselines({"base": base}, tuned, samples=200)
    assert verdict.test_fingerprint == "fp-of-the-split"
    assert verdict.to_dict()["test_fingerprint"] == "fp-of-the-split"
    assert Verdict.from_dict(verdict.to_dict()).test_fingerprint == "fp-of-the-split"


def test_between_baselines_tied_on_the_primary_metric_the_strongest_is_the_one_the_verdict_names():
    from tunelab.evaluation.compare import compare_with_baselines

    # classical and embedding both get 42 of 60 right, the tuned model 36; only embedding is significantly better (it is
    # right wherever the tuned model is, and on 6 more), classical is right and wrong on other examples. The report
    # labelled classical "(strongest)" and said "use embedding instead ...; the strongest opponent, classical 0.7 vs
    # tuned 0.6, is not significantly better".
    n = 60
    tuned_right = [i < 36 for i in range(n)]
    embedding_right = [i < 42 for i in range(n)]
    classical_right = [i >= 36 or i < 18 for i in range(n)]
    assert sum(classical_right) == sum(embedding_right) == 42
    opponents = {"classical": _classify("classical", classical_right, seed=1), "embedding": _classify("embedding", embedding_right, seed=2)}
    verdict = compare_with_baselines(opponents, _classify("tuned", tuned_right, seed=3), samples=500)
    assert verdict.against("embedding").outcome == "worse"
    assert verdict.verdict == "use embedding instead"
    assert verdict.strongest == "embedding"
    assert "the strongest opponent" not in verdict.summary


def test_a_margin_is_a_share_of_a_bounded_metric_and_relative_on_an_unbounded_one():
    # One rule for every non-inferiority judgement: 0.02 is two points of accuracy, two BLEU points of 100, and 2% of a
    # perplexity (an absolute 0.02 of perplexity 12.3 would be noise).
    from tunelab.evaluation.compare import MetricComparison, compare_evaluations
    from tunelab.evaluation.result import EvalResult

    rows = [{"id": f"d{i}", "scores": {"nll": 50 * 2.5 + (i % 7), "tokens": 50.0, "bytes": 200.0}} for i in range(60)]
    result = EvalResult("text", "a", 60, {}, rows)
    perplexity = compare_evaluations(result, result).metric("perplexity")
    assert perplexity.allowance(0.02) == pytest.approx(0.02 * perplexity.before) and "2% of" in perplexity.describe_margin(0.02)
    worse = MetricComparison("perplexity", 12.3, 12.5, 0.2, 0.15, 0.25, False, full_scale=None)
    assert not worse.non_inferior(0.02) and worse.non_inferior(0.03)  # 0.25 is over 2% of 12.3 (0.246), under 3%
    assert MetricComparison("bleu", 30.0, 29.0, -1.0, -1.5, -0.5, True, full_scale=100.0).non_inferior(0.02)
    assert not MetricComparison("accuracy", 0.9, 0.89, -0.01, -0.03, 0.01, True).non_inferior(0.02)
