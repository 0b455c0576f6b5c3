"""Learning curves: how a score grows with the number of training examples, how sure that is, and where two curves cross.

A curve is a saturating power law fitted to scores measured at a few training sizes::

    score(n) = a - b * n ** -c        (higher is better: accuracy, ROUGE-L)
    score(n) = a + b * n ** -c        (lower is better: perplexity)

with ``b >= 0`` (more data never makes the fitted score worse), ``c`` in [C_MIN, C_MAX], and the
asymptote ``a`` no better than the metric's best value (accuracy 1, perplexity 1): a curve may
saturate below the maximum but never promise more than it.

The fit is exact least squares: for a fixed ``c`` the model is linear in (a, b), whose bounded
optimum has a closed form (the unconstrained one, else the better of the two boundary solutions);
``c`` is searched on a fine log grid and the central fit polished with ``scipy.optimize.minimize_scalar``.
That is the same answer ``scipy.optimize.least_squares`` with these bounds gives, without its
local minima, and it is vectorised, so the bootstrap refits a thousand resamples in milliseconds.

The band: every point was scored on the same validation rows. A bootstrap resample of those rows
(the same rows for every point and every opponent, so they stay paired) gives each point a
resampled score; refitting the curve to each resample gives a distribution of curves, whose 2.5th
and 97.5th percentiles at any size are the 95% band. That is the uncertainty of having few
validation rows. A training run is also one draw among many (another seed, another order of the
same examples scores differently): with ``run_noise`` each resampled point also moves by that
noise before the refit, and each resampled curve's value by the noise of the one run it predicts,
so the band is one of a run's score, not only of the mean curve. For a score in [0, 1] the noise
of a run scoring p is ``run_noise * sqrt(p (1 - p))``; ``RUN_NOISE`` is measured, not tuned here
(see its comment). ``bench/advise.py`` measures how often real runs land in the band.

Nothing here trains or reads files: the points come from ``tunelab.tasks.advise``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

C_MIN, C_MAX = 0.05, 2.0
C_GRID = np.geomspace(C_MIN, C_MAX, 400)
MIN_POINTS = 3  # three parameters: fewer points leave the curve undetermined
WIDE_BAND = 0.10  # a band wider than this (metric units; relative for unbounded metrics) is called wide
CROSSING_LIMIT = 10.0  # look for the crossing up to this many times the data the user has
# The run-to-run noise of a bounded score p: RUN_NOISE * sqrt(p (1 - p)). 0.08 is the quickstart's spread over
# three seeds on its fixed 80 test rows: accuracy 0.825, 0.875, 0.825, standard deviation 0.029 at 0.84
# (bench/README.md, section "Quality against what a user would do instead", row "quickstart, 3 seeds";
# bench/results/quality-quickstart-3seeds.md; the validation draw and the training seed varied, the test rows
# fixed), i.e. 0.029 / sqrt(0.84 x 0.16) = 0.079. Three seeds pin a spread down only roughly; it was measured
# before, and apart from, the runs bench/advise.py checks the bands against.
RUN_NOISE = 0.08
# The best value each metric can take: the asymptote a never promises more.
METRIC_BEST = {"accuracy": 1.0, "macro_f1": 1.0, "rougeL": 1.0, "rouge1": 1.0, "rouge2": 1.0, "exact_match": 1.0, "perplexity": 1.0}
# Scores in [0, 1] (the sft metrics of answers that are data are shares of examples too).
BOUNDED = {"accuracy", "macro_f1", "rougeL", "rouge1", "rouge2", "exact_match",
           "json_valid", "json_exact", "json_f1", "tool_name_accuracy", "tool_call_exact"}


@dataclass(frozen=True)
class PowerLaw:
    """``a - b * n**-c`` (higher is better) or ``a + b * n**-c`` (lower is better)."""

    a: float
    b: float
    c: float
    higher_is_better: bool = True

    def __call__(self, n: Any) -> np.ndarray:
        term = self.b * np.asarray(n, dtype=float) ** -self.c
        return self.a - term if self.higher_is_better else self.a + term


def _profile(n: np.ndarray, goodness: np.ndarray, best: float, cs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row of ``goodness`` (S, k) and each c of ``cs`` (C,): the least-squares (A, B) of
    ``g = A - B * n**-c`` under ``A <= best``, ``B >= 0``, and its sum of squared residuals; each (S, C).

    The problem is a convex quadratic in (A, B) over a quadrant: the unconstrained optimum when it is
    feasible, else the better of the optimum on ``A = best`` (B clipped at 0) and on ``B = 0`` (A clipped at best).
    """
    k = n.size
    x = n[None, :] ** -cs[:, None]  # (C, k)
    sum_x, sum_xx = x.sum(1), (x**2).sum(1)  # (C,)
    sum_g, sum_gg = goodness.sum(1), (goodness**2).sum(1)  # (S,)
    sum_gx = goodness @ x.T  # (S, C)

    def sse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # sum_i (g_i - a + b x_i)^2, expanded so every (row, c) pair costs O(1).
        return (sum_gg[:, None] - 2 * a * sum_g[:, None] + 2 * b * sum_gx + k * a**2 - 2 * a * b * sum_x[None, :] + b**2 * sum_xx[None, :])

    var_x = sum_xx - sum_x**2 / k  # (C,): > 0 when the sizes differ
    cov_gx = sum_gx - sum_g[:, None] * sum_x[None, :] / k
    b_free = -cov_gx / var_x[None, :]  # the slope of g on x is -B
    a_free = sum_g[:, None] / k + b_free * sum_x[None, :] / k
    feasible = (b_free >= 0) & (a_free <= best)
    b_top = np.maximum(0.0, (best * sum_x[None, :] - sum_gx) / sum_xx[None, :])  # A = best
    a_top = np.full_like(b_top, best)
    a_flat = np.broadcast_to(np.minimum(best, sum_g / k)[:, None], b_top.shape)  # B = 0
    b_flat = np.zeros_like(b_top)
    sse_top, sse_flat = sse(a_top, b_top), sse(a_flat, b_flat)
    use_top = sse_top <= sse_flat
    a = np.where(feasible, a_free, np.where(use_top, a_top, a_flat))
    b = np.where(feasible, b_free, np.where(use_top, b_top, b_flat))
    return a, b, np.maximum(sse(a, b), 0.0)


