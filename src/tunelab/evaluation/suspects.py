"""Likely mislabelled classify examples, found before training (``tunelab data check --suspect-labels``).

A request filed under the wrong category trains the model to be wrong and lowers its test score. Confident
learning (Northcutt, Jiang and Chuang 2021, "Confident Learning: Estimating Uncertainty in Dataset Labels")
finds such rows from out-of-fold predicted probabilities: a row whose given label is less likely than another
label that the model predicts confidently for its own rows is a candidate. The probabilities come from the
``embedding`` baseline's model (frozen sentence embeddings + logistic regression): the fold classifiers of its
cross-validation at the C it chose (``baselines.cross_validate``), each row scored by a classifier that never saw
it. ``tunelab run`` reads them from the baseline it scores anyway (``baselines.embedding_baseline``, on the rows it
learned from), ``tunelab data check --suspect-labels`` from the same code run on the file
(``baselines.find_suspect_labels``); this module holds the rule and the report both give.

The result is a list of candidates for a person to look at, not a list of errors: an ambiguous request, or
a label the embeddings cannot tell apart from another, is listed too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunelab.data.records import ClassifyRecord

MAX_SUSPECTS = 20  # shown by default; the count and share cover all of them
# Below this many examples for the median label, the list is said to be weak hints. Each row is scored by a
# classifier fitted on the other folds, which saw (K-1)/K of its label's rows: with 4 or fewer rows a label, that is
# 1 to 3 examples, and the per-label threshold is a mean over as few rows, so a clean row is flagged about as often
# as a wrong one (13 records with 7 labels flagged 46 % of them). 5 is also where the folds reach their most (K = 5).
WEAK_MEDIAN_EXAMPLES = 5


@dataclass(frozen=True)
class Suspect:
    """A row whose given label the out-of-fold model doubts, and the label it suggests."""

    source: str  # file:line
    text: str
    given: str
    suggested: str
    p_given: float
    p_suggested: float

    @property
    def margin(self) -> float:
        return self.p_suggested - self.p_given


@dataclass
class SuspectReport:
    """Every suspect (most doubtful first) among ``checked`` of ``records`` rows, or ``skipped`` with the reason."""

    records: int
    checked: int = 0
    suspects: list[Suspect] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # labels with a single example: no fold can score them
    skipped: str | None = None
    weak: str | None = None  # why the list is weak hints (few examples per label), None when it is not
    model: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  # C, folds, cv_accuracy

    @property
    def share(self) -> float:
        return len(self.suspects) / self.records if self.records else 0.0

    def top(self, max_suspects: int | None = None) -> list[Suspect]:
        """The most doubtful ``max_suspects`` rows (default ``MAX_SUSPECTS``)."""
        return self.suspects[: MAX_SUSPECTS if max_suspects is None else max_suspects]

    def to_dict(self, max_suspects: int | None = None) -> dict[str, Any]:
        return {
            "records": self.records,
            "checked": self.checked,
            "count": len(self.suspects),
            "share": self.share,
            "suspects": [{**vars(s), "margin": s.margin} for s in self.top(max_suspects)],
            "left_out": self.left_out,
            "skipped": self.skipped,
            "weak": self.weak,
            "model": self.model,
            "settings": self.settings,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SuspectReport:
        """The report ``to_dict`` wrote (every suspect it kept; count and share then cover those)."""
        fields = {key: data[key] for key in ("records", "checked", "left_out", "skipped", "weak", "model", "settings") if key in data}
        known = set(Suspect.__dataclass_fields__)
        return cls(**fields, suspects=[Suspect(**{key: value for key, value in row.items() if key in known}) for row in data.get("suspects", [])])

    def lines(self, shown: int = 3) -> list[str]:
        """The top ``shown`` rows as ``file:line given → suggested``."""
        return [f"{s.source or '?'} {s.given} → {s.suggested}" for s in self.top(shown)]


def confident_suspects(probabilities: np.ndarray, given: Sequence[int]) -> list[tuple[int, int]]:
    """Confident learning's rule on out-of-fold ``probabilities`` (rows × classes): (row, suggested class), ranked.

    Per class j the threshold t_j is the mean probability of j over the rows labelled j (how sure the model
    is of its own class). A row labelled i is suspect when another class j has p_j >= t_j and p_j > p_i; the
    suggested class is the most probable such j. Ranked by p_suggested - p_given, largest first (ties: row order).
    A class no row is labelled with has no threshold and is never suggested.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    given = np.asarray(given, dtype=int)
    classes = probabilities.shape[1]
    thresholds = np.full(classes, np.inf)
    for j in range(classes):
        mine = given == j
        if mine.any():
            thresholds[j] = probabilities[mine, j].mean()
    found = []
    for row, (p, i) in enumerate(zip(probabilities, given, strict=True)):
        above = (p >= thresholds) & (p > p[i])
        above[i] = False
        if above.any():
            j = int(np.flatnonzero(above)[np.argmax(p[above])])
            found.append((row, j, p[j] - p[i]))
    found.sort(key=lambda item: (-item[2], item[0]))
    return [(row, j) for row, j, _ in found]


