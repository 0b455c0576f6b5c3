"""Compare two evaluations of the same test set: per metric, before, after, the difference, and a
paired bootstrap 95% interval of the difference; then a one-line verdict on the task's primary metric.

The bootstrap resamples *examples* (the same resample for both evaluations, hence "paired") and
recomputes every metric on each resample from the stored per-example scores. Corpus metrics are
recomputed exactly: BLEU and chrF from summed sacrebleu statistics, macro-F1 and ECE from the
resampled predictions, perplexity as exp(sum NLL / sum tokens) of the resampled documents.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.errors import DataError
from tunelab.evaluation.metrics import PRIMARY_METRIC, metric_specs, score_table
from tunelab.evaluation.result import EvalResult, json_safe
from tunelab.paths import atomic_write_text
from tunelab.runs import RunFolder

BETTER, WORSE, SAME = "better", "worse", "no significant difference"
# A metric one side has no value of: measured against a reference, and that side is the reference scored as itself.
NOT_COMPARED = "not compared"
TOO_FEW = "too few test examples to decide"
# The primary metric of the tuned model, or of every baseline, is not a number on the test set: no verdict either.
CANNOT_JUDGE = "cannot be judged"
# Below this many paired test examples the percentile bootstrap's 95% interval is too narrow: with two
# equally good models it excluded zero in 8-18 % of simulated test sets at n <= 20 (nominal 5 %), and in at
# most 7.5 % from n = 25 on, for accuracy and continuous per-example scores alike; 25 rounded up to ten for the
# simulation's noise (bench/bootstrap_minimum.py; bench/README.md, "How many test examples a verdict needs").
# A verdict from fewer examples is no verdict.
MIN_TEST_EXAMPLES = 30
_CHUNK = 200  # resamples computed at once: bounds memory to CHUNK x n indices
_Z_POWER = 1.959964 + 0.841621  # a two-sided 5 % test with 80 % power


def examples_needed(metric: MetricComparison, n: int) -> int | None:
    """About how many test examples would detect ``metric``'s observed difference (5 % level, 80 % power).

    The bootstrap's standard error at n (its 95% interval's width / 3.92) scales as 1/sqrt(n); None when the
    observed difference is 0 or the interval is undefined.
    """
    if not (np.isfinite([metric.low, metric.high, metric.difference]).all()) or metric.difference == 0 or n <= 0:
        return None
    error = (metric.high - metric.low) / (2 * 1.959964)
    if error <= 0:
        return max(n, MIN_TEST_EXAMPLES)
    return max(MIN_TEST_EXAMPLES, int(np.ceil(n * (_Z_POWER * error / abs(metric.difference)) ** 2)))


def too_few_statement(n: int, metric: MetricComparison, opponent: str) -> str:
    """The verdict's sentence for a test set under ``MIN_TEST_EXAMPLES``, naming what would be needed."""
    needed = examples_needed(metric, n)
    text = (f"{TOO_FEW} (n={n}; the paired bootstrap needs at least {MIN_TEST_EXAMPLES}): against {opponent} the observed "
            f"difference is {metric.difference:+.4g} on {metric.name}")
    if needed is None:
        return text + f"; at least {MIN_TEST_EXAMPLES} test examples are needed"
    return text + f"; about {needed} test examples would be needed to detect a difference that large (80% power)"


def not_a_number(model: str, metric: str, table: dict[str, np.ndarray]) -> str:
    """Why ``model`` has no value of ``metric`` on a test set, its scores being ``table`` (``metrics.score_table``): how many
    examples have a per-example score that is not a number (a NaN NLL from a model overflowing)."""
    n = len(next(iter(table.values()))) if table else 0
    broken = np.zeros(n, dtype=bool)
    for column in table.values():
        if np.issubdtype(column.dtype, np.floating):
            broken |= ~np.isfinite(column.reshape(n, -1)).all(axis=1)
    why = f"{int(broken.sum())} of {n} examples' scores are NaN" if broken.any() else "it is undefined on these examples"
    if metric == "ece" and "confidence" in table and n and np.isnan(table["confidence"]).all():
        why = "its answers come without probabilities"  # a predictions file without its probability column
    # "the ece of NAME", not "NAME's ece": a name is the user's (a predictions baseline named keywords read "keywords's").
    return f"the {metric} of {model} is not a number on this test set ({why})"


