"""Plots of one monitored traffic group against its run's training data (matplotlib, saved as PNG)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.monitor.signals import words
from tunelab.paths import write_figure


def plot_traffic(traffic: Any, reference: Any, folder: Path) -> list[Path]:
    """``traffic``: a ``traffic.Traffic``; ``reference``: a ``check.Reference`` (check calls this module). One figure per group: input lengths, label shares, top probabilities, requests per day; returns the files."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window, works without a display
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{traffic.model}-{traffic.run_id or 'unknown'}")
    figure, axes = plt.subplots(2, 2, figsize=(12, 8))
    lengths_ax, labels_ax, confidence_ax, days_ax = axes.ravel()

    train_lengths = [len(words(t)) for t in reference.train_texts[:20000]]
    live_lengths = [len(words(t)) for t in traffic.texts]
    if train_lengths or live_lengths:
        top = max(train_lengths + live_lengths + [1])
        bins = np.linspace(0, top, min(40, top + 1))
        if train_lengths:
            lengths_ax.hist(train_lengths, bins=bins, density=True, alpha=0.5, label="training")
        if live_lengths:
            lengths_ax.hist(live_lengths, bins=bins, density=True, alpha=0.5, label="live" + (" (sampled)" if traffic.sampled else ""))
        lengths_ax.legend()
    lengths_ax.set_title("input length (words)")

    labels = [label for label, _ in (reference.train_labels + traffic.predicted).most_common(20)]
    if labels:
        positions = np.arange(len(labels))
        train_total = sum(reference.train_labels.values()) or 1
        live_total = sum(traffic.predicted.values()) or 1
        labels_ax.bar(positions - 0.2, [reference.train_labels.get(x, 0) / train_total for x in labels], 0.4, label="training labels")
        labels_ax.bar(positions + 0.2, [traffic.predicted.get(x, 0) / live_total for x in labels], 0.4, label="predicted live")
        labels_ax.set_xticks(positions, labels, rotation=60, ha="right", fontsize=7)
        labels_ax.legend()
    labels_ax.set_title("label shares (20 most frequent)")

    if traffic.top_probabilities.size:
        confidence_ax.hist(traffic.top_probabilities, bins=np.linspace(0, 1, 21), alpha=0.7, label="live")
        if reference.test_confidence is not None:
            confidence_ax.axvline(reference.test_confidence, color="k", linestyle="--", label="test mean")
        if reference.oos_threshold is not None and reference.oos_on_probability:
            confidence_ax.axvline(reference.oos_threshold, color="r", linestyle=":", label="out-of-scope threshold")
        confidence_ax.legend()
    confidence_ax.set_title("top probability of classify answers")

    if traffic.per_day:
        days = list(traffic.per_day)
        days_ax.bar(range(len(days)), list(traffic.per_day.values()))
        days_ax.set_xticks(range(len(days)), days, rotation=45, ha="right", fontsize=7)
    days_ax.set_title(f"requests per day ({traffic.requests} in the window)")

    figure.suptitle(f"{traffic.model} ({f'run {traffic.run_id}' if traffic.run_id else 'no run'}): {traffic.since[:16]} to {traffic.until[:16]}")
    figure.tight_layout()
    path = folder / f"{name}.png"
    write_figure(figure, path, dpi=80)  # the monitor report links it: never half an image under its name
    plt.close(figure)
    return [path]
