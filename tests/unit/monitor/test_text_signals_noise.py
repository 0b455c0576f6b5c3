"""The text drift signals judge the excess over their own sampling noise at the window's size.

``bench/monitor_quality.py`` measured, on the quickstart's real run, ordinary held-out requests called drifted by
``centroid_distance`` in 28 % of windows of 50 and by ``oov_share`` in 7 %: both compared a live sample's number with
fixed thresholds, while the number of a small sample moves by more than them. These tests draw undrifted windows from
the held-out rows of a tiny synthetic reference (no model), where each held-out text is either all training words or
all unseen ones, so a window's out-of-vocabulary share and centroid swing widely by chance alone.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np

from tunelab.config import MonitorConfig
from tunelab.monitor.check import Reference, compute_signals
from tunelab.monitor.traffic import Traffic

KNOWN = "card refund account payment transfer balance limit fee statement travel lost pin".split()
UNSEEN = "crypto mortgage insurance pension stock loan dividend broker".split()


def _texts(rng: random.Random, n: int, words: list[str]) -> list[str]:
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def _reference() -> Reference:
    rng = random.Random(1)
    # Held-out rows as a real test set has them: most in the training vocabulary, some with words training never had.
    held = _texts(rng, 90, KNOWN) + _texts(rng, 30, KNOWN[:4] + UNSEEN)
    return Reference("r", None, task="classify", train_texts=_texts(rng, 300, KNOWN), train_labels=Counter(a=150, b=150), heldout_texts=held)


def _signals(reference: Reference, texts: list[str]) -> dict[str, object]:
    n = len(texts)
    traffic = Traffic("m", "r", "s", "u", n, 0, 0, None, None, np.full(n, 5.0), texts=texts, text_requests=n)
    return {s.name: s for s in compute_signals(traffic, reference, MonitorConfig())}


def test_undrifted_windows_of_50_are_not_called_drifted():
    reference = _reference()
    statuses = {"centroid_distance": Counter(), "oov_share": Counter()}
    for seed in range(40):
        window = random.Random(seed).choices(reference.heldout_texts, k=50)
        signals = _signals(reference, window)
        for name in statuses:
            statuses[name][signals[name].status] += 1
    # A rule of p < 0.01 per window: 40 undrifted windows give about 0.4 alarms; at most 2 of them allowed.
    assert statuses["centroid_distance"]["drifted"] <= 2, statuses
    assert statuses["oov_share"]["drifted"] <= 2, statuses
    assert statuses["oov_share"]["watch"] + statuses["oov_share"]["drifted"] <= 2, statuses


def test_a_window_half_from_another_domain_is_still_drifted():
    reference = _reference()
    rng = random.Random(7)
    # Another domain shares a few words with this one (a TF-IDF fitted on training ignores the others: the centroid
    # moves only through the shared words, oov_share sees the rest).
    window = rng.choices(reference.heldout_texts, k=100) + _texts(rng, 100, KNOWN[-3:] + UNSEEN)
    signals = _signals(reference, window)
    assert signals["oov_share"].status == "drifted", signals["oov_share"]
    assert signals["centroid_distance"].status == "drifted", signals["centroid_distance"]
    # The noise the status was judged against is reported with the value.
    assert signals["oov_share"].extra["noise"] > 0 and signals["centroid_distance"].extra["noise"] > 0


def test_a_window_repeating_a_few_ordinary_requests_is_not_drift():
    """A TF-IDF centroid of k distinct texts lies farther from any other the fewer they are: 200 requests repeating 20
    held-out texts were drifted against draws of 200 from all the held-out rows (about 100 distinct ones). The
    draws repeat as many distinct held-out rows as often as the window repeats its own."""
    reference = _reference()
    statuses = Counter()
    for seed in range(20):
        rng = random.Random(seed)
        window = rng.choices(rng.sample(reference.heldout_texts, 20), k=200)
        statuses[_signals(reference, window)["centroid_distance"].status] += 1
    assert statuses["drifted"] <= 1, statuses


def test_the_same_requests_in_other_case_or_punctuation_are_still_repeats():
    """The text signals read a text's words (lower-cased, no punctuation): "Where is my order?" and "where is my order"
    are one text to them, so they count once among the window's distinct texts (the quickstart's test requests with
    case and punctuation noise were drifted in 76 % of windows of 50 when each spelling counted as a new text)."""
    reference = _reference()
    spellings = (str.lower, str.upper, lambda text: text + "!", lambda text: text.capitalize() + "?")
    statuses = Counter()
    for seed in range(20):
        rng = random.Random(seed)
        window = [rng.choice(spellings)(text) for text in rng.choices(rng.sample(reference.heldout_texts, 20), k=200)]
        statuses[_signals(reference, window)["centroid_distance"].status] += 1
    assert statuses["drifted"] <= 1, statuses


def test_input_lengths_of_a_few_repeated_requests_are_judged_on_as_many_texts():
    """1000 requests repeating 15 ordinary texts are 15 lengths, not 1000: the Kolmogorov-Smirnov p-value of 1000 (the
    run's 32 validation rows, repeated, were drifted in 14 % to 36 % of windows) is that of the distinct texts."""
    reference = _reference()
    statuses = Counter()
    for seed in range(20):
        rng = random.Random(seed)
        window = rng.choices(rng.sample(reference.train_texts, 15), k=1000)
        statuses[_signals(reference, window)["length_ks"].status] += 1
    assert statuses["watch"] + statuses["drifted"] <= 1, statuses
