"""Does a nearest-neighbour vote in the tuned model's own space help its label head? Measured on a finished run.

A prototype for a lever, not in tunelab: the run's own model gives each training, validation and test request
its final hidden state (what the label head reads) and its label logits; then, on the in-scope rows only:
the head's accuracy; the label of the most similar training request (``1nn``, cosine); the most similar label
centroid (``centroid``); and the head's probabilities mixed with a softmax over the per-label best similarity
(``mix1nn``) or the centroid similarity (``mixcent``) at temperature t and weight w (kNN-LM's interpolation,
Khandelwal et al. 2020). Each also after centring the states on the training mean. Prints JSON.

    PYTHONPATH=src python bench/classify_knn.py bench/results/tmp/quality/NAME/CASE/runs/CASE
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    from tunelab.data.split import load_split
    from tunelab.inference import Classifier, softmax, state_buffer
    from tunelab.runs import Run

    run = Run.open(Path(sys.argv[1]))
    config = run.config
    outside = config.data.out_of_scope_label
    split = load_split(run.folder.split, config)
    loaded = run.load()
    classifier = Classifier.for_model(loaded)
    labels = classifier.label_map.labels

    def scored(records):
        """(label logits, final hidden states, label indices) of ``records``."""
        prompts = [classifier.prompt(r.text)[0] for r in records]
        states = state_buffer(loaded.model, len(prompts))
        logits = classifier.logits(loaded.model, prompts, batch_size=32, features=states)
        return logits, states, np.array([labels.index(r.label) for r in records])

    started = time.perf_counter()
    _, train_states, train_y = scored([r for r in split.train if r.label != outside and r.label in labels])
    parts = {part: scored([r for r in getattr(split, part) if r.label != outside]) for part in ("validation", "test")}
    mean = train_states.mean(0)
    result = {"run": sys.argv[1], "validation": len(parts["validation"][2]), "test": len(parts["test"][2])}
    for centred in (False, True):
        reference = unit(train_states - (mean if centred else 0.0))
        centroids = unit(np.stack([reference[train_y == k].mean(0) for k in range(len(labels))]))
        for part, (logits, states, y) in parts.items():
            similarity = unit(states - (mean if centred else 0.0)) @ reference.T
            best = np.stack([similarity[:, train_y == k].max(1) for k in range(len(labels))], axis=1)
            to_centroid = unit(states - (mean if centred else 0.0)) @ centroids.T
            head = softmax(logits)
            row = {"head": float((head.argmax(1) == y).mean()), "1nn": float((best.argmax(1) == y).mean()),
                   "centroid": float((to_centroid.argmax(1) == y).mean())}
            for t in (0.02, 0.05, 0.1):
                for w in (0.3, 0.5):
                    for name, vote in (("mix1nn", best), ("mixcent", to_centroid)):
                        mixed = (1 - w) * head + w * softmax(vote / t)
                        row[f"{name} t{t} w{w}"] = float((mixed.argmax(1) == y).mean())
            result[f"{part}{'-centred' if centred else ''}"] = row
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
