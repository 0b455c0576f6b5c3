"""``tunelab advise``: should I fine-tune at all? The answer before the money is spent.

    split -> opponents on the validation rows -> estimate -> learning curve -> fits and bands
          -> crossing -> the cost of each way forward -> one recommendation

1. **Opponents first.** Every baseline of ``eval.baselines`` (the base model, the classical model,
   few-shot, retrieval, a remote model...) learns from the training split only and is scored on the
   validation split, with a bootstrap interval. The test split is never scored: it stays for the
   verdict of the real run.
2. **A learning curve.** The config's own recipe (its defaults included) trains on nested seeded
   subsets of the training split (``data.split.nested_subsets``: halvings of the largest size the
   budget allows, down to one example per label), each scored on the same validation rows. The runs
   train to the recipe's last epoch with no validation set: choosing the checkpoint on the rows that
   then score it would flatter the curve. A ``train.max_steps`` is the whole run's: a curve run makes as many
   passes over its subset (``curve_max_steps``), still raised by ``train.min_steps``. A baseline that learns
   from data and costs seconds to refit (``CURVE_BASELINES``) is refitted at every size too. How many sizes fit ``budget_minutes`` is
   decided with the estimate of each run (``estimate.EstimateInputs``: one calibration, every size).
3. **Fits.** A saturating power law through each curve, a paired bootstrap band (``evaluation.curve``),
   the projected score with all the training data against the best opponent, and the number of
   training examples at which the tuned curve reaches every opponent (or "not within 10x your data").
4. **Costs and the answer.** The time, money and monthly re-tuning cost of each way forward
   (``estimate.options``) and one plain recommendation with its reason.

Everything is written to ``<train.output_dir>/advise-<name>/`` (``advice.json``, each baseline's and
each curve run's evaluation on the validation rows, the curve runs' adapters); nothing is registered.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.config import ResolvedConfig, ResolvedTrainConfig, parse_duration, require_resolved
from tunelab.errors import ConfigError, DataError
from tunelab.paths import atomic_write_text, baseline_file_stem
from tunelab.runs import RunFolder

if TYPE_CHECKING:
    from tunelab.data.records import Record
    from tunelab.estimate.options import OptionCost
    from tunelab.evaluation.curve import Crossing, Curve, Difference
    from tunelab.evaluation.result import EvalResult

ADVICE_FILE = "advice.json"
DEFAULT_BUDGET_MINUTES = 10.0
DEFAULT_RETRAIN_EVERY = "30d"
MAX_POINTS = 4  # sizes on the curve: the largest the budget allows and its halvings
MIN_EXAMPLES = 8  # the smallest subset trained on (classify: also at least one example per label)
TOP_FRACTIONS = (1.0, 0.5, 0.25, 0.125)  # the largest size tried first: all the training data, then halves
# Seconds a curve run costs besides the estimated training and scoring: loading the model, tokenizing,
# saving the adapter, loading it back (measured on the quickstart: 8-12 s on this 2-core CPU).
RUN_OVERHEAD_S = 12.0
# The budget is a target: a point is still run when the time left is this much short of its estimate.
BUDGET_GRACE = 1.25
# Baselines refitted at every size of the curve: they learn from the data and refit in seconds. few_shot
# also learns, but at most eval.few_shot_tokens of it, and costs a model pass per size: it stays one point.
CURVE_BASELINES = ("classical", "retrieval", "embedding")
ADVISED_TASKS = ("classify", "sft", "text")
# A recommendation to fine-tune here when it takes at most this long on this machine; else the cheapest GPU.
HERE_IS_FINE_S = 3600.0

EventFn = Callable[[str, str, dict[str, Any]], None]  # (step, "start"|"done"|"warn", details)


@dataclass
class Opponent:
    """A baseline scored on the validation rows: its score, bootstrap interval and what fitting + scoring it took."""

    name: str
    score: float
    low: float
    high: float
    learns: bool  # refitted at every size of the curve
    seconds: float
    model: str = ""


@dataclass
class CurvePoint:
    """One short run of the learning curve: its training size, its score on the validation rows, its time."""

    size: int
    score: float
    seconds: float
    estimated_seconds: float | None
    run_dir: str
    steps: int | None = None  # the optimizer steps the run trained (None: an advice saved before they were)


@dataclass
class OptionRow:
    """One line of the table: a way forward, the score it gets (measured or projected), its cost."""

    cost: OptionCost
    score: float | None
    score_low: float | None = None
    score_high: float | None = None
    score_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**self.cost.to_dict(), "score": self.score, "score_low": self.score_low, "score_high": self.score_high,
                "score_note": self.score_note}


@dataclass
class Advice:
    """Everything ``tunelab advise`` found; ``to_dict()`` is ``advice.json`` and what the CLI and the UI render."""

    name: str
    task: str
    metric: str
    higher_is_better: bool
    train_size: int
    validation_size: int
    labelled: int
    opponents: list[Opponent]
    points: list[CurvePoint]
    curves: list[Curve]
    projection: Difference | None
    crossing: Crossing | None
    options: list[OptionRow]
    recommendation: str
    reason: str
    flags: list[str]
    budget: dict[str, Any]
    retrain_every: str
    folder: Path
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    bootstrap: dict[str, int] = field(default_factory=dict)  # the resamples of the bands: samples, seed
    # What the sizes count (``size_words``): training examples, or a text run's training windows.
    unit: str = "training examples"
    noun: str = "examples"

    @property
    def strongest(self) -> Opponent | None:
        if not self.opponents:
            return None
        pick = max if self.higher_is_better else min
        return pick(self.opponents, key=lambda o: o.score)

    def to_dict(self) -> dict[str, Any]:
        # The curves are drawn from 1/2 of the smallest size to 10x the data: where the crossing is looked for.
        smallest = min([p.size for p in self.points] or [self.train_size])
        grid = sorted({*_log_grid(max(1.0, smallest / 2), 10 * self.train_size, 40), float(self.train_size)})
        return {
            "name": self.name, "task": self.task, "metric": self.metric, "higher_is_better": self.higher_is_better,
            "train_size": self.train_size, "validation_size": self.validation_size, "labelled": self.labelled,
            "opponents": [dataclasses.asdict(o) for o in self.opponents],
            "points": [dataclasses.asdict(p) for p in self.points],
            "curves": [curve.to_dict(grid) for curve in self.curves],
            "projection": None if self.projection is None else self.projection.to_dict(),
            "crossing": None if self.crossing is None else self.crossing.to_dict(),
            "options": [row.to_dict() for row in self.options],
            "recommendation": self.recommendation, "reason": self.reason, "flags": list(self.flags),
            "budget": dict(self.budget), "retrain_every": self.retrain_every, "folder": str(self.folder),
            "seconds": self.seconds, "warnings": list(self.warnings), "bootstrap": dict(self.bootstrap),
            "size_unit": self.unit, "size_noun": self.noun,
        }

    def save(self) -> Path:
        path = self.folder / ADVICE_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False, default=str))
        return path


def _log_grid(start: float, stop: float, count: int) -> list[float]:
    ratio = (stop / start) ** (1 / (count - 1))
    return [start * ratio**i for i in range(count)]


# ------------------------------------------------------------------------------------ pure decisions


def size_words(task: str, max_length: int) -> tuple[str, str]:
    """What the sizes of a curve count, in full and short: what a run learns from. A text run learns from windows of
    ``data.max_length`` tokens (a few long documents are many windows; a short document is one window, shorter, packed
    with others into a row), every other task from its examples."""
    if task == "text":
        return f"training windows of up to {max_length} tokens", "windows"
    return "training examples", "examples"


def undecided_reason(task: str, validation_rows: int) -> str | None:
    """Why the projection against the best opponent decides nothing (None: it can decide): one validation row, any task.

    Every bootstrap resample of one row is that row, so the difference's interval has no width (sft's rougeL, text's
    perplexity) or only the width of the tuned run's noise, never of the rows (classify); a Wilson interval of one row
    (0.21 to 1 for a right one) overlaps any other. A text run's row is a document."""
    if validation_rows != 1:
        return None
    row, rows = ("document", "documents") if task == "text" else ("row", "rows")
    return (f"one validation {row} gives no interval, so the difference cannot be told from chance; hold out more {rows} "
            "(data.validation_size, data.test_size, or a larger data.validation) for an advice, and a run's verdict, that can decide")