def _save_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write a comparison or verdict as JSON, atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False))
    return path


@dataclass
class MetricComparison:
    """One metric before (A) and after (B), with the 95% interval of B - A.

    ``not_compared``: why A and B are not compared on it (one of them has no value of it: NaN, as the difference and
    the interval), else None."""

    name: str
    before: float
    after: float
    difference: float
    low: float
    high: float
    higher_is_better: bool | None
    not_compared: str | None = None
    full_scale: float | None = 1.0  # the metric's range when bounded, None when not (``metrics.MetricSpec.full_scale``)

    @property
    def outcome(self) -> str:
        """better / worse / no significant difference (for B against A); "changed" when no direction; "not compared"."""
        if self.not_compared:
            return NOT_COMPARED
        if self.low <= 0 <= self.high or not np.isfinite([self.low, self.high]).all():
            return SAME
        if self.higher_is_better is None:
            return "changed"
        improved = (self.low > 0) == self.higher_is_better
        return BETTER if improved else WORSE

    def worst_case(self) -> float:
        """The least favourable plausible change of B over A, in the "better" direction: the 95% interval's end
        on the bad side (its low end when higher is better, minus its high end when lower is better)."""
        return self.low if self.higher_is_better is not False else -self.high

    def allowance(self, margin: float) -> float:
        """How much worse than A that B may be on this metric under the non-inferiority ``margin`` (a share): ``margin``
        of the metric's range when it is bounded, of A's value when it is not (perplexity; ``MetricSpec.full_scale``)."""
        if self.full_scale is None:
            return margin * abs(self.before)
        return margin * self.full_scale

    def describe_margin(self, margin: float) -> str:
        """``margin`` as it reads on this metric: "0.02" on a proportion, "2% of 12.3 (0.246)" on perplexity."""
        if self.full_scale is None:
            return f"{margin * 100:g}% of {self.before:.4g} ({self.allowance(margin):.4g})"
        if self.full_scale == 1:
            return f"{margin:g}"
        return f"{margin:g} of {self.full_scale:g} ({self.allowance(margin):.4g})"

    def non_inferior(self, margin: float) -> bool:
        """The one non-inferiority rule (retrain's challenger, distillation's student, `tunelab promote`): B is shown to be
        no worse than A by more than ``margin`` when even the worst plausible change (``worst_case``) is above minus the
        margin as it reads on this metric (``allowance``)."""
        worst, allowed = self.worst_case(), self.allowance(margin)
        return bool(np.isfinite([worst, allowed]).all() and worst > -allowed)