def _check_points(sizes: Sequence[float]) -> np.ndarray:
    n = np.asarray(sizes, dtype=float)
    if n.ndim != 1 or np.unique(n).size < MIN_POINTS or (n <= 0).any():
        raise ValueError(f"a power law needs at least {MIN_POINTS} different positive sizes, got {list(sizes)}")
    return n


def fit_power_laws(sizes: Sequence[float], scores: np.ndarray, *, best: float, higher_is_better: bool = True) -> np.ndarray:
    """The power law of each row of ``scores`` (S, k) at ``sizes`` (k,), on the c grid: an (S, 3) array of (a, b, c).

    Raises:
        ValueError: with fewer than three different positive sizes.
    """
    n = _check_points(sizes)
    sign = 1.0 if higher_is_better else -1.0
    goodness = sign * np.atleast_2d(np.asarray(scores, dtype=float))
    a, b, sse = _profile(n, goodness, sign * best, C_GRID)
    pick = sse.argmin(1)
    rows = np.arange(goodness.shape[0])
    return np.stack([sign * a[rows, pick], b[rows, pick], C_GRID[pick]], axis=1)


def fit_power_law(sizes: Sequence[float], scores: Sequence[float], *, best: float, higher_is_better: bool = True) -> PowerLaw:
    """The least-squares power law through (sizes, scores), bounded as the module docstring says.

    Raises:
        ValueError: with fewer than three different positive sizes.
    """
    from scipy.optimize import minimize_scalar

    n = _check_points(sizes)
    sign = 1.0 if higher_is_better else -1.0
    goodness = sign * np.asarray(scores, dtype=float)[None, :]
    a, b, sse = _profile(n, goodness, sign * best, C_GRID)
    pick = int(sse[0].argmin())
    low, high = C_GRID[max(pick - 1, 0)], C_GRID[min(pick + 1, C_GRID.size - 1)]
    # The grid is fine (1 % steps); polishing c between its neighbours makes the fit exact on exact data.
    polished = minimize_scalar(lambda c: float(_profile(n, goodness, sign * best, np.array([c]))[2][0, 0]),
                               bounds=(low, high), method="bounded", options={"xatol": 1e-9})
    c = float(polished.x) if polished.fun <= sse[0, pick] else float(C_GRID[pick])
    a_c, b_c, _ = _profile(n, goodness, sign * best, np.array([c]))
    return PowerLaw(float(sign * a_c[0, 0]), float(b_c[0, 0]), c, higher_is_better)