def curve_sizes(train_size: int, top_fraction: float, *, min_size: int, max_points: int = MAX_POINTS) -> list[int]:
    """The sizes of a curve whose largest point is ``top_fraction`` of the data: it and its halvings, ascending.

    Sizes below ``min_size`` are left out (so a small dataset gets fewer points).
    """
    top = int(round(train_size * top_fraction))
    sizes = []
    for i in range(max_points):
        size = int(round(top / 2**i))
        if size < max(min_size, 1) or size in sizes:
            break
        sizes.append(size)
    return sorted(sizes)


def plan_curve(
    train_size: int, *, min_size: int, seconds_for: Callable[[int], float | None], budget_s: float | None,
    spent_s: float = 0.0, unit: str = "training examples", noun: str = "examples",
) -> tuple[list[int], float | None, str | None]:
    """The sizes to train: the largest top size (all the data, else a half, a quarter...) whose curve fits the budget.

    Returns (sizes, their estimated seconds or None when unknown, why there is no curve or None).
    A curve needs three sizes (a power law has three parameters); without a known time per run (no
    calibration) or without a budget, the largest curve is planned. ``budget_s`` is what is left of the
    budget after the ``spent_s`` seconds already taken (the opponents, the estimate): the budget to give
    for a curve counts both, so it is always more than the one given. ``unit`` and ``noun`` (``size_words``): what
    the sizes count, in the reasons.
    """
    from tunelab.evaluation.curve import MIN_POINTS

    cheapest = None
    for fraction in TOP_FRACTIONS:
        sizes = curve_sizes(train_size, fraction, min_size=min_size)
        if len(sizes) < MIN_POINTS:
            break
        times = [seconds_for(size) for size in sizes]
        total = None if any(t is None for t in times) else float(sum(times))  # type: ignore[arg-type]
        if budget_s is None or total is None or total <= budget_s:
            return sizes, total, None
        cheapest = (sizes, total)
    if cheapest is None:
        return [], None, (
            f"{train_size} {unit} are too few for a learning curve: {MIN_POINTS} sizes of at least "
            f"{min_size} {noun}, each half the next, are needed"
        )
    sizes, total = cheapest
    spent = f", after {spent_s / 60:.1f} min on the opponents and the estimate" if spent_s >= 1 else ""
    return [], None, (
        f"no learning curve fits the budget: the smallest ({', '.join(map(str, sizes))} {noun}) is estimated at "
        f"{total / 60:.1f} min{spent}; give --budget-minutes {math.ceil((spent_s + total * BUDGET_GRACE) / 60)} or more"
    )


