"""Which score separates known from unknown requests? Measured on a finished out-of-scope run.

A tuned classify run answers "out of scope" when a score of the request is below a threshold chosen on
the validation queries (the rule of ``evaluation/metrics.choose_threshold``: the highest accuracy over
all validation queries, ties to the lowest threshold). This script scores the run's own validation and
test queries (``split.json``) with the run's own model only, several ways:

- ``probability``: the top label's probability (calibrated when the run folded a temperature in): today's rule;
- ``energy``: logsumexp of the label logits (Liu et al. 2020; higher = more in scope);
- ``margin``: top-1 minus top-2 label probability;
- ``nearest``: the highest cosine similarity between the request's last hidden state and those of the
  training requests (the distance to the training examples' representations, in the tuned model);
- ``nearest_standardised``: the same after z-scoring each dimension on the training requests' states (a few
  dimensions of the raw state have means near 40 and dominate its cosine);
- ``nearest_layerN_mean``: the same, standardised, on the mean over the prompt's tokens of decoder layer N's
  output (N = a third and two thirds of the depth), where an untrained probe found intents separate best;
- ``loglik_mean``: the mean log-likelihood of the request's tokens under the tuned model (which the classify
  recipe trains with a next-token loss on the training prompts, ``classify.prompt_lm_weight``: a density model
  of the in-scope requests);
- ``likelihood_ratio_sum`` / ``_mean``: the tuned model's log-likelihood of the request's tokens minus the base
  model's (the adapter disabled), summed or averaged over the tokens (Ren et al. 2019: the ratio removes what
  makes any text likely or not, keeping what the training requests taught);
- ``probability_and_nearest``: a logistic regression of known vs unknown on those two, fitted on the
  validation queries (a prototype: the validation queries also choose its threshold, so its validation
  AUROC flatters it; the test columns do not).

For each it chooses the threshold on validation and reports, on the test queries: accuracy over all
queries, in-scope accuracy (a rejected in-scope query is wrong), out-of-scope recall, and AUROC of the
score for known vs unknown. Appends to bench/results/out_of_scope_scores.jsonl.

    PYTHONPATH=src python bench/out_of_scope_scores.py bench/results/tmp/quality/NAME/CASE/runs/CASE
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS_DIR, append_row

RESULTS = RESULTS_DIR / "out_of_scope_scores.jsonl"


def choose(scores: np.ndarray, correct: np.ndarray, outside: np.ndarray) -> float:
    """The threshold with the highest all-query accuracy on these rows (reject below it); ties to the lowest."""
    values = np.unique(scores)
    candidates = [-np.inf, *((values[:-1] + values[1:]) / 2), np.inf]
    best, best_accuracy = -np.inf, -1.0
    for threshold in candidates:
        rejected = scores < threshold
        accuracy = np.mean(np.where(outside, rejected, correct & ~rejected))
        if accuracy > best_accuracy + 1e-12:
            best, best_accuracy = threshold, accuracy
    return float(best)


def auroc(scores: np.ndarray, outside: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(~outside, scores)) if outside.any() and (~outside).any() else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    args = parser.parse_args()

    from tunelab.data.split import load_split
    from tunelab.inference import Classifier, softmax
    from tunelab.models.heads import causal_lm_of
    from tunelab.runs import Run

    run = Run.open(args.run)
    config = run.config
    label = config.data.out_of_scope_label
    if label is None:
        sys.exit(f"{args.run} has no out-of-scope label")
    split = load_split(run.folder.split, config)
    loaded = run.load()
    classifier = Classifier.for_model(loaded)
    label_map = classifier.label_map
    decoder = causal_lm_of(loaded.model).get_decoder()

    def last_hidden(records, normalise=True):
        out = []
        with torch.inference_mode():
            for record in records:
                ids = classifier.prompt(record.text)[0]
                out.append(decoder(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].float().numpy())
        hidden = np.stack(out)
        return hidden / np.linalg.norm(hidden, axis=1, keepdims=True) if normalise else hidden

    lm = causal_lm_of(loaded.model)
    train_prompts = [classifier.prompt(r.text)[0] for r in split.train[:50]]
    shared = min(next((i for i, (a, b) in enumerate(zip(p, train_prompts[0], strict=False)) if a != b), min(len(p), len(train_prompts[0])))
                 for p in train_prompts[1:])

    def request_logliks(records):
        """(tuned, base) log-likelihood per request token after the prompt prefix every request shares."""
        tuned, base = [], []
        with torch.inference_mode():
            for record in records:
                ids = torch.tensor([classifier.prompt(record.text)[0]])
                target = ids[0, shared:]
                for out, disabled in ((tuned, False), (base, True)):
                    if disabled:
                        with loaded.model.disable_adapter():
                            logits = lm(input_ids=ids).logits[0, shared - 1:-1].float()
                    else:
                        logits = lm(input_ids=ids).logits[0, shared - 1:-1].float()
                    out.append(torch.log_softmax(logits, -1).gather(1, target[:, None])[:, 0].numpy())
        return tuned, base

    depth = len(decoder.layers)
    middle = (depth // 3, 2 * depth // 3)

    def layer_means(records):
        out = {n: [] for n in middle}
        with torch.inference_mode():
            for record in records:
                states = decoder(input_ids=torch.tensor([classifier.prompt(record.text)[0]]), output_hidden_states=True).hidden_states
                for n in middle:
                    out[n].append(states[n][0].float().mean(0).numpy())
        return {n: np.stack(v) for n, v in out.items()}

    def standardiser(train_states):
        mean, std = train_states.mean(0), train_states.std(0) + 1e-6

        def apply(states):
            z = (states - mean) / std
            return z / np.linalg.norm(z, axis=1, keepdims=True)

        return apply, apply(train_states)

    started = time.perf_counter()
    train_raw = last_hidden([r for r in split.train if r.label != label], normalise=False)
    train_labels = np.array([r.label for r in split.train if r.label != label])
    train_hidden = train_raw / np.linalg.norm(train_raw, axis=1, keepdims=True)
    centre = train_raw.mean(0)
    centred = train_raw - centre
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    from sklearn.covariance import LedoitWolf

    means = np.stack([train_raw[train_labels == c].mean(0) for c in sorted(set(train_labels))])
    within = np.concatenate([train_raw[train_labels == c] - train_raw[train_labels == c].mean(0) for c in sorted(set(train_labels))])
    precision = LedoitWolf().fit(within).precision_
    standardise, train_standardised = standardiser(train_raw)
    train_layers = layer_means([r for r in split.train if r.label != label])
    layer_standardise = {n: standardiser(train_layers[n]) for n in middle}
    row = {"run": args.run.name, "train": len(split.train)}
    for part, records in (("validation", split.validation), ("test", split.test)):
        logits = classifier.logits(loaded.model, [classifier.prompt(r.text)[0] for r in records])
        probabilities = softmax(logits)
        top = np.array(label_map.labels)[probabilities.argmax(1)]
        ordered = np.sort(probabilities, axis=1)
        raw = last_hidden(records, normalise=False)
        hidden = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        moved = raw - centre
        moved /= np.linalg.norm(moved, axis=1, keepdims=True)
        difference = raw[:, None, :] - means[None, :, :]
        mahalanobis = np.einsum("nkd,de,nke->nk", difference, precision, difference).min(1)
        scores = {
            "probability": ordered[:, -1],
            "energy": np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1),
            "margin": ordered[:, -1] - ordered[:, -2],
            "nearest": (hidden @ train_hidden.T).max(1),
            "nearest_centred": (moved @ centred.T).max(1),
            "knn5_centred": np.sort(moved @ centred.T, axis=1)[:, -5],
            "mahalanobis": -mahalanobis,
            "nearest_standardised": (standardise(raw) @ train_standardised.T).max(1),
        }
        tuned_ll, base_ll = request_logliks(records)
        scores["loglik_mean"] = np.array([t.mean() for t in tuned_ll])
        scores["likelihood_ratio_sum"] = np.array([(t - b).sum() for t, b in zip(tuned_ll, base_ll, strict=True)])
        scores["likelihood_ratio_mean"] = np.array([(t - b).mean() for t, b in zip(tuned_ll, base_ll, strict=True)])
        layers = layer_means(records)
        for n in middle:
            apply, train_n = layer_standardise[n]
            scores[f"nearest_layer{n}_mean"] = (apply(layers[n]) @ train_n.T).max(1)
        outside = np.array([r.label == label for r in records])
        correct = np.array([t == r.label for t, r in zip(top, records, strict=True)])
        row[part] = {"scores": scores, "outside": outside, "correct": correct}
    result = {"run": args.run.name, "validation": len(split.validation), "test": len(split.test),
              "test_out_of_scope": int(row["test"]["outside"].sum())}
    test, validation = row["test"], row["validation"]
    # Two scores at once: a logistic regression of in-scope vs out-of-scope on the (standardised) top probability
    # and nearest similarity, fitted on the validation queries (which also choose its threshold, as for the others).
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def pair(part):
        return np.column_stack([part["scores"]["probability"], part["scores"]["nearest"]])

    combined = make_pipeline(StandardScaler(), LogisticRegression(C=1.0)).fit(pair(validation), ~validation["outside"])
    for part in (validation, test):
        part["scores"]["probability_and_nearest"] = combined.predict_proba(pair(part))[:, 1]
    result["in_scope_accuracy_without_threshold"] = float(test["correct"][~test["outside"]].mean())
    for name in validation["scores"]:
        threshold = choose(validation["scores"][name], validation["correct"], validation["outside"])
        rejected = test["scores"][name] < threshold
        outside, correct = test["outside"], test["correct"]
        result[name] = {
            "threshold": threshold,
            "accuracy": float(np.mean(np.where(outside, rejected, correct & ~rejected))),
            "in_scope_accuracy": float(np.mean((correct & ~rejected)[~outside])),
            "out_of_scope_recall": float(rejected[outside].mean()) if outside.any() else None,
            "auroc": auroc(test["scores"][name], outside),
            "validation_auroc": auroc(validation["scores"][name], validation["outside"]),
        }
    result.update(seconds=round(time.perf_counter() - started, 1), load=round(os.getloadavg()[0], 2),
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(json.dumps(result, indent=1))
    append_row(RESULTS, result)


if __name__ == "__main__":
    main()