@dataclass
class Curve:
    """A score at several training sizes: measured points, the power law through them and its bootstrap resamples.

    A curve without ``law`` is flat: an opponent that does not learn from more data (the base model, a
    prompt, a remote model), or one measured at too few sizes; its value is the score at its largest size.
    ``samples`` holds, per bootstrap resample, the law's (a, b, c) refitted (S, 3), or the flat score (S, 1).
    """

    name: str
    sizes: list[int]
    scores: list[float]
    higher_is_better: bool
    samples: np.ndarray
    law: PowerLaw | None = None
    flags: list[str] = field(default_factory=list)
    # (S, 1) standard normal draws x run_noise: the noise of the one run each resampled curve predicts (None: none).
    run_draws: np.ndarray | None = None

    @property
    def learns(self) -> bool:
        return self.law is not None

    def value(self, n: Any) -> np.ndarray:
        n = np.asarray(n, dtype=float)
        if self.law is None:
            return np.full(n.shape, self.scores[-1], dtype=float)
        return self.law(n)

    def sample_values(self, n: Any) -> np.ndarray:
        """The resampled curves at sizes ``n``: (S, len(n))."""
        n = np.atleast_1d(np.asarray(n, dtype=float))
        if self.samples.shape[1] == 1:
            return np.repeat(self.samples, n.size, axis=1)
        a, b, c = (self.samples[:, i : i + 1] for i in range(3))
        term = b * n[None, :] ** -c
        values = a - term if self.higher_is_better else a + term
        if self.run_draws is None:
            return values
        return np.clip(values + self.run_draws * np.sqrt(np.clip(values * (1 - values), 0.0, None)), 0.0, 1.0)

    def band(self, n: Any, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """The ``level`` band of the resampled curves at sizes ``n`` (low, high), in metric units."""
        tail = (1 - level) / 2 * 100
        values = self.sample_values(n)
        return np.percentile(values, tail, axis=0), np.percentile(values, 100 - tail, axis=0)

    def to_dict(self, at: Sequence[float] = ()) -> dict[str, Any]:
        """The points, the law and, at each size of ``at``, the value and its 95% band (what the CLI and UI draw)."""
        grid = [float(n) for n in at]
        low, high = self.band(grid) if grid else ([], [])
        return {
            "name": self.name, "sizes": list(self.sizes), "scores": list(self.scores), "learns": self.learns,
            "law": None if self.law is None else {"a": self.law.a, "b": self.law.b, "c": self.law.c},
            "higher_is_better": self.higher_is_better, "flags": list(self.flags),
            "grid": [{"n": n, "value": float(v), "low": float(lo), "high": float(hi)}
                     for n, v, lo, hi in zip(grid, self.value(grid), low, high, strict=True)],
        }


def flat_curve(name: str, size: int, score: float, resampled: np.ndarray, *, higher_is_better: bool = True, flags: Sequence[str] = ()) -> Curve:
    """The curve of an opponent that does not learn from more data: its score at every size (resampled: (S,))."""
    return Curve(name, [int(size)], [float(score)], higher_is_better, np.asarray(resampled, dtype=float).reshape(-1, 1), None, list(flags))


def fit_curve(
    name: str, sizes: Sequence[int], scores: Sequence[float], resampled: np.ndarray, *, metric: str, higher_is_better: bool = True,
    run_noise: float = 0.0, seed: int = 0,
) -> Curve:
    """The power law through measured points and its bootstrap resamples; flat, with a flag, below three sizes.

    ``resampled`` (S, k): each point's score on each bootstrap resample of the validation rows (the same
    resamples for every point). Points are sorted by size. ``run_noise`` (scores in [0, 1] only): the
    run-to-run noise of a training run, added to every resampled point and to the run each resampled
    curve predicts (see the module docstring); seeded by ``seed``.
    """
    order = np.argsort(np.asarray(sizes, dtype=float), kind="stable")
    sizes = [int(sizes[i]) for i in order]
    scores = [float(scores[i]) for i in order]
    resampled = np.asarray(resampled, dtype=float)[:, order]
    if len(set(sizes)) < MIN_POINTS:
        flag = f"{len(set(sizes))} size(s) measured: too few for a curve ({MIN_POINTS} needed); the score at the largest size stands for every size"
        return flat_curve(name, sizes[-1], scores[-1], resampled[:, -1], higher_is_better=higher_is_better, flags=[flag])
    best = METRIC_BEST.get(metric, 1.0 if higher_is_better else 0.0)
    law = fit_power_law(sizes, scores, best=best, higher_is_better=higher_is_better)
    draws = None
    if run_noise > 0 and metric in BOUNDED:
        rng = np.random.default_rng([seed, 32])
        spread = run_noise * np.sqrt(np.clip(np.asarray(scores) * (1 - np.asarray(scores)), 0.0, None))
        resampled = np.clip(resampled + rng.normal(size=resampled.shape) * spread[None, :], 0.0, 1.0)
        draws = rng.normal(size=(resampled.shape[0], 1)) * run_noise
    samples = fit_power_laws(sizes, resampled, best=best, higher_is_better=higher_is_better)
    flags = []
    if len(set(sizes)) == MIN_POINTS:
        flags.append(f"{MIN_POINTS} points for {MIN_POINTS} parameters: the curve passes through them, nothing checks its shape")
    steps = np.diff(scores) * (1 if higher_is_better else -1)
    if (steps < 0).any():
        flags.append("the measured score fell between two sizes: the noise is as large as the gain from more data")
    return Curve(name, sizes, scores, higher_is_better, samples, law, flags, draws)


def is_wide(low: float, high: float, value: float, metric: str) -> bool:
    """Whether a 95% band is wide: more than ``WIDE_BAND`` across (relative to the value for unbounded metrics)."""
    scale = 1.0 if metric in BOUNDED else max(abs(value), 1e-12)
    return (high - low) / scale > WIDE_BAND


def projection_flags(curve: Curve, n: float, metric: str, noun: str = "examples") -> list[str]:
    """What a reader must know about ``curve``'s value at ``n``: the curve's own flags, a wide band, a far extrapolation.

    ``noun``: what the sizes count (examples; a text run's windows)."""
    flags = list(curve.flags)
    if curve.law is None:
        return flags
    value = float(curve.value([n])[0])
    low, high = (float(x[0]) for x in curve.band([n]))
    if is_wide(low, high, value, metric):
        flags.append(f"wide band at {n:,.0f} {noun}: {low:.3g} to {high:.3g} (few validation rows, or points that disagree)")
    if n > 2 * max(curve.sizes):
        flags.append(f"{n:,.0f} {noun} is {n / max(curve.sizes):.1f}x the largest size measured ({max(curve.sizes):,}): a long extrapolation")
    return flags


def envelope(opponents: Sequence[Curve], n: Any, higher_is_better: bool = True) -> tuple[np.ndarray, list[str]]:
    """The best opponent's value at each size of ``n`` and its name."""
    n = np.atleast_1d(np.asarray(n, dtype=float))
    values = np.stack([opponent.value(n) for opponent in opponents])  # (O, len(n))
    pick = values.argmax(0) if higher_is_better else values.argmin(0)
    return values[pick, np.arange(n.size)], [opponents[i].name for i in pick]


@dataclass
class Crossing:
    """Where the tuned curve reaches the best opponent (every opponent at once) for good, between ``start`` and ``limit`` examples.

    ``size`` None: not within ``limit`` (``CROSSING_LIMIT`` x the user's data), or ahead only for a while and
    behind again at ``limit``; then ``behind_from`` is the size from which it is behind for good (None: behind
    everywhere). ``ahead_at_start``: level or ahead from the smallest size looked at to ``limit``. ``low``/``high``: the 95% range of the crossing over the
    bootstrap resamples (``high`` None: beyond the limit in more than 2.5% of them).
    """

    size: float | None
    low: float | None
    high: float | None
    start: float
    limit: float
    ahead_at_start: bool
    opponent: str | None  # the opponent it reaches last (the best one at the crossing)
    behind_from: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def crossing_point(tuned: Curve, opponents: Sequence[Curve], *, start: float, limit: float, points: int = 400) -> Crossing:
    """The smallest size in [start, limit] from which ``tuned`` stays at least as good as every opponent up to ``limit``.

    Two saturating curves can cross twice: a tuned curve that learns fast but levels off lower than an
    opponent that keeps learning is ahead for a while and then behind again. It has not reached that
    opponent: more data of this kind would leave it behind, so the crossing is where it gets ahead for
    good, and None when it is behind at ``limit``. The central crossing is exact (``scipy.optimize.brentq`` between the grid sizes around the sign
    change); each bootstrap resample's crossing is read on the log grid of ``points`` sizes.

    Raises:
        ValueError: without opponents, or when ``limit`` is not above ``start``.
    """
    from scipy.optimize import brentq

    if not opponents:
        raise ValueError("a crossing needs at least one opponent")
    if not limit > start > 0:
        raise ValueError(f"the crossing is looked for between start > 0 and a larger limit, got {start} and {limit}")
    higher = tuned.higher_is_better
    sign = 1.0 if higher else -1.0
    grid = np.geomspace(start, limit, points)

    def gap(n: Any) -> np.ndarray:  # >= 0: the tuned model is level or ahead
        best, _ = envelope(opponents, n, higher)
        return sign * (tuned.value(n) - best)

    gaps = gap(grid)
    behind = np.flatnonzero(gaps < 0)
    size: float | None
    behind_from = None
    if behind.size == 0:
        size = float(start)
    elif behind[-1] == grid.size - 1:
        size = None
        ahead = np.flatnonzero(gaps >= 0)
        if ahead.size:  # ahead for a while: where it falls behind for good
            j = int(ahead[-1])
            behind_from = float(brentq(lambda n: float(gap([n])[0]), grid[j], grid[j + 1], xtol=1e-9, rtol=1e-12))
    else:
        i = int(behind[-1]) + 1  # the first size after the last one behind
        size = float(brentq(lambda n: float(gap([n])[0]), grid[i - 1], grid[i], xtol=1e-9, rtol=1e-12))
    # The resamples: tuned and opponents share each resample of the validation rows.
    tuned_samples = tuned.sample_values(grid)
    opponent_samples = np.stack([opponent.sample_values(grid) for opponent in opponents])  # (O, S, G)
    best_samples = opponent_samples.max(0) if higher else opponent_samples.min(0)
    behind_samples = sign * (tuned_samples - best_samples) < 0
    # Each resample's last size behind (-1: none); the crossing is the grid size after it, inf when behind at the limit.
    last = np.where(behind_samples.any(1), grid.size - 1 - behind_samples[:, ::-1].argmax(1), -1)
    first = np.sort(np.where(last == grid.size - 1, np.inf, grid[np.minimum(last + 1, grid.size - 1)]))
    # Order statistics, not interpolated percentiles: "beyond the limit" (inf) must stay inf.
    low, high = first[int(np.floor(0.025 * (first.size - 1)))], first[int(np.ceil(0.975 * (first.size - 1)))]
    _, names = envelope(opponents, [size if size is not None else limit], higher)
    return Crossing(
        size=size, low=float(low) if np.isfinite(low) else None, high=float(high) if np.isfinite(high) else None,
        start=float(start), limit=float(limit), ahead_at_start=behind.size == 0, opponent=names[0], behind_from=behind_from,
    )


@dataclass
class Difference:
    """The tuned curve minus the best opponent at one size (in the metric's good direction: > 0 is the tuned model ahead)."""

    size: float
    tuned: float
    tuned_low: float
    tuned_high: float
    opponent: str
    opponent_score: float
    difference: float
    low: float
    high: float
    opponent_learns: bool = False  # the opponent's value is its curve's at this size, not one measured score
    higher_is_better: bool = True  # of the metric; ``difference`` is in the good direction either way

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def difference_at(tuned: Curve, opponents: Sequence[Curve], n: float) -> Difference:
    """``tuned`` against the best opponent at size ``n``, with the 95% interval over the paired resamples.

    The best opponent is chosen on the central values; the interval is of tuned minus that opponent.
    """
    higher = tuned.higher_is_better
    sign = 1.0 if higher else -1.0
    values, names = envelope(opponents, [n], higher)
    opponent = next(o for o in opponents if o.name == names[0])
    tuned_value = float(tuned.value([n])[0])
    gaps = sign * (tuned.sample_values([n])[:, 0] - opponent.sample_values([n])[:, 0])
    low, high = np.percentile(gaps, [2.5, 97.5])
    tuned_low, tuned_high = (float(x[0]) for x in tuned.band([n]))
    return Difference(float(n), tuned_value, tuned_low, tuned_high, opponent.name, float(values[0]),
                      sign * (tuned_value - float(values[0])), float(low), float(high), opponent.learns, higher)


def resampled_scores(
    task: str, rows_per_point: Sequence[Sequence[dict[str, Any]]], metric: str, *, samples: int, seed: int,
    labels: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each point's ``metric`` on all rows (k,) and on ``samples`` bootstrap resamples of the rows (samples, k).

    Every point was scored on the same rows (same ids, same order), and every point is computed on the
    same resamples: the points stay paired, as the paired bootstrap of ``compare.py`` pairs two
    evaluations. The metric is recomputed per resample by the metric's own spec (``metrics.metric_specs``).

    Raises:
        ValueError: when the points were not scored on the same rows.
    """
    from tunelab.evaluation.metrics import metric_specs, score_table

    ids = [row["id"] for row in rows_per_point[0]]
    if any([row["id"] for row in rows] != ids for rows in rows_per_point):
        raise ValueError("every point of a curve must be scored on the same rows, in the same order")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(ids), size=(samples, len(ids)))
    everything = np.arange(len(ids))[None, :]
    full, resampled = [], []
    for rows in rows_per_point:
        table = score_table(task, rows, labels)
        spec = next(s for s in metric_specs(task, table) if s.name == metric)
        compute: Callable[[dict, np.ndarray], np.ndarray] = spec.compute
        full.append(float(compute(table, everything)[0]))
        resampled.append(compute(table, indices))
    return np.asarray(full), np.stack(resampled, axis=1)