@dataclass
class Comparison:
    """B against A on the examples both evaluated (normally A = base model, B = tuned model)."""

    task: str
    primary: str
    name_a: str
    name_b: str
    n: int
    seed: int
    samples: int
    metrics: list[MetricComparison]
    verdict: str
    summary: str
    warnings: list[str] = field(default_factory=list)

    def metric(self, name: str) -> MetricComparison:
        return next(m for m in self.metrics if m.name == name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for item, metric in zip(data["metrics"], self.metrics, strict=True):
            item["outcome"] = metric.outcome
        return json_safe(data)

    def save(self, path: str | Path) -> Path:
        return _save_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        metrics = [
            MetricComparison(**{k: (float("nan") if v is None and k not in ("name", "higher_is_better", "not_compared", "full_scale") else v)
                                for k, v in m.items() if k != "outcome"})
            for m in data["metrics"]
        ]
        return cls(**{**data, "metrics": metrics})


def _keyed(result: EvalResult) -> dict[tuple[str, int], dict]:
    # Pair by (id, occurrence): a duplicated test example pairs with its own copy.
    seen: Counter[str] = Counter()
    out = {}
    for row in result.rows:
        out[(row["id"], seen[row["id"]])] = row
        seen[row["id"]] += 1
    return out


def _paired_rows(a: EvalResult, b: EvalResult) -> tuple[list[dict], list[dict], list[str]]:
    rows_a, rows_b = _keyed(a), _keyed(b)
    shared = [key for key in rows_a if key in rows_b]
    warnings = []
    if not shared:
        raise DataError(
            f"the evaluations of '{a.model}' and '{b.model}' share no test example",
            "compare evaluations of the same test set",
        )
    if len(shared) < max(len(rows_a), len(rows_b)) or (a.test_fingerprint and b.test_fingerprint and a.test_fingerprint != b.test_fingerprint):
        warnings.append(
            f"the two evaluations used different test sets ({len(rows_a)} and {len(rows_b)} examples); "
            f"compared on the {len(shared)} they share"
        )
    return [rows_a[k] for k in shared], [rows_b[k] for k in shared], warnings


def check_text_scoring(a: EvalResult, b: EvalResult, names: tuple[str, str] | None = None) -> None:
    """The one check that two text evaluations were scored by the same rule (``metrics.TEXT_SCORING``, none stored: 1).

    ``names`` says what the two are to the user (default: their models, quoted), in the message and in what to evaluate again.

    Raises:
        DataError: when both are text evaluations scored by different rules.
    """
    if a.task != "text" or b.task != "text":
        return
    rules = [result.settings.get("text_scoring", 1) for result in (a, b)]
    if rules[0] == rules[1]:
        return
    # Their NLLs sum over different tokens: a difference would be the rule's, not the models'.
    name_a, name_b = names or (f"'{a.model}'", f"'{b.model}'")
    older = name_a if rules[0] < rules[1] else name_b
    raise DataError(
        f"the evaluations of {name_a} and {name_b} were scored by different rules for which tokens a text's NLL "
        f"covers (text_scoring {rules[0]} and {rules[1]}); their perplexity and bits per byte are not comparable",
        # For runs too: the registry keeps a run's metrics as first scored, so the files are what is compared again.
        f"evaluate {older} again with this tunelab (`tunelab eval ... --out FILE.json`), then compare the two evaluation "
        "files (`tunelab compare A.json B.json`)",
    )


def verdict_metric(a: EvalResult, b: EvalResult, warnings: list[str] | None = None) -> str:
    """The metric B is judged against A on: B's own ``metrics["primary"]`` (``metrics.primary_metric``: eval.metric, else
    the task's default), else A's, else the task's default. Evaluations that name different ones add a warning."""
    named = [result.metrics.get("primary") for result in (b, a)]
    primary = next((name for name in named if name), PRIMARY_METRIC[b.task])
    if warnings is not None and all(named) and named[0] != named[1]:
        warnings.append(f"the evaluations name different primary metrics ('{b.model}': {named[0]}, '{a.model}': {named[1]}); "
                        f"the verdict is on {primary}, that of '{b.model}'")
    return primary


def compare_evaluations(a: EvalResult, b: EvalResult, *, seed: int = 0, samples: int = 1000) -> Comparison:
    """Compare evaluation ``b`` against ``a`` with a seeded paired bootstrap.

    Raises:
        DataError: when the tasks differ, text evaluations were scored by different rules (``check_text_scoring``), or
            the evaluations share no example.
    """
    if a.task != b.task:
        raise DataError(f"cannot compare a {a.task} evaluation with a {b.task} evaluation")
    task = a.task
    check_text_scoring(a, b)
    rows_a, rows_b, warnings = _paired_rows(a, b)
    labels = list(dict.fromkeys((a.labels or []) + (b.labels or [])))
    table_a, table_b = score_table(task, rows_a, labels), score_table(task, rows_b, labels)
    n = len(rows_a)
    everything = np.arange(n)[None, :]
    rng = np.random.default_rng(seed)
    specs = metric_specs(task, table_a, table_b)
    # A preference run's baseline is its reference scored as itself: its reward against itself is zero by definition
    # (and its preference_accuracy another rule's), so it has no value of a metric measured against the reference.
    itself = {spec.name: [r.baseline_name or r.model for r in (a, b) if r.baseline] for spec in specs if spec.against_reference}
    compared = [spec for spec in specs if not itself.get(spec.name)]
    differences: dict[str, list[np.ndarray]] = {spec.name: [] for spec in compared}
    for start in range(0, samples, _CHUNK):
        indices = rng.integers(0, n, size=(min(_CHUNK, samples - start), n))
        for spec in compared:
            with np.errstate(divide="ignore", invalid="ignore"):
                differences[spec.name].append(spec.compute(table_b, indices) - spec.compute(table_a, indices))
    metrics = []
    nan = float("nan")
    for spec in specs:
        before = float(spec.compute(table_a, everything)[0])
        after = float(spec.compute(table_b, everything)[0])
        if itself.get(spec.name):
            reason = f"{itself[spec.name][0]} is the reference it is measured against: its reward against itself is zero"
            before, after = (nan if a.baseline else before), (nan if b.baseline else after)
            metrics.append(MetricComparison(spec.name, before, after, nan, nan, nan, spec.higher_is_better, not_compared=reason, full_scale=spec.full_scale))
            continue
        # A baseline by its name (its model description may hold a file's whole path), as the tables' headers name it.
        undefined = [not_a_number(r.baseline_name or r.model, spec.name, table) for r, value, table in ((a, before, table_a), (b, after, table_b))
                     if not np.isfinite(value)]
        if undefined:
            # A per-example score that is not a number (a NaN NLL from a model overflowing): the resamples without that
            # example would still give an interval, of another test set, and a verdict beside a difference of NaN.
            reason = "; ".join(undefined)
            metrics.append(MetricComparison(spec.name, before, after, nan, nan, nan, spec.higher_is_better, not_compared=reason, full_scale=spec.full_scale))
            continue
        diffs = np.concatenate(differences[spec.name])
        diffs = diffs[np.isfinite(diffs)]
        low, high = (np.percentile(diffs, [2.5, 97.5]) if diffs.size else (float("nan"), float("nan")))
        metrics.append(MetricComparison(spec.name, before, after, after - before, float(low), float(high), spec.higher_is_better, full_scale=spec.full_scale))
    primary = verdict_metric(a, b, warnings)
    main = next((m for m in metrics if m.name == primary), None)
    if main is None:
        raise DataError(f"the verdict is on {primary} (eval.metric), which the evaluations of '{a.model}' and '{b.model}' do not both have",
                        f"compare on one they both have ({', '.join(m.name for m in metrics)}): set eval.metric, or evaluate both again")

    verdict = main.outcome if n >= MIN_TEST_EXAMPLES else TOO_FEW
    direction = "higher" if main.higher_is_better else "lower"
    summary = (
        f"{b.model} vs {a.model}: {verdict} on {primary} ({direction} is better): "
        f"{main.before:.4g} -> {main.after:.4g}, difference {main.difference:+.4g} "
        f"(95% CI {main.low:+.4g} to {main.high:+.4g}, n={n}, paired bootstrap x{samples})"
    )
    if main.not_compared:
        # No numbers to show beside a NaN: the reason is the summary.
        summary = f"{b.model} vs {a.model}: {CANNOT_JUDGE} on {primary}: {main.not_compared}"
    elif n < MIN_TEST_EXAMPLES:
        summary += "; " + too_few_statement(n, main, a.model)
    return Comparison(task, primary, a.model, b.model, n, seed, samples, metrics, verdict, summary, warnings)


def runs_scoring_warnings(runs: Sequence[tuple[str, str | Path | None]]) -> list[str]:
    """For (run name, run folder) of runs shown side by side (``tunelab compare RUN RUN``): one line for each run whose
    tuned evaluation another rule scored than the first such run's (``check_text_scoring``), saying what to evaluate
    again. The registry's metrics carry no rule; the run folder's evaluation does. Runs without one are not checked."""
    evaluations = []
    for name, run_dir in runs:
        path = RunFolder(Path(run_dir)).tuned_eval if run_dir else None
        if path is None or not path.is_file():
            continue
        try:
            evaluations.append((name, EvalResult.load(path)))
        except DataError:
            continue  # a damaged file is no rule to compare by; the side-by-side table still shows the registry's values
    warnings = []
    for (first_name, first), (name, other) in ((evaluations[0], later) for later in evaluations[1:]):
        try:
            check_text_scoring(first, other, (f"run {first_name}", f"run {name}"))
        except DataError as error:
            warnings.append(f"{error.message}: {error.hint}")
    return warnings


def compare_files(path_a: str | Path, path_b: str | Path, *, seed: int = 0, samples: int = 1000) -> Comparison:
    """``compare_evaluations`` on two files written by ``EvalResult.save`` (B against A).

    Raises:
        DataError: when a file is missing or not an evaluation, or the two cannot be compared.
    """
    return compare_evaluations(EvalResult.load(path_a), EvalResult.load(path_b), seed=seed, samples=samples)


@dataclass
class GroupComparison:
    """The tuned model against one opponent on the test examples of one group (``data.group_field``): the primary
    metric of each and the difference (tuned minus opponent) with its paired bootstrap 95% interval, NaN under
    ``MIN_TEST_EXAMPLES`` examples (``outcome`` then says "too few (n=...)")."""

    group: str
    n: int
    opponent: str
    metric: str
    tuned: float
    opponent_value: float
    difference: float
    low: float
    high: float
    outcome: str
    higher_is_better: bool | None = True
    full_scale: float | None = 1.0  # the metric's range when bounded (``MetricComparison.full_scale``): its margin's scale

    @property
    def judged(self) -> bool:
        """Whether the group has enough test examples for a verdict (``MIN_TEST_EXAMPLES``): a smaller one has no interval."""
        return self.n >= MIN_TEST_EXAMPLES

    def as_metric(self) -> MetricComparison:
        """The group's primary metric as a ``MetricComparison`` (A the opponent, B the tuned model): the rules and texts
        a whole test set is judged by (``non_inferior``, ``describe_margin``) judge a group alike."""
        return MetricComparison(self.metric, self.opponent_value, self.tuned, self.difference, self.low, self.high,
                                self.higher_is_better, full_scale=self.full_scale)

    @property
    def worse_line(self) -> str | None:
        """The verdict's line for a group where the tuned model is significantly worse than the opponent; else None."""
        if self.outcome != WORSE:
            return None
        return (f"worse than {self.opponent} on group '{self.group}': {self.difference:+.4g} {self.metric} "
                f"(95% CI {self.low:+.4g} to {self.high:+.4g}), n={self.n}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupComparison:
        known = set(cls.__dataclass_fields__)
        numbers = ("tuned", "opponent_value", "difference", "low", "high")
        return cls(**{key: (float("nan") if value is None and key in numbers else value) for key, value in data.items() if key in known})


def compare_groups(opponent: EvalResult, tuned: EvalResult, name: str, *, seed: int = 0, samples: int = 1000) -> list[GroupComparison]:
    """``tuned`` against ``opponent`` (called ``name``) on each group of the tuned evaluation's rows (their ``group``),
    by ``compare_evaluations`` on that group's paired rows: the verdict's bootstrap, seed and resamples. Empty when the
    rows carry no group. Groups in the order they first appear in the test set. A promotion judges a challenger (as
    ``tuned``) against the champion (as ``opponent``) per group by these too (``tasks.retrain.group_comparisons``)."""
    tuned_rows, opponent_rows = _keyed(tuned), _keyed(opponent)
    members: dict[str, list[tuple[str, int]]] = {}
    for key, row in tuned_rows.items():
        if row.get("group") is not None and key in opponent_rows:
            members.setdefault(str(row["group"]), []).append(key)
    found = []
    for group, keys in members.items():
        # The group's rows alone, in their order, on both sides: the rows of a duplicated example pair as in the whole set.
        def part(result: EvalResult, rows: dict[tuple[str, int], dict], keys: list[tuple[str, int]] = keys) -> EvalResult:
            return dataclasses.replace(result, rows=[rows[key] for key in keys], n=len(keys), test_fingerprint="")

        comparison = compare_evaluations(part(opponent, opponent_rows), part(tuned, tuned_rows), seed=seed, samples=samples)
        m = comparison.metric(comparison.primary)
        low, high, outcome = m.low, m.high, m.outcome
        if comparison.n < MIN_TEST_EXAMPLES:
            # The interval of so few examples is too narrow to trust (MIN_TEST_EXAMPLES): not shown, not judged.
            low, high, outcome = float("nan"), float("nan"), f"too few (n={comparison.n})"
        found.append(GroupComparison(group, comparison.n, name, m.name, m.after, m.before, m.difference, low, high, outcome, m.higher_is_better,
                                     m.full_scale))
    return found


PAID_OFF = "fine-tuning paid off"


@dataclass
class Verdict:
    """The tuned model against every baseline, each with the same paired bootstrap, and the one-line answer.

    ``comparisons[name]`` is the tuned model (B) against baseline ``name`` (A). ``strongest`` is the
    baseline with the best primary metric. ``verdict`` is ``PAID_OFF`` only when the tuned model beats
    every baseline with the 95% interval of the difference above zero (below, for lower-is-better
    metrics); ``"use <baseline> instead"`` when some baseline is significantly better (the best of
    those); else ``"no significant difference"``. ``CANNOT_JUDGE`` when the tuned model's primary metric, or every
    baseline's, is not a number on the test set; a baseline without a value is named in ``summary``, never an opponent.
    """

    task: str
    primary: str
    tuned: str
    n: int
    seed: int
    samples: int
    comparisons: dict[str, Comparison]
    strongest: str
    verdict: str
    summary: str
    warnings: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # baselines not scored, with the reason (shown, never dropped)
    # The tuned evaluation's ``EvalResult.test_fingerprint``: runs are set side by side (``tunelab compare RUN RUN``,
    # through the registry's copy of this verdict) only knowing whether they were judged on the same test set.
    test_fingerprint: str = ""
    # The tuned model against the opponent the verdict names, per group of the test set (``data.group_field``);
    # empty without groups.
    groups: list[GroupComparison] = field(default_factory=list)

    @property
    def paid_off(self) -> bool:
        return self.verdict == PAID_OFF

    @property
    def group_lines(self) -> list[str]:
        """One line per group where the tuned model is significantly worse than the opponent the verdict names: shown
        under the verdict wherever it is, so "paid off" on average cannot hide a group it lost."""
        return [line for group in self.groups if (line := group.worse_line)]

    def against(self, baseline: str) -> MetricComparison:
        """The primary metric of the tuned model against ``baseline``."""
        return self.comparisons[baseline].metric(self.primary)

    def metric(self, name: str) -> MetricComparison:
        """Metric ``name`` of the tuned model against the strongest opponent (what a leaderboard shows)."""
        return self.comparisons[self.strongest].metric(name)

    @property
    def metrics(self) -> list[MetricComparison]:
        return self.comparisons[self.strongest].metrics

    def to_dict(self) -> dict[str, Any]:
        data = {key: value for key, value in asdict(self).items() if key != "comparisons"}
        data["comparisons"] = {name: comparison.to_dict() for name, comparison in self.comparisons.items()}
        data["paid_off"] = self.paid_off
        data["group_lines"] = self.group_lines
        return json_safe(data)

    def save(self, path: str | Path) -> Path:
        return _save_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        comparisons = {name: Comparison.from_dict(value) for name, value in data["comparisons"].items()}
        known = set(cls.__dataclass_fields__) - {"comparisons", "groups"}
        groups = [GroupComparison.from_dict(group) for group in data.get("groups") or ()]
        return cls(**{key: value for key, value in data.items() if key in known}, comparisons=comparisons, groups=groups)


def _lead(metric: MetricComparison) -> tuple[float, float, float]:
    """How much the baseline (A) leads the tuned model (B), with its 95% interval, in the metric's good direction."""
    if metric.higher_is_better is False:
        return metric.difference, metric.low, metric.high
    return -metric.difference, -metric.high, -metric.low


def compare_with_baselines(
    baselines: dict[str, EvalResult], tuned: EvalResult, *, seed: int = 0, samples: int = 1000, skipped: dict[str, str] | None = None,
) -> Verdict:
    """Compare ``tuned`` with every baseline (same seed, hence the same resamples) and say whether tuning paid off.

    ``skipped``: baselines not scored and why (default: the ``skipped`` of ``evaluate_baselines``' result);
    the verdict carries them so the report and the CLI show each. Under ``MIN_TEST_EXAMPLES`` paired test
    examples (with any one baseline) the verdict is ``TOO_FEW`` whatever the intervals say.

    Raises:
        DataError: without baselines, or when an evaluation cannot be compared with the tuned one.
    """
    skipped = dict(getattr(baselines, "skipped", {}) if skipped is None else skipped)
    if not baselines:
        raise DataError("no baseline to compare the tuned model with", "evaluate at least one baseline (eval.baselines)")
    comparisons = {name: compare_evaluations(result, tuned, seed=seed, samples=samples) for name, result in baselines.items()}
    first = next(iter(comparisons.values()))
    primary = first.primary
    every = {name: comparison.metric(primary) for name, comparison in comparisons.items()}
    # A baseline whose primary metric is not a number is no opponent: it can neither be beaten nor tied, nor be the
    # strongest (NaN would win or lose max() by its place in the list); it is named in the summary instead.
    unscored = {name: not_a_number(comparisons[name].name_a, primary, score_table(result.task, result.rows, result.labels))
                for name, result in baselines.items() if not np.isfinite(every[name].before)}
    metrics = {name: m for name, m in every.items() if name not in unscored}
    lower_is_better = first.metric(primary).higher_is_better is False
    beaten = [name for name, m in metrics.items() if m.outcome == BETTER]
    winners = [name for name, m in metrics.items() if m.outcome == WORSE]
    # The strongest opponent scores best on the primary metric; ties: one significantly better than the tuned model
    # (the verdict's "use ... instead" names it, and the report labels it), else the first listed.
    sign = -1 if lower_is_better else 1
    strongest = max(metrics or every, key=lambda name: (sign * every[name].before if name in metrics else 0.0, name in winners))
    direction = "lower" if lower_is_better else "higher"

    def scores(name: str) -> str:
        m = metrics[name]
        return f"{name} {m.before:.4g} vs tuned {m.after:.4g}"

    # Each opponent is paired on the rows it shares with the tuned model (a baseline file may hold fewer): the
    # fewest decide whether there is a verdict at all.
    n = min(comparison.n for comparison in comparisons.values())
    named = strongest  # the opponent the verdict names (the best of those significantly better, when some are)
    tuned_undefined = not all(np.isfinite(m.after) for m in every.values())
    if tuned_undefined or not metrics:
        # No number to judge by: more test examples would not help, unlike TOO_FEW.
        verdict = CANNOT_JUDGE
        why = ([not_a_number(tuned.model, primary, score_table(tuned.task, tuned.rows, tuned.labels))] if tuned_undefined
               else list(unscored.values()))
        summary = f"fine-tuning {CANNOT_JUDGE}: " + "; ".join(why)
        if not metrics:
            unscored = {}  # already the summary's reason
    elif n < MIN_TEST_EXAMPLES:
        verdict = TOO_FEW
        short = strongest if comparisons[strongest].n == n else next(name for name, c in comparisons.items() if c.n == n)
        summary = "fine-tuning cannot be judged: " + too_few_statement(n, every[short], short)
    elif len(beaten) == len(metrics):
        verdict = PAID_OFF
        m = metrics[strongest]
        summary = (
            f"{PAID_OFF}: {tuned.model} beats every baseline on {primary} ({direction} is better); "
            f"the strongest, {scores(strongest)}: difference {m.difference:+.4g} (95% CI {m.low:+.4g} to {m.high:+.4g})"
        )
    elif winners:
        best = named = (min if lower_is_better else max)(winners, key=lambda name: metrics[name].before)
        lead, low, high = _lead(metrics[best])
        verdict = f"use {best} instead"
        summary = (
            f"fine-tuning did not pay off: use {best} instead: it wins by {lead:.4g} {primary} "
            f"(95% CI {low:.4g} to {high:.4g}; {scores(best)}, {direction} is better)"
        )
        others = [name for name in winners if name != best]
        if others:
            summary += f"; also significantly better than the tuned model: {', '.join(others)}"
        if strongest != best:
            summary += f"; the strongest opponent, {scores(strongest)}, is not significantly better"
    else:
        verdict = SAME
        tied = [name for name in metrics if name not in beaten]
        m = metrics[strongest]
        summary = (
            f"fine-tuning did not pay off: no significant difference on {primary} from {', '.join(tied)}; "
            f"the strongest opponent, {scores(strongest)}: difference {m.difference:+.4g} (95% CI {m.low:+.4g} to {m.high:+.4g})"
        )
    warnings = list(dict.fromkeys(w for comparison in comparisons.values() for w in comparison.warnings))
    if unscored:
        summary += "; not compared: " + "; ".join(unscored.values())
    if skipped:
        summary += f"; not scored (cannot run here or cannot win, see each reason): {', '.join(skipped)}"
    # Per group against the opponent the verdict names: none when there is no opponent to judge by.
    groups = compare_groups(baselines[named], tuned, named, seed=seed, samples=samples) if verdict != CANNOT_JUDGE else []
    return Verdict(tuned.task, primary, tuned.model, n, seed, samples, comparisons, strongest, verdict, summary, warnings, skipped,
                   tuned.test_fingerprint, groups)
