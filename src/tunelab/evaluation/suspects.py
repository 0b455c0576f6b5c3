"""Likely mislabelled classify examples, found before training (``tunelab data check --suspect-labels``).

A request filed under the wrong category trains the model to be wrong and lowers its test score. Confident
learning (Northcutt, Jiang and Chuang 2021, "Confident Learning: Estimating Uncertainty in Dataset Labels")
finds such rows from out-of-fold predicted probabilities: a row whose given label is less likely than another
label that the model predicts confidently for its own rows is a candidate. The probabilities come from the
``embedding`` baseline's model (frozen sentence embeddings + logistic regression, C chosen by ``fit_with_cv``),
each row scored by a classifier that never saw it.

The result is a list of candidates for a person to look at, not a list of errors: an ambiguous request, or
a label the embeddings cannot tell apart from another, is listed too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunelab.config import EvalConfig
from tunelab.data.records import ClassifyRecord
from tunelab.evaluation.baselines import (
    BaselineSkipped,
    embedding_classifier,
    expect_progress,
    fit_with_cv,
    in_label_order,
    load_embedder,
)

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


def out_of_fold_probabilities(features: np.ndarray, labels: Sequence[str], *, seed: int = 0, progress: Any = None) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Each row's class probabilities from a classifier fitted on the other folds (columns: sorted labels).

    C is chosen once by the embedding baseline's cross-validation over all rows (not again inside each fold:
    the choice barely moves the ranking and would cost the grid's fits once more per fold). The folds are the
    same stratified, seeded ones, K = at most 5 and at most the rarest label's count (>= 2 here).
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(list(labels))
    _, fitted = fit_with_cv(lambda c: embedding_classifier(c, seed), features, labels, seed=seed, progress=progress)
    classes = sorted(set(labels.tolist()))
    folds = StratifiedKFold(n_splits=fitted["folds"], shuffle=True, random_state=seed)
    probabilities = np.zeros((len(labels), len(classes)))
    expect_progress(progress, fitted["folds"])
    for train_index, test_index in folds.split(np.zeros(len(labels)), labels):
        classifier = embedding_classifier(fitted["C"], seed).fit(features[train_index], labels[train_index])
        probabilities[test_index] = in_label_order(classifier.predict_proba(features[test_index]), classifier.classes_, classes)
        if progress is not None:
            progress(1)
    return probabilities, classes, fitted


def find_suspect_labels(
    records: Sequence[ClassifyRecord],
    *,
    config: EvalConfig | None = None,
    seed: int = 0,
    allow_network: bool = False,
    progress: Any = None,
) -> SuspectReport:
    """Rows of ``records`` whose label is likely wrong (see the module docstring); never raises for too little data.

    ``config.embedding_model`` names the embedding model (the embedding baseline's); one that cannot be loaded
    gives a report with ``skipped`` saying why. ``progress`` is a baseline's (``expect(n)``, then called with
    each part done: texts embedded, classifiers fitted).
    """
    report = SuspectReport(records=len(records))
    counts = Counter(r.label for r in records)
    report.left_out = sorted(label for label, n in counts.items() if n < 2)
    # Sorted by id, as the embedding baseline sorts: the folds do not depend on the file's order.
    kept = sorted((r for r in records if counts[r.label] >= 2), key=lambda r: r.id)
    if len(counts) - len(report.left_out) < 2:
        report.skipped = "too little to check: fewer than 2 labels have 2 or more examples"
        return report
    try:
        model, source = load_embedder(config or EvalConfig(), allow_network)
    except BaselineSkipped as error:
        report.skipped = str(error)
        return report
    from tunelab.models.embedding import embed_texts

    report.model = source.display_name
    expect_progress(progress, len(kept))
    features = embed_texts(model, [r.text for r in kept], progress=progress)
    labels = [r.label for r in kept]
    probabilities, classes, fitted = out_of_fold_probabilities(features, labels, seed=seed, progress=progress)
    column = {label: index for index, label in enumerate(classes)}
    given = [column[label] for label in labels]
    report.checked = len(kept)
    report.settings = {key: fitted[key] for key in ("C", "folds", "cv_accuracy")}
    median = float(np.median([counts[label] for label in classes]))
    if median < WEAK_MEDIAN_EXAMPLES:
        report.weak = f"few examples per label (median {median:g}, fewer than {WEAK_MEDIAN_EXAMPLES}): treat these as weak hints"
    found = [
        Suspect(kept[row].source, kept[row].text, kept[row].label, classes[j], float(probabilities[row, given[row]]), float(probabilities[row, j]))
        for row, j in confident_suspects(probabilities, given)
    ]
    report.suspects = found
    return report
