"""The learning curve: the bounded power-law fit, its bootstrap band, the crossing point, against hand computations."""

import numpy as np
import pytest

from tunelab.evaluation.curve import (
    PowerLaw,
    crossing_point,
    difference_at,
    fit_curve,
    fit_power_law,
    fit_power_laws,
    flat_curve,
    projection_flags,
    resampled_scores,
)

SIZES = [20, 40, 80, 160]


def _exact(law, sizes=SIZES):
    return [float(v) for v in law(sizes)]


def test_exact_power_law_points_give_back_their_parameters():
    # 0.9 - 1.0 * n^-0.5 at 20, 40, 80, 160 = 0.67639, 0.74189, 0.78820, 0.82094 (by hand: 1/sqrt(20) = 0.22361 ...)
    scores = _exact(PowerLaw(0.9, 1.0, 0.5))
    assert scores[0] == pytest.approx(0.9 - 1 / 20**0.5)
    law = fit_power_law(SIZES, scores, best=1.0)
    assert (law.a, law.b, law.c) == pytest.approx((0.9, 1.0, 0.5), abs=1e-5)
    # The vectorised fit (the bootstrap's) lands on the grid value nearest 0.5: within one 1 % grid step.
    a, b, c = fit_power_laws(SIZES, np.array([scores]), best=1.0)[0]
    assert c == pytest.approx(0.5, rel=0.01) and a == pytest.approx(0.9, abs=0.005)


def test_lower_is_better_metrics_fit_the_mirrored_law():
    # perplexity 5 + 20 * n^-0.5: falls towards 5, never below the metric's best (1).
    scores = _exact(PowerLaw(5.0, 20.0, 0.5, higher_is_better=False))
    law = fit_power_law(SIZES, scores, best=1.0, higher_is_better=False)
    assert (law.a, law.b, law.c) == pytest.approx((5.0, 20.0, 0.5), abs=1e-4)
    assert not law.higher_is_better and law(1e9) == pytest.approx(5.0, abs=1e-3)


def test_the_asymptote_never_promises_more_than_the_metric_allows():
    # Scores that rise by 0.2 for every 10x of data would pass 1.0 on a straight line in log n.
    sizes, scores = [10, 100, 1000], [0.5, 0.7, 0.9]
    law = fit_power_law(sizes, scores, best=1.0)
    assert law.a <= 1.0 + 1e-12 and law(1e7) <= 1.0
    # With a = 1 the best fit for 3 points is found on the bound; the residuals are what is left.
    assert law.a == pytest.approx(1.0)


def test_falling_points_fit_a_flat_curve_at_their_mean():
    # b >= 0: more data never makes the fitted score worse. Least squares with b = 0 is the mean, 0.7.
    law = fit_power_law([10, 20, 40], [0.8, 0.7, 0.6], best=1.0)
    assert law.b == pytest.approx(0.0) and law.a == pytest.approx(0.7)


def test_the_closed_form_matches_a_direct_least_squares_with_bounds():
    from scipy.optimize import least_squares

    rng = np.random.default_rng(3)
    scores = np.array(_exact(PowerLaw(0.85, 0.9, 0.4))) + rng.normal(0, 0.01, 4)
    law = fit_power_law(SIZES, scores, best=1.0)
    n = np.array(SIZES, dtype=float)
    direct = least_squares(lambda p: p[0] - p[1] * n ** -p[2] - scores, x0=[0.9, 1.0, 0.5],
                           bounds=([-np.inf, 0.0, 0.05], [1.0, np.inf, 2.0]))
    ours = ((law(n) - scores) ** 2).sum()
    assert ours <= (direct.fun**2).sum() + 1e-12


def _rows(correct):
    return [{"id": f"r{i}", "reference": "a", "prediction": "a" if c else "b", "scores": {"correct": float(c), "confidence": 0.9}}
            for i, c in enumerate(correct)]


def test_resampled_scores_are_each_points_metric_on_shared_resamples():
    first, second = _rows([1, 0, 1, 1]), _rows([1, 1, 1, 1])
    full, resampled = resampled_scores("classify", [first, second], "accuracy", samples=500, seed=0)
    assert full.tolist() == [0.75, 1.0]
    assert resampled.shape == (500, 2)
    assert (resampled[:, 1] == 1.0).all() and 0 < resampled[:, 0].mean() < 1
    # The same resample for both points: where the first point resampled the wrong row only, it reads 0.
    assert (resampled[:, 0] <= resampled[:, 1]).all()
    with pytest.raises(ValueError, match="same rows"):
        resampled_scores("classify", [first, _rows([1, 1, 1])], "accuracy", samples=10, seed=0)