def left_out_labels(records: Sequence[ClassifyRecord]) -> list[str]:
    """Labels with a single example: no fold can score them (sorted)."""
    counts = Counter(r.label for r in records)
    return sorted(label for label, n in counts.items() if n < 2)


def suspect_report(
    records: Sequence[ClassifyRecord], probabilities: np.ndarray | None, classes: Sequence[str], *, total: int | None = None,
    model: str = "", settings: dict[str, Any] | None = None, skipped: str | None = None,
) -> SuspectReport:
    """The suspects among ``records`` given each one's out-of-fold ``probabilities`` (columns ``classes``).

    ``total``: the rows asked about (``records`` and those left out, default ``records``); ``probabilities`` None:
    nothing was cross-validated, and ``skipped`` says why.
    """
    report = SuspectReport(records=len(records) if total is None else total, model=model, settings=dict(settings or {}))
    report.left_out = left_out_labels(records)
    if probabilities is None:
        report.skipped = skipped or "no out-of-fold probabilities"
        return report
    counts = Counter(r.label for r in records)
    column = {label: index for index, label in enumerate(classes)}
    given = [column[r.label] for r in records]
    report.checked = len(records)
    median = float(np.median([counts[label] for label in classes]))
    if median < WEAK_MEDIAN_EXAMPLES:
        report.weak = f"few examples per label (median {median:g}, fewer than {WEAK_MEDIAN_EXAMPLES}): treat these as weak hints"
    report.suspects = [
        Suspect(records[row].source, records[row].text, records[row].label, classes[j], float(probabilities[row, given[row]]),
                float(probabilities[row, j]))
        for row, j in confident_suspects(probabilities, given)
    ]
    return report


def run_warning(report: SuspectReport, full_list: str, shown: int = 3) -> str | None:
    """``tunelab run``'s one line before training: how many of the rows learned from, the top ``shown``, where the
    full list is, and the weak-hints note; None when there is nothing to say (no suspect, or not checked)."""
    if not report.suspects:
        return None
    weak = f"; {report.weak}" if report.weak else ""
    return (
        f"data: {len(report.suspects)} of {report.records} training rows have a suspect label ({report.share:.1%}; out-of-fold "
        f"embedding baseline): {_top_rows(report, shown)}; every one in {full_list}{weak}. Candidates to look at, "
        "not errors: training goes on with the labels as given"
    )


def _top_rows(report: SuspectReport, shown: int) -> str:
    """``file: line N given → suggested; line M ...`` when the rows share one file (the run's paths are absolute, and
    a path said three times filled most of the warning), else each row's own ``file:line given → suggested``."""
    suspects = report.top(shown)
    places = [s.source.rpartition(":") for s in suspects]
    files = {file for file, _, line in places}
    if len(files) == 1 and all(file and line.isdigit() for file, _, line in places):
        rows = "; ".join(f"line {line} {s.given} → {s.suggested}" for (_, _, line), s in zip(places, suspects, strict=True))
        return f"{files.pop()}: {rows}"
    return "; ".join(report.lines(shown))
