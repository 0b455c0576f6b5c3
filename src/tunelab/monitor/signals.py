"""The numbers of monitoring, as pure functions over arrays and texts (no database, no model).

Each drift signal compares live traffic with what the model was trained on. Where a signal's value
shrinks or grows with the sample size alone (a centroid of few texts lies far from any other; a
label histogram of few predictions is lumpy), the function also returns what the same size of
*undrifted* data gives, so the status judges the excess over sampling noise, not the noise.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

OK, WATCH, DRIFTED = "ok", "watch", "drifted"
_ORDER = {OK: 0, WATCH: 1, DRIFTED: 2}
_WORD = re.compile(r"\w+", re.UNICODE)
NOISE_Z = 2.326  # one-sided p < 0.01 for a normal statistic: length_ks's p < 0.01, for the signals without a p-value


@dataclass
class Signal:
    """One monitored number with its reference, thresholds (watch, drifted) and status."""

    name: str
    value: float | None
    status: str
    thresholds: tuple[float, float] | None = None
    reference: float | None = None
    judged: float | None = None  # the number compared with the thresholds (value minus noise/reference)
    n: int = 0
    sampled: bool = False
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["thresholds"] = list(self.thresholds) if self.thresholds else None
        return data


def worst(statuses: Iterable[str]) -> str:
    """The most serious of ``statuses`` (ok when there are none)."""
    return max(statuses, key=_ORDER.__getitem__, default=OK)


def status_for(judged: float | None, thresholds: tuple[float, float]) -> str:
    """ok below the first threshold, watch from it, drifted from the second (None: ok, nothing to judge)."""
    if judged is None or not math.isfinite(judged):
        return OK
    watch, drifted = thresholds
    return DRIFTED if judged >= drifted else WATCH if judged >= watch else OK


def words(text: str) -> list[str]:
    """Lower-cased word tokens: the vocabulary of drift (a model's BPE never has an unknown token)."""
    return _WORD.findall(text.lower())


def distinct_texts(texts: Iterable[str]) -> Counter:
    """How often each text occurs, texts being their words (``words``): the text signals see nothing else of a text,
    so "Where is my order?" and "where is my order" are one text repeated."""
    return Counter(tuple(words(text)) for text in texts)


def length_ks(train_lengths: Sequence[int], live_lengths: Sequence[int], *, sizes: tuple[int, int] | None = None) -> tuple[float, float]:
    """Kolmogorov-Smirnov distance between two length samples and its p-value.

    ``sizes``: the samples' numbers of distinct texts, when they repeat texts. A repeated request adds no evidence
    about the distribution of lengths (1000 requests of 15 texts are 15 lengths), so the p-value is the asymptotic
    one of those sizes, not of the samples' lengths.
    """
    from scipy.stats import ks_2samp, kstwo

    result = ks_2samp(np.asarray(train_lengths), np.asarray(live_lengths))
    statistic, pvalue = float(result.statistic), float(result.pvalue)
    if sizes is not None and (sizes[0] < len(train_lengths) or sizes[1] < len(live_lengths)) and min(sizes) > 0:
        effective = sizes[0] * sizes[1] / (sizes[0] + sizes[1])
        pvalue = max(pvalue, float(kstwo.sf(statistic, max(1, round(effective)))))
    return statistic, pvalue


def oov_share(vocabulary: set[str], texts: Iterable[str]) -> float:
    """Share of the words of ``texts`` (counted with repeats) that are not in ``vocabulary``."""
    total = unknown = 0
    for text in texts:
        for word in words(text):
            total += 1
            unknown += word not in vocabulary
    return unknown / total if total else 0.0


def oov_counts(vocabulary: set[str], texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per text: its words not in ``vocabulary``, and all its words (``oov_share`` of a sample is their sums' ratio)."""
    unknown, total = np.zeros(len(texts)), np.zeros(len(texts))
    for i, text in enumerate(texts):
        found = words(text)
        total[i] = len(found)
        unknown[i] = sum(word not in vocabulary for word in found)
    return unknown, total


def draw_counts(pool: int, repeats: Sequence[int], draws: int, seed: int = 0) -> np.ndarray:
    """``draws`` undrifted samples out of ``pool`` held-out rows shaped like a live sample whose distinct texts came
    ``repeats`` times each: as many distinct rows, each taken as often (counts per row, draws x pool).

    A TF-IDF centroid of k distinct texts lies farther from the training centroid the smaller k is (k = 80 or 112
    held-out rows of the quickstart: 0.119 and 0.095), so a sample repeating few requests must be compared with draws
    repeating as few. With more distinct live texts than held-out rows the draws are of the same size, with replacement.
    """
    rng = np.random.default_rng(seed)
    repeats = np.asarray(sorted(repeats), dtype=np.int64)
    if len(repeats) > pool:
        return rng.multinomial(int(repeats.sum()), np.full(pool, 1.0 / pool), size=draws)
    counts = np.zeros((draws, pool), dtype=np.int64)
    for row in counts:
        row[rng.permutation(pool)[: len(repeats)]] = repeats
    return counts


def same_size_noise(draw_values: np.ndarray, size: int, pool: int) -> float:
    """The standard deviation of (live value minus reference) between undrifted samples, from ``draw_values``: the
    statistic over draws of ``size`` rows out of the ``pool`` held-out rows.

    The draws' spread is the live sample's noise (variance ~ 1/size); the held-out rows are a sample too, of ``pool``
    rows (variance ~ 1/pool), so the spread is scaled by sqrt(1 + size / pool): the two terms of psi_noise's 1/N + 1/n.
    """
    if draw_values.size < 2 or not pool:
        return 0.0
    return float(np.std(draw_values, ddof=1) * math.sqrt(1.0 + size / pool))


def beyond_noise(excess: float, noise: float) -> float:
    """``excess`` where it is beyond chance at p < 0.01 (one-sided, ``NOISE_Z`` noise levels), else 0: what a text
    signal's thresholds are compared with, so they measure how large a real change is, never how small a window is."""
    return excess if excess > NOISE_Z * noise else 0.0


class CentroidModel:
    """TF-IDF fitted on the training texts; the cosine distance of a sample's centroid to the training centroid."""

    def __init__(self, train_texts: Sequence[str]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=1, token_pattern=r"(?u)\b\w+\b")
        if not any(self.vectorizer.build_analyzer()(text) for text in train_texts):
            # Training texts without a word (":)", "😡": examples the data layer accepts) left sklearn no vocabulary
            # ("empty vocabulary" ValueError in `tunelab monitor`): their characters are what they are made of.
            self.vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=1, analyzer="char", ngram_range=(1, 2))
        matrix = self.vectorizer.fit_transform(train_texts)
        self.centroid = np.asarray(matrix.mean(axis=0)).ravel()

    def distance(self, texts: Sequence[str]) -> float:
        if not texts:
            return float("nan")
        centroid = np.asarray(self.vectorizer.transform(texts).mean(axis=0)).ravel()
        norm = float(np.linalg.norm(centroid) * np.linalg.norm(self.centroid))
        return 1.0 - float(centroid @ self.centroid) / norm if norm else 1.0

    def draw_distances(self, texts: Sequence[str], counts: np.ndarray) -> np.ndarray:
        """The distance of each draw of ``texts`` (``counts[j, i]``: how often draw j took text i), as ``distance``
        of that draw's texts would give, from one transform of ``texts`` (not one per draw)."""
        from scipy import sparse

        centroids = sparse.csr_matrix(counts) @ self.vectorizer.transform(texts)  # each row: its centroid times its size
        dots = np.asarray(centroids @ self.centroid).ravel()
        norms = np.sqrt(np.asarray(centroids.multiply(centroids).sum(axis=1)).ravel()) * float(np.linalg.norm(self.centroid))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(norms > 0, 1.0 - dots / np.where(norms > 0, norms, 1.0), 1.0)


def psi(expected: Counter, actual: Counter) -> float:
    """Population stability index of ``actual`` against ``expected`` over the union of their categories.

    sum((a - e) * ln(a / e)) over shares with half a count added to every category (Jeffreys): a
    share floored at a tiny epsilon instead makes each label a small sample happens to miss cost
    about 0.3, so 100 requests over 20 labels would always look drifted.
    """
    categories = sorted(set(expected) | set(actual))
    total_e, total_a = sum(expected.values()), sum(actual.values())
    if not categories or not total_e or not total_a:
        return float("nan")
    k = len(categories)
    e = np.array([(expected.get(c, 0) + 0.5) / (total_e + 0.5 * k) for c in categories])
    a = np.array([(actual.get(c, 0) + 0.5) / (total_a + 0.5 * k) for c in categories])
    return float(np.sum((a - e) * np.log(a / e)))


def psi_noise(categories: int, expected_n: int, actual_n: int) -> float:
    """About what PSI two samples of one distribution give by chance: (k - 1)(1/N + 1/n).

    PSI is a symmetrised KL divergence; for multinomial samples it approaches a chi-square with
    k - 1 degrees of freedom scaled by 1/N + 1/n, whose mean this is.
    """
    if categories < 2 or not expected_n or not actual_n:
        return 0.0
    return (categories - 1) * (1.0 / expected_n + 1.0 / actual_n)