def _simulated_curve(rows, seed=0, law=PowerLaw(0.9, 1.0, 0.5)):
    rng = np.random.default_rng(seed)
    points = []
    uniform = rng.random(rows)
    for n in SIZES:  # each size answers correctly the rows below its accuracy: nested, as more data helps
        points.append(_rows(uniform < law(n)))
    full, resampled = resampled_scores("classify", points, "accuracy", samples=1000, seed=seed)
    return fit_curve("tuned", SIZES, full.tolist(), resampled, metric="accuracy")


def test_the_band_holds_the_fit_and_narrows_with_more_validation_rows():
    few, many = _simulated_curve(60), _simulated_curve(3000)
    for curve in (few, many):
        low, high = curve.band([320])
        assert low[0] <= curve.value([320])[0] <= high[0]

    def width(curve):
        low, high = curve.band([320])
        return float(high[0] - low[0])

    assert width(many) < width(few) / 3
    # 3000 rows pin the true curve (0.9 - 1/sqrt(320) = 0.844) down within its band.
    low, high = many.band([320])
    assert low[0] <= 0.9 - 320**-0.5 <= high[0]
    assert any("wide band" in flag for flag in projection_flags(few, 320, "accuracy"))
    assert not any("wide band" in flag for flag in projection_flags(many, 320, "accuracy"))
    assert any("long extrapolation" in flag for flag in projection_flags(many, 1600, "accuracy"))


def test_too_few_points_say_so_and_three_points_are_flagged():
    resampled = np.tile([0.5, 0.6], (10, 1))
    flat = fit_curve("tuned", [10, 20], [0.5, 0.6], resampled, metric="accuracy")
    assert flat.law is None and "too few for a curve" in flat.flags[0]
    assert flat.value([1000])[0] == 0.6
    three = fit_curve("tuned", [10, 20, 40], [0.5, 0.6, 0.65], np.tile([0.5, 0.6, 0.65], (10, 1)), metric="accuracy")
    assert three.law is not None and any("passes through them" in flag for flag in three.flags)
    falling = fit_curve("tuned", [10, 20, 40, 80], [0.5, 0.6, 0.55, 0.7], np.tile([0.5, 0.6, 0.55, 0.7], (10, 1)), metric="accuracy")
    assert any("fell between two sizes" in flag for flag in falling.flags)


def _curve(law, samples=20):
    return fit_curve("tuned", SIZES, _exact(law), np.tile(_exact(law), (samples, 1)), metric="accuracy")


def test_the_crossing_with_a_flat_opponent_is_where_the_law_reaches_it():
    # 0.9 - n^-0.5 = 0.8  <=>  n^-0.5 = 0.1  <=>  n = 100.
    tuned = _curve(PowerLaw(0.9, 1.0, 0.5))
    opponent = flat_curve("classical", 160, 0.8, np.full(20, 0.8))
    crossing = crossing_point(tuned, [opponent], start=20, limit=1600)
    assert crossing.size == pytest.approx(100.0, rel=1e-6)
    assert crossing.opponent == "classical" and not crossing.ahead_at_start
    # Every resample is the same exact curve: the range is the grid step around 100.
    assert crossing.low == pytest.approx(100, rel=0.02) and crossing.high == pytest.approx(100, rel=0.02)


def test_the_crossing_with_an_opponent_that_learns_too():
    # (0.95 - 2 n^-0.5) - (0.85 - 0.5 n^-0.5) = 0.1 - 1.5 n^-0.5 >= 0  <=>  n >= 15^2 = 225.
    tuned = _curve(PowerLaw(0.95, 2.0, 0.5))
    classical = _curve(PowerLaw(0.85, 0.5, 0.5))
    classical.name = "classical"
    base = flat_curve("base", 160, 0.1, np.full(20, 0.1))
    crossing = crossing_point(tuned, [base, classical], start=20, limit=1600)
    assert crossing.size == pytest.approx(225.0, rel=1e-5) and crossing.opponent == "classical"


def test_no_crossing_within_ten_times_the_data_and_ahead_from_the_start():
    tuned = _curve(PowerLaw(0.8, 1.0, 0.5))
    crossing = crossing_point(tuned, [flat_curve("classical", 160, 0.85, np.full(20, 0.85))], start=20, limit=1600)
    assert crossing.size is None and crossing.high is None and crossing.low is None
    ahead = crossing_point(_curve(PowerLaw(0.9, 0.1, 0.5)), [flat_curve("base", 160, 0.5, np.full(20, 0.5))], start=20, limit=1600)
    assert ahead.ahead_at_start and ahead.size == 20