def curve_max_steps(train: ResolvedTrainConfig, size: int, full: int) -> tuple[int | None, bool]:
    """The ``train.max_steps`` of a curve run on ``size`` of the ``full`` examples (text: windows), and whether
    ``train.min_steps`` raised it.

    The whole run's ``max_steps`` are so many passes over all the data; a curve run makes as many passes over its
    subset (the same recipe on less data). Kept as they are, they would train the smallest subset for many more epochs
    than the whole run, a different recipe at each size. ``min_steps`` still raises a small run, as it raises any run's
    epochs, but never above the whole run's ``max_steps``. (None, False): ``max_steps`` is not set, the epochs scale.
    """
    if train.max_steps is None:
        return None, False
    part, whole = train.schedule(size).steps_per_epoch, train.schedule(full).steps_per_epoch
    steps = max(1, -(-train.max_steps * part // whole))  # integers: the whole run's own size gets exactly max_steps
    floor = min(train.min_steps or 0, train.max_steps)
    return max(steps, floor), floor > steps


def curve_cost_note(curve_s: float | None, run_s: float | None, min_steps: int | None = None) -> str | None:
    """A note when the planned curve costs more than the whole ``tunelab run`` it is meant to save (None otherwise).

    ``min_steps``: the ``train.min_steps`` that raised the curve runs' steps (None: it did not), the usual reason on
    small classify data: every curve run then trains that many optimizer steps, whatever its size.
    """
    from tunelab.estimate.plan import duration

    if curve_s is None or run_s is None or run_s <= 0 or curve_s <= run_s:
        return None
    why = (f"; on data this small every curve run trains at least train.min_steps ({min_steps}) optimizer steps, "
           "whatever its size" if min_steps else "")
    return (f"the curve costs {curve_s / run_s:.1f}x a whole `tunelab run` here ({duration(curve_s)} against "
            f"{duration(run_s)}){why}: the run itself decides, on the test rows, for less")


def recommend(
    *,
    metric: str,
    train_size: int,
    projection: Difference | None,
    crossing: Crossing | None,
    options: dict[str, OptionCost],
    labels_to_add: int | None,
    no_curve: str | None = None,
    unit: str = "training examples",
    more: str | None = None,
    undecided: str | None = None,
) -> tuple[str, str]:
    """One plain recommendation and its reason, from the projection against the best opponent and the costs.

    - The tuned model's projected score with all the training data is ahead of every opponent with the
      95% interval of the difference above zero: fine-tune (here when that takes at most an hour, else
      on the cheapest GPU that fits).
    - Otherwise keep the best opponent (a tie goes to the cheaper way): behind, or not shown to be ahead.
      The reason says where the curve reaches it, and what labelling that many examples costs.

    ``unit``: what the sizes count (``size_words``); ``more``: what to add to reach the crossing, when it is not
    "label about N more" (a text run adds documents). ``undecided``: why the projection's interval says nothing (one
    validation row, ``undecided_reason``): the scores are told without it, and nothing is recommended but measuring.
    A difference of exactly zero (both perfect on every row) is a tie the rows cannot break: the cheaper way.
    """
    from tunelab.estimate.plan import duration

    here = options.get("here")
    cost = f" (about {duration(here.seconds)} here)" if here and here.seconds is not None else ""
    if projection is None:
        why = no_curve or "no learning curve was measured"
        return ("measure first: run tunelab run",
                f"{why}. The opponents alone cannot say what fine-tuning gives: `tunelab run` measures it{cost} and its verdict decides.")
    p = projection
    theirs = f"{p.opponent}'s curve {p.opponent_score:.3f}" if p.opponent_learns else f"{p.opponent} {p.opponent_score:.3f}"
    direction = "" if p.higher_is_better else f", {metric} lower by that much"
    if undecided:
        # Every resample of one row is that row: the band and the interval have no width, and would look certain.
        return ("measure first: run tunelab run",
                f"At your {train_size:,} {unit} the tuned model is projected at {metric} {p.tuned:.3f} against {theirs}: "
                f"difference {p.difference:+.3f}{direction}. But {undecided}. `tunelab run` measures it{cost}.")
    scores = (f"At your {train_size:,} {unit} the tuned model is projected at {metric} {p.tuned:.3f} "
              f"(95% band {p.tuned_low:.3f} to {p.tuned_high:.3f}) against {theirs}: difference {p.difference:+.3f}{direction} "
              f"(95% interval {p.low:+.3f} to {p.high:+.3f})")
    if p.low > 0:
        here, gpu = options.get("here"), options.get("gpu")
        if here is not None and here.seconds is not None and (here.seconds <= HERE_IS_FINE_S or gpu is None):
            return "fine-tune here", f"{scores}; ahead of every opponent. Here it takes about {duration(here.seconds)}."
        if gpu is not None:
            money = "" if gpu.usd is None else f" for about USD {gpu.usd:.2f}"
            return f"fine-tune ({gpu.name.removeprefix('fine-tune ')})", f"{scores}; ahead of every opponent. {gpu.name} takes {duration(gpu.seconds)}{money}."
        return "fine-tune", f"{scores}; ahead of every opponent."
    choice = f"keep {p.opponent}"
    if p.high < 0:
        lead = f"{scores}; behind it."
    elif abs(p.difference) < 1e-12:
        # Both perfect (or both null) on every row: the rows cannot say which errs more elsewhere. A tie, as any other.
        lead = f"{scores}; level with it: the validation rows cannot separate them, so the cheaper way wins."
    else:
        lead = f"{scores}; not shown to be ahead, so the cheaper way wins."
    if crossing is None:
        return choice, lead
    if crossing.size is None and crossing.behind_from is not None:
        # Two saturating curves crossing twice: the tuned one learns fast and levels off below the opponent's.
        return choice, (f"{lead} The central curve is level or ahead of it up to about {crossing.behind_from:,.0f} {unit}, "
                        f"behind beyond: more data of this kind favours {p.opponent}.")
    if crossing.size is None:
        return choice, f"{lead} The curve does not reach it within {crossing.limit / train_size:.0f}x your data ({crossing.limit:,.0f} {unit})."
    if crossing.size <= train_size:
        return choice, f"{lead} The central curve is level with it from about {crossing.size:,.0f} {unit}: the gain is within the noise."
    label = options.get("label")
    cost = ""
    if labels_to_add:
        cost = f" ({more or f'label about {labels_to_add:,} more'}"
        cost += f", USD {label.usd:,.2f})" if label is not None and label.usd is not None else ")"
    return choice, f"{lead} The curve reaches it at about {crossing.size:,.0f} {unit}{cost}: only beyond that would fine-tuning win."


def kept_opponent(opponents: Sequence[Opponent], projection: Difference | None, *, higher_is_better: bool) -> Opponent:
    """The baseline the "keep" way forward keeps: the one the projection compares with (the recommendation's), else
    the best measured score, a tie going to the cheaper one."""
    if projection is not None:
        for opponent in opponents:
            if opponent.name == projection.opponent:
                return opponent
    sign = 1.0 if higher_is_better else -1.0
    return max(opponents, key=lambda o: (sign * o.score, -o.seconds))


# -------------------------------------------------------------------------------------------- fits


@dataclass
class Fits:
    """The curves of one advice and what they say at the user's size (``fit_advice``)."""

    scores: dict[str, tuple[float, float, float]]  # each opponent: its score on the validation rows and 95% interval
    opponents: list[Curve]  # each opponent's curve (flat for one that does not learn from more data)
    tuned: Curve | None
    projection: Difference | None
    crossing: Crossing | None
    flags: list[str]


def fit_advice(
    task: str, metric: str, higher: bool, train_size: int, baselines: dict[str, EvalResult], points: dict[int, EvalResult],
    refits: dict[str, dict[int, EvalResult]], *, samples: int, seed: int, labels: Sequence[str] | None = None,
    run_noise: float | None = None, noun: str = "examples",
) -> Fits:
    """Fit every curve of an advice from its evaluations, all on the same validation rows.

    ``baselines``: each opponent trained on all the training data; ``points``: the tuned model at each
    size; ``refits``: the opponents refitted at each size. Every evaluation is computed on the same
    bootstrap resamples (``evaluation.curve.resampled_scores``), so the tuned curve and the opponents stay paired.
    The tuned curve's band also holds the run-to-run noise of training (``run_noise``, default
    ``evaluation.curve.RUN_NOISE``); an opponent's curve is deterministic given its data. ``noun``: what the sizes
    count (``size_words``), in the flags.
    """
    from tunelab.evaluation.curve import (
        CROSSING_LIMIT,
        RUN_NOISE,
        crossing_point,
        difference_at,
        fit_curve,
        flat_curve,
        projection_flags,
        resampled_scores,
    )

    evaluations: list[EvalResult] = [*baselines.values(), *points.values()] + [r for by_size in refits.values() for r in by_size.values()]
    full, resampled = resampled_scores(task, [e.rows for e in evaluations], metric, samples=samples, seed=seed, labels=labels)
    column = {id(e): i for i, e in enumerate(evaluations)}
    rows = len(evaluations[0].rows) if evaluations else 0  # every evaluation is on the same validation rows
    scores: dict[str, tuple[float, float, float]] = {}
    opponents: list[Curve] = []
    for name, result in baselines.items():
        i = column[id(result)]
        scores[name] = (float(full[i]), *_score_interval(resampled[:, i], float(full[i]), rows, metric))
        by_size = dict(refits.get(name, {}))
        if by_size:
            by_size.setdefault(train_size, result)  # the opponent on all the training data is the curve's last point
            sizes = sorted(by_size)
            columns = [column[id(by_size[n])] for n in sizes]
            opponents.append(fit_curve(name, sizes, full[columns].tolist(), resampled[:, columns], metric=metric, higher_is_better=higher))
        else:
            opponents.append(flat_curve(name, train_size, float(full[i]), resampled[:, i], higher_is_better=higher))
    tuned = projection = crossing = None
    flags: list[str] = []
    if points:
        sizes = sorted(points)
        columns = [column[id(points[n])] for n in sizes]
        tuned = fit_curve("tuned", sizes, full[columns].tolist(), resampled[:, columns], metric=metric, higher_is_better=higher,
                          run_noise=RUN_NOISE if run_noise is None else run_noise, seed=seed)
        flags += projection_flags(tuned, train_size, metric, noun)
        if opponents:
            projection = difference_at(tuned, opponents, train_size)
            # Right (or wrong) on every row at every size, the tuned band is as degenerate as such an opponent's (the
            # run noise scales with p (1 - p), none at the bound): the same Wilson interval on the validation rows.
            projection.tuned_low, projection.tuned_high = _honest_band(projection.tuned_low, projection.tuned_high, projection.tuned, rows, metric)
            rival = next(c for c in opponents if c.name == projection.opponent)
            rival_band = _honest_band(*(float(x[0]) for x in rival.band([train_size])), projection.opponent_score, rows, metric)
            projection.low, projection.high = _honest_difference(projection, *rival_band, metric)
            if tuned.learns:
                crossing = crossing_point(tuned, opponents, start=min(sizes), limit=CROSSING_LIMIT * train_size)
    for curve in opponents:
        flags += [f"{curve.name}: {flag}" for flag in curve.flags]
    return Fits(scores, opponents, tuned, projection, crossing, flags)


def refit_advice(folder: str | Path, *, run_noise: float | None = None) -> tuple[dict[str, Any], Fits]:
    """An advice's curves fitted again from the evaluations it saved (no training): what ``bench/advise.py --refit`` uses.

    Raises:
        DataError: when the folder holds no advice or its evaluations are missing.
    """
    from urllib.parse import unquote

    from tunelab.evaluation.result import EvalResult

    folder = Path(folder)
    data = load_advice(folder)
    baselines = {unquote(path.stem): EvalResult.load(path) for path in sorted((folder / "baselines").glob("*.json"))}
    baselines = {o["name"]: baselines[o["name"]] for o in data["opponents"]}  # in the advice's order
    points: dict[int, EvalResult] = {}
    refits: dict[str, dict[int, EvalResult]] = {}
    for point in data["points"]:
        run = RunFolder(Path(point["run_dir"]))
        if not run.eval_dir.is_dir():
            run = RunFolder(folder / "curve" / Path(point["run_dir"]).name)
        points[point["size"]] = EvalResult.load(run.validation_eval)
        for path in run.eval_dir.glob("*.json"):
            if path != run.validation_eval:
                refits.setdefault(unquote(path.stem), {})[point["size"]] = EvalResult.load(path)
    bootstrap = data.get("bootstrap") or {"samples": 1000, "seed": 0}
    return data, fit_advice(data["task"], data["metric"], data["higher_is_better"], data["train_size"], baselines, points, refits,
                            samples=bootstrap["samples"], seed=bootstrap["seed"], run_noise=run_noise,
                            noun=data.get("size_noun", "examples"))


# ------------------------------------------------------------------------------------------ runner


def _emit(on_event: EventFn | None, step: str, status: str, **details: Any) -> None:
    if on_event is not None:
        on_event(step, status, details)


def _score_interval(resampled: Sequence[float], score: float, rows: int, metric: str) -> tuple[float, float]:
    """The 95% bootstrap interval of a score measured on ``rows`` validation rows (:func:`_honest_band`)."""
    import numpy as np

    low, high = np.percentile(np.asarray(resampled, dtype=float), [2.5, 97.5])
    return _honest_band(float(low), float(high), score, rows, metric)


def _honest_band(low: float, high: float, score: float, rows: int, metric: str) -> tuple[float, float]:
    """A bootstrap band, except where it has no width at a bounded metric's end. Every row right (or every row
    wrong) resamples to itself, so the bootstrap said 1.000 [1.000, 1.000], as if a few dozen rows proved a model
    never errs; there the score is a proportion of rows at its bound, and its honest interval is Wilson's
    (``metrics.wilson_interval``, as a win rate's), which puts a perfect score on 20 rows at [0.839, 1]."""
    from tunelab.evaluation.curve import BOUNDED
    from tunelab.evaluation.metrics import wilson_interval

    at_bound = min(abs(score), abs(1.0 - score)) < 1e-9
    if high - low < 1e-12 and metric in BOUNDED and at_bound and rows > 0:
        return wilson_interval(round(score) * rows, rows)
    return low, high


def _honest_difference(p: Difference, rival_low: float, rival_high: float, metric: str) -> tuple[float, float]:
    """The interval of the difference, except where the paired bootstrap gave it no width: both scores at a bound (both
    right on every row: "+0.000 to +0.000", as if the rows proved them equal everywhere). There it is Newcombe's hybrid
    score interval from the two (Wilson) bands, as for independent proportions: wider than the paired one, so no more
    sure than the rows are."""
    from tunelab.evaluation.curve import BOUNDED

    if p.high - p.low >= 1e-12 or metric not in BOUNDED or not p.higher_is_better:
        return p.low, p.high
    tuned, rival = p.tuned, p.opponent_score
    low = p.difference - math.hypot(tuned - p.tuned_low, rival_high - rival)
    high = p.difference + math.hypot(p.tuned_high - tuned, rival - rival_low)
    return low, high


def advise(
    config: ResolvedConfig,
    *,
    budget_minutes: float | None = DEFAULT_BUDGET_MINUTES,
    label_usd_per_example: float | None = None,
    local_usd_per_hour: float | None = None,
    retrain_every: str = DEFAULT_RETRAIN_EVERY,
    folder: str | Path | None = None,
    calibrate: bool = True,
    on_event: EventFn | None = None,
    train_progress: Callable[[Any], None] | None = None,
) -> Advice:
    """Should ``config`` be fine-tuned at all? Opponents, a learning curve, costs and one recommendation (module docstring).

    Args:
        config: the run config a ``tunelab run`` would use (its recipe is the curve's).
        budget_minutes: how long the whole advice may take (a target: the curve gets the largest
            sizes whose estimated runs fit; None: no limit, the largest curve).
        label_usd_per_example: what labelling one more example costs (None: unknown).
        local_usd_per_hour: what this machine costs an hour (default ``distill.local_usd_per_hour``; None: unknown).
        retrain_every: the re-tuning cadence the monthly costs assume (30m, 6h, 7d, 30d...).
        folder: where to write (default ``<train.output_dir>/advise-<run name>``); must not hold an advice yet.
        calibrate: time a few training steps here (cached per machine) so time is known.
        on_event: called with (step, status, details) as the advice goes.
        train_progress: the training loop's progress callback, for each curve run.

    Raises:
        ConfigError: for a task advise does not cover, a bad cadence or an existing folder.
        DataError: for unreadable data, or no validation rows to score on.
        ModelError: when the model cannot be loaded.
    """
    from tunelab.data.labels import LabelMap
    from tunelab.data.split import check_classify_labels, make_split
    from tunelab.estimate import estimate_inputs
    from tunelab.evaluation.evaluate import check_verdict_metric
    from tunelab.evaluation.metrics import (
        OUT_OF_SCOPE_METRICS,
        PRIMARY_METRIC,
        STRUCTURED_SPECS,
        TASK_METRICS,
    )
    from tunelab.runs import load_model
    from tunelab.tasks.pipeline import run_name

    started = time.perf_counter()
    config = require_resolved(config)
    if config.task not in ADVISED_TASKS:
        raise ConfigError(
            f"tunelab advise covers the tasks {', '.join(ADVISED_TASKS)}, not {config.task}",
            "a preference run is judged against its SFT parent: run it with `tunelab run` and read the verdict",
        )
    provider_note = None
    if config.train.backend != "local":
        # A curve through a provider's API would cost money for every point: the curve is drawn with short local
        # runs of the config's local model instead, and the provider's fine-tuning is priced beside them.
        provider_note = (f"train.backend: {config.train.backend}: the curve is drawn with short local runs of {config.model.name}, "
                         "not of the provider's model; the table prices the provider's fine-tuning beside them")
        config = config.model_copy(update={"train": config.train.model_copy(update={"backend": "local"})})
    retrain_s = parse_duration(retrain_every, "--retrain-every")
    if budget_minutes is not None and budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes must be above 0, got {budget_minutes:g}")
    if local_usd_per_hour is None:
        local_usd_per_hour = config.distill.local_usd_per_hour
    name = run_name(config)
    root = Path(folder) if folder is not None else Path(config.train.output_dir) / f"advise-{name}"
    if (root / ADVICE_FILE).exists():
        raise ConfigError(f"{root} already holds an advice", "choose another name (name=...) or folder, or delete it")
    task, metric = config.task, config.eval.metric or PRIMARY_METRIC[config.task]
    specs = [*TASK_METRICS[task], *OUT_OF_SCOPE_METRICS, *STRUCTURED_SPECS]
    higher = next(spec.higher_is_better for spec in specs if spec.name == metric) is not False
    warnings: list[str] = [provider_note] if provider_note else []

    # 1. The split; the validation rows are what everything is scored on.
    _emit(on_event, "split", "start")
    split = make_split(config)
    outside = config.data.out_of_scope_label
    if task == "classify":
        check_classify_labels(split, outside)
    validation = [r for r in split.validation if task != "classify" or r.label != outside]
    if not validation:
        raise DataError(
            "tunelab advise scores every opponent and every curve run on the validation split, and it is empty",
            "set data.validation_size above 0 (default 0.1) or give data.validation",
        )
    # Before the first curve run: the validation rows are what the curve is scored on, by eval.metric (json_f1 needs them JSON).
    check_verdict_metric(task, validation, config.data.model_copy(update={"max_test_examples": None}), config.eval.metric)
    if outside is not None and len(validation) < len(split.validation):
        warnings.append(f"the {len(split.validation) - len(validation)} out-of-scope validation rows are left out: "
                        "the curve is of in-scope accuracy (their threshold is chosen on these rows in a real run)")
    train = list(split.train)
    # How many labelled examples the user has, and which share of new ones would land in training.
    labelled = len(train) + len(split.validation) + (len(split.test) if split.test_from == "held out" else 0)
    _emit(on_event, "split", "done", train=len(train), validation=len(validation), labelled=labelled)
    # A remote opponent is asked every validation row (its scores are on them): their personal data is said with its
    # host before the first request, or refused before anything is asked or written, as the run's test split is.
    from tunelab.data.pii import check_sent
    from tunelab.tasks.pipeline import remote_hosts

    for line in check_sent(validation, remote_hosts(config), config.data.pii, f"the validation split ({len(validation)} requests)"):
        warnings.append(line)
        _emit(on_event, "pii", "warn", message=line)

    base = load_model(config.model.name, allow_network=config.model.allow_network, revision=config.model.revision)
    label_map = LabelMap.for_records(train, base.tokenizer, outside) if task == "classify" else None
    n_labels = len(label_map.labels) if label_map is not None else 0
    whole = config.data.model_copy(update={"max_test_examples": None})
    root.mkdir(parents=True, exist_ok=True)

    # 2. Opponents on the validation rows, each learning from the training split only.
    from tunelab.config import resolve_baselines
    from tunelab.evaluation.baselines import BaselineSkipped, evaluate_baseline

    names = resolve_baselines(task, config.eval)
    baseline_results: dict[str, EvalResult] = {}
    baseline_seconds: dict[str, float] = {}
    for baseline in names:
        if config.eval.predictions_of(baseline) is not None:
            # The current system's file answers the test requests; advice is given on the validation rows, which it did not see.
            warnings.append(f"{baseline} skipped: its predictions file answers the test requests, and advice is given on the validation rows")
            continue
        _emit(on_event, "baseline", "start", baseline=baseline, n=len(validation))
        began = time.perf_counter()
        try:
            result = evaluate_baseline(baseline, base, validation, task, train=train, config=config.eval, data_config=whole,
                                       label_map=label_map, train_ids=[r.id for r in train])
        except BaselineSkipped as skipped:
            # It cannot run here (no room for one example, no embedding model): said, never silently absent.
            warnings.append(f"{baseline} skipped: {skipped}")
            _emit(on_event, "baseline", "done", baseline=baseline, skipped=str(skipped), seconds=time.perf_counter() - began)
            continue
        baseline_seconds[baseline] = time.perf_counter() - began
        result.save(root / "baselines" / f"{baseline_file_stem(baseline)}.json")
        baseline_results[baseline] = result
        _emit(on_event, "baseline", "done", baseline=baseline, score=result.metrics.get(metric), seconds=baseline_seconds[baseline])

    # 3. The estimate: one calibration prices the real run, every curve run and a run on more data.
    _emit(on_event, "estimate", "start")
    inputs = estimate_inputs(config, split, base, label_map=label_map, calibrate_here=calibrate)
    estimate_now = inputs.estimate()
    _emit(on_event, "estimate", "done", seconds=estimate_now.total_seconds)

    from functools import cache

    from tunelab.data.split import nested_subsets, nested_text_subsets, text_windows
    from tunelab.estimate import example_token_counts

    seed = config.train.seed
    unit, noun = size_words(task, config.data.max_length)
    window = dict(tokenizer=base.tokenizer, max_length=config.data.max_length, stride=config.data.stride)

    def size_of(records: Sequence[Record]) -> int:
        # A text run learns from windows of data.max_length tokens: the curve's sizes count them, not documents.
        return text_windows(records, **window) if task == "text" else len(records)  # type: ignore[arg-type]

    n_all = size_of(train)

    @cache
    def subset(size: int) -> list[Record]:
        if task == "text":
            return nested_text_subsets(train, [size], seed=seed, **window)[0]  # type: ignore[arg-type]
        return nested_subsets(train, [size], task=task, seed=seed)[0]

    @cache
    def run_config(size: int) -> ResolvedConfig:
        # The recipe of a curve run: no tracker, and train.max_steps scaled to its subset (curve_max_steps).
        steps, _ = curve_max_steps(config.train, size_of(subset(size)), n_all)
        train_update: dict[str, Any] = {"tracker": "none"} | ({} if steps is None else {"max_steps": steps})
        return config.model_copy(update={"train": config.train.model_copy(update=train_update)})

    @cache
    def seconds_for(size: int) -> float | None:
        # A curve run: the subset's own token counts (tokenized as trained), no validation, scored on the validation rows.
        counts = example_token_counts(config, subset(size), base.tokenizer, label_map)
        run = inputs.estimate(train=counts, validation=[], test=inputs.counts.validation, config=run_config(size))
        if run.seconds is None:
            return None
        return run.seconds["train"] + run.seconds.get("eval", 0.0) + RUN_OVERHEAD_S

    min_size = max(MIN_EXAMPLES, n_labels)
    used = time.perf_counter() - started
    budget_s = None if budget_minutes is None else budget_minutes * 60 - used
    sizes, planned_s, no_curve = plan_curve(n_all, min_size=min_size, seconds_for=seconds_for,
                                            budget_s=None if budget_s is None else max(budget_s, 0.0), spent_s=used,
                                            unit=unit, noun=noun)
    if planned_s is None and sizes and budget_s is not None:
        warnings.append("the time of each curve run is unknown (no calibration): the largest curve was planned regardless of the budget")
    if sizes and config.train.max_steps is not None:
        steps = [run_config(size).train.max_steps for size in sizes]
        warnings.append(f"train.max_steps ({config.train.max_steps}) are the whole run's: each curve run makes as many passes "
                        f"over its own subset, {', '.join(map(str, steps))} optimizer steps on "
                        f"{', '.join(str(size_of(subset(size))) for size in sizes)} {noun}")
    if sizes and planned_s is not None:
        smallest = min(sizes)
        if config.train.max_steps is not None:
            raised = curve_max_steps(config.train, size_of(subset(smallest)), n_all)[1]
            floor = min(config.train.min_steps or 0, config.train.max_steps)
        else:
            counts = example_token_counts(config, subset(smallest), base.tokenizer, label_map)
            raised = inputs.estimate(train=counts).tokens.steps_set_by == "train.min_steps"
            floor = config.train.min_steps or 0
        costly = curve_cost_note(planned_s, estimate_now.total_seconds, floor if raised else None)
        if costly:
            warnings.append(costly)
    _emit(on_event, "plan", "done", sizes=[size_of(subset(size)) for size in sizes], estimated_seconds=planned_s, reason=no_curve,
          noun=noun)

    # 4. The learning curve: the recipe on nested subsets, each scored on the validation rows.
    from tunelab.data.split import Split
    from tunelab.evaluation.evaluate import evaluate
    from tunelab.runs import load_run
    from tunelab.tasks import run_training

    points: list[CurvePoint] = []
    point_results: list[EvalResult] = []
    learning = [b for b in names if b in CURVE_BASELINES]
    curve_baselines: dict[str, list[EvalResult]] = {b: [] for b in learning}
    ratios: list[float] = []  # measured / estimated seconds of the runs so far
    stopped = None
    for size in sizes:
        estimated = seconds_for(size)
        if budget_s is not None and estimated is not None and ratios:
            left = budget_minutes * 60 - (time.perf_counter() - started)  # type: ignore[operator]
            if estimated * max(ratios) > left * BUDGET_GRACE:
                stopped = f"the budget ran out after {len(points)} of {len(sizes)} sizes (the runs took up to {max(ratios):.2f}x their estimate)"
                break
        records = subset(size)
        measured = size_of(records)
        if any(p.size == measured for p in points):
            continue  # two sizes that keep every label's share can round to the same subset: it is trained once
        _emit(on_event, "point", "start", size=measured, estimated_seconds=estimated, noun=noun)
        began = time.perf_counter()
        run_dir = root / "curve" / f"n{measured}"
        piece = Split(task, records, [], [], seed=split.seed, out_of_scope_label=outside)
        trained = run_training(run_config(size), piece, run_dir=run_dir, progress=train_progress)
        # A curve point is judged by its score alone: a text point writes no continuation samples (nobody reviews them,
        # and its estimate does not price them).
        tuned = evaluate(load_run(run_dir), validation, task, config=config.eval.model_copy(update={"text_samples": 0}),
                         data_config=whole, train_ids=[r.id for r in records])
        tuned.save(RunFolder(run_dir).validation_eval)
        shutil.rmtree(RunFolder(run_dir).checkpoints, ignore_errors=True)  # no resume for a curve run: the adapter is kept
        for baseline in learning:
            result = evaluate_baseline(baseline, base, validation, task, train=records, config=config.eval, data_config=whole,
                                       train_ids=[r.id for r in records])
            result.save(RunFolder(run_dir).baseline_eval(baseline))
            curve_baselines[baseline].append(result)
        seconds = time.perf_counter() - began
        if estimated:
            ratios.append(seconds / estimated)
        points.append(CurvePoint(measured, float(tuned.metrics[metric]), seconds, estimated, str(run_dir), trained.steps))
        point_results.append(tuned)
        _emit(on_event, "point", "done", size=measured, score=tuned.metrics[metric], seconds=seconds, estimated_seconds=estimated,
              noun=noun)

    # 5. Fits: every evaluation on the same bootstrap resamples of the validation rows (paired).
    fits = fit_advice(
        task, metric, higher, n_all, baseline_results, dict(zip([p.size for p in points], point_results, strict=True)),
        {name: dict(zip([p.size for p in points], results, strict=True)) for name, results in curve_baselines.items()},
        samples=config.eval.bootstrap_samples, seed=config.eval.seed, labels=label_map.labels if label_map is not None else None,
        noun=noun,
    )
    opponents = [Opponent(name, score, low, high, name in CURVE_BASELINES, baseline_seconds[name], baseline_results[name].model)
                 for name, (score, low, high) in fits.scores.items()]
    opponent_curves, projection, crossing, flags = fits.opponents, fits.projection, fits.crossing, list(fits.flags)
    curves = ([fits.tuned] if fits.tuned is not None else []) + [c for c in opponent_curves if c.learns]
    if stopped:
        flags.append(stopped)
    if label_map is not None:
        # A label with no validation row (a rare one, or one of a single row) is never scored here: say which.
        scored = {r.label for r in validation}
        unscored = [label for label in label_map.labels if label not in scored]
        if unscored:
            named = ", ".join(unscored[:5]) + (f" and {len(unscored) - 5} more" if len(unscored) > 5 else "")
            flags.append(f"{len(unscored)} of {len(label_map.labels)} labels have no validation row ({named}): "
                         "every score here is silent on them (the real run's test rows may hold them)")
    if len(validation) == 1:
        flags.append("1 validation row: every score here is of that one row, with no interval; nothing here can decide")
    elif len(validation) < 30:
        flags.append(f"{len(validation)} validation rows: every score here is uncertain by several points (see the intervals)")
    if not opponent_curves:
        flags.append("no baseline to compare with (eval.baselines is empty): nothing says fine-tuning is needed")

    # 6. The cost of each way forward, and the answer.
    from tunelab.estimate.options import (
        documents_needed,
        gpu_option,
        here_option,
        keep_option,
        label_option,
        labels_needed,
        provider_option,
    )
    from tunelab.evaluation.baselines import learns_from_training

    every = dict(retrain_every_s=retrain_s)
    options: list[OptionRow] = []
    keyed: dict[str, OptionCost] = {}
    if opponents:
        best = kept_opponent(opponents, projection, higher_is_better=higher)
        keep = keep_option(best.name, best.seconds, learns=learns_from_training(best.name) or best.name in CURVE_BASELINES,
                           local_usd_per_hour=local_usd_per_hour, **every)
        if config.eval.endpoint_of(best.name) is not None:
            keep.notes.append("a remote model: each request is paid for (not counted here)")
        options.append(OptionRow(keep, best.score, best.low, best.high, "measured on the validation rows"))
        keyed["keep"] = keep
    tuned_score = (projection.tuned, projection.tuned_low, projection.tuned_high) if projection else (None, None, None)
    if projection is None:
        tuned_note = "not measured"
    elif curves[0].learns:
        tuned_note = f"projected from the curve at {n_all:,} {unit}"
    else:
        tuned_note = f"measured at {curves[0].sizes[-1]:,} {unit} (too few sizes for a curve)"
    here = here_option(estimate_now.total_seconds, local_usd_per_hour=local_usd_per_hour, **every)
    options.append(OptionRow(here, *tuned_score, tuned_note))
    keyed["here"] = here
    gpu = gpu_option(estimate_now.gpus, named=config.budget.gpu, **every)
    if gpu is not None:
        options.append(OptionRow(gpu, *tuned_score, tuned_note))
        keyed["gpu"] = gpu
    endpoint = config.model.endpoint.name if config.model.endpoint is not None else None
    provider = provider_option(estimate_now.cloud, model=endpoint, **every)
    if provider is not None:
        options.append(OptionRow(provider, None, score_note="a different model: not measured"))
        keyed["provider"] = provider
    to_add = more = None
    if crossing is not None and crossing.size is not None and crossing.size > n_all:
        target = int(math.ceil(crossing.size))
        # More examples like these: the training examples' token counts repeated up to the larger size.
        cycle = inputs.counts.train
        bigger = inputs.estimate(train=[cycle[i % len(cycle)] for i in range(int(round(len(cycle) * target / n_all)))])
        if task == "text":
            to_add, tokens = documents_needed(target, n_all, len(train), labelled or len(train), sum(cycle))
            more = f"add about {to_add:,} more documents like yours, about {tokens:,.0f} tokens of text"
            label = label_option(to_add, label_usd_per_example, bigger.total_seconds, local_usd_per_hour=local_usd_per_hour,
                                 what=f"add {to_add:,} more documents ({tokens:,.0f} tokens of text)", per="document", **every)
        else:
            to_add = labels_needed(target, n_all, n_all / labelled if labelled else 1.0)
            label = label_option(to_add, label_usd_per_example, bigger.total_seconds, local_usd_per_hour=local_usd_per_hour, **every)
        level = float(curves[0].value([target])[0])
        low, high = (float(x[0]) for x in curves[0].band([target]))
        options.append(OptionRow(label, level, low, high, f"projected at {target:,} {unit} (level with {crossing.opponent})"))
        keyed["label"] = label
    recommendation, reason = recommend(metric=metric, train_size=n_all, projection=projection, crossing=crossing,
                                       options=keyed, labels_to_add=to_add, no_curve=no_curve, unit=unit, more=more,
                                       undecided=undecided_reason(task, len(validation)))
    if no_curve:
        flags.insert(0, no_curve)
    advice = Advice(
        name=name, task=task, metric=metric, higher_is_better=higher, train_size=n_all, validation_size=len(validation),
        labelled=labelled, opponents=opponents, points=points, curves=curves, projection=projection, crossing=crossing,
        options=options, recommendation=recommendation, reason=reason, flags=flags,
        budget={"minutes": budget_minutes, "sizes": [size_of(subset(size)) for size in sizes], "estimated_seconds": planned_s,
                "used_seconds": time.perf_counter() - started},
        retrain_every=retrain_every, folder=root, warnings=warnings + list(split.warnings),
        bootstrap={"samples": config.eval.bootstrap_samples, "seed": config.eval.seed}, unit=unit, noun=noun,
    )
    advice.seconds = time.perf_counter() - started
    advice.budget["used_seconds"] = advice.seconds
    advice.save()
    _emit(on_event, "advice", "done", path=str(root / ADVICE_FILE))
    return advice


def load_advice(path: str | Path) -> dict[str, Any]:
    """An ``advice.json`` (or the folder holding it) as written by :func:`advise`.

    Raises:
        DataError: when the file is missing or not an advice.
    """
    path = Path(path)
    if path.is_dir():
        path = path / ADVICE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not a readable advice ({error})") from None
    if not isinstance(data, dict) or "recommendation" not in data:
        raise DataError(f"{path}: not an advice written by tunelab advise")
    return data