def test_a_curve_that_is_ahead_only_for_a_while_has_not_reached_the_opponent():
    # (0.8 - 10/n) - (0.9 - 2.5/sqrt(n)) = -(10 x^2 - 2.5 x + 0.1) with x = 1/sqrt(n) = -10 (x - 0.2)(x - 0.05):
    # level at n = 25 and n = 400, ahead between them, behind below 25 and above 400 (at 1600: 0.794 vs 0.8375).
    tuned = _curve(PowerLaw(0.8, 10.0, 1.0))
    embedding = _curve(PowerLaw(0.9, 2.5, 0.5))
    embedding.name = "embedding"
    # Behind again at the limit: more data of this kind leaves it behind, so no crossing within the limit.
    crossing = crossing_point(tuned, [embedding], start=20, limit=1600)
    assert crossing.size is None and crossing.high is None and not crossing.ahead_at_start
    # Where it falls behind for good is said, so that an advice ahead at the user's size is not told "never reached".
    assert crossing.behind_from == pytest.approx(400.0, rel=1e-5)
    assert crossing_point(_curve(PowerLaw(0.8, 1.0, 0.5)), [flat_curve("classical", 160, 0.85, np.full(20, 0.85))],
                          start=20, limit=1600).behind_from is None  # behind everywhere: never ahead
    assert not crossing_point(tuned, [embedding], start=100, limit=1600).ahead_at_start
    # Up to a limit below 400 it stays ahead from 25 on: that is its crossing.
    within = crossing_point(tuned, [embedding], start=20, limit=300)
    assert within.size == pytest.approx(25.0, rel=1e-5) and within.low == pytest.approx(25, rel=0.05)
    # Between 400 and 1600 it gets ahead nowhere: from 500 on it is behind everywhere.
    assert crossing_point(tuned, [embedding], start=500, limit=1600).size is None


def test_the_crossing_of_a_lower_is_better_metric():
    # perplexity 10 + 100 n^-0.5 = 20  <=>  n = 100.
    law = PowerLaw(10.0, 100.0, 0.5, higher_is_better=False)
    tuned = fit_curve("tuned", SIZES, _exact(law), np.tile(_exact(law), (5, 1)), metric="perplexity", higher_is_better=False)
    base = flat_curve("base", 160, 20.0, np.full(5, 20.0), higher_is_better=False)
    assert crossing_point(tuned, [base], start=20, limit=1600).size == pytest.approx(100.0, rel=1e-5)
    gap = difference_at(tuned, [base], 400)
    # 10 + 100/20 = 15 at n = 400: five below the base model, i.e. +5 in the good direction.
    assert gap.tuned == pytest.approx(15.0, rel=1e-5) and gap.difference == pytest.approx(5.0, rel=1e-4)


def test_the_difference_at_a_size_is_against_the_best_opponent_with_a_paired_interval():
    tuned = _curve(PowerLaw(0.9, 1.0, 0.5))
    few_shot = flat_curve("few_shot", 160, 0.3, np.full(20, 0.3))
    classical = flat_curve("classical", 160, 0.8, np.linspace(0.75, 0.85, 20))
    gap = difference_at(tuned, [few_shot, classical], 400)  # tuned 0.9 - 1/20 = 0.85
    assert gap.opponent == "classical" and gap.difference == pytest.approx(0.05, abs=1e-6)
    assert gap.low == pytest.approx(0.85 - 0.85 + 0.0025, abs=0.01) and gap.high == pytest.approx(0.1, abs=0.01)


def test_run_noise_widens_the_band_around_the_same_curve():
    law = PowerLaw(0.9, 1.0, 0.5)
    exact = np.tile(_exact(law), (400, 1))  # no validation noise at all: only the runs' own noise is left
    quiet = fit_curve("tuned", SIZES, _exact(law), exact, metric="accuracy")
    noisy = fit_curve("tuned", SIZES, _exact(law), exact, metric="accuracy", run_noise=0.08, seed=1)
    assert noisy.value([640])[0] == quiet.value([640])[0]  # the central curve is the fit of the measured points
    low, high = quiet.band([640])
    assert high[0] - low[0] < 1e-6
    low, high = noisy.band([640])
    # One run at 0.9 - 1/sqrt(640) = 0.860 varies by 0.08 * sqrt(0.86 * 0.14) = 0.028: the band is at least about 2 x 1.96 x that.
    assert high[0] - low[0] > 2 * 1.96 * 0.028 * 0.9 and low[0] < 0.86 < high[0]
    assert (noisy.sample_values([10, 1e6]) <= 1.0).all() and (noisy.sample_values([10, 1e6]) >= 0.0).all()
    # A metric without a bound (perplexity) has no run noise model: its band stays the validation rows' only.
    ppl = PowerLaw(5.0, 20.0, 0.5, higher_is_better=False)
    flat = fit_curve("tuned", SIZES, _exact(ppl), np.tile(_exact(ppl), (50, 1)), metric="perplexity", higher_is_better=False, run_noise=0.08)
    assert flat.run_draws is None
