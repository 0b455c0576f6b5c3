"""A cheap proxy before training: how far do the default model's own representations get, untrained?

The embedding baseline is frozen sentence embeddings + logistic regression. The tuned model reads its
answer from the last prompt token's hidden state. This script asks, with no fine-tuning at all, on the
rows bench/classify_levers.py chooses defaults on (never the rows bench/quality.py reports): the same
logistic regression (C by the baseline's cross-validation) over

- ``last``: the default model's final hidden state at the classify prompt's last token (what the label head reads);
- ``mean``: the mean of its final hidden states over the request's own tokens (a pooled representation);
- ``embedding``: all-MiniLM-L6-v2 sentence embeddings (the embedding baseline's features);

plus a nearest-centroid rule (cosine) over ``last`` (what a label row initialised at each class's mean
would score before any training). Results append to bench/results/classify_representations.jsonl.

    PYTHONPATH=src python bench/classify_representations.py --dataset banking77 --labels 20 --per-label 10 --test-per-label 15 --seed 4
    PYTHONPATH=src python bench/classify_representations.py --dataset hwu64 --labels 20 --per-label 10 --test-per-label 15 --seed 3 --layers
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from classify_levers import DATASETS, dataset_records, subsample
from common import RESULTS_DIR, append_row

RESULTS = RESULTS_DIR / "classify_representations.jsonl"


def hidden_features(loaded, records, label_map, system, max_length=128, every_layer=False):
    """(last token, mean over the request's tokens) of the final hidden states, [N, hidden] each; with
    ``every_layer`` of every layer's output (the embeddings first, the final normed states last), [N, layers, hidden]."""
    from tunelab.data.templates import classify_messages, render_prompt_ids
    from tunelab.data.tokenize import tokenize_classify
    from tunelab.models.heads import causal_lm_of

    decoder = causal_lm_of(loaded.model).get_decoder()
    prefix = len(render_prompt_ids(loaded.tokenizer, classify_messages("", system)))
    last, mean = [], []
    with torch.inference_mode():
        for record in records:
            ids = tokenize_classify(record, loaded.tokenizer, label_map, max_length, system).input_ids
            output = decoder(input_ids=torch.tensor([ids]), output_hidden_states=every_layer)
            hidden = torch.stack([h[0] for h in output.hidden_states]) if every_layer else output.last_hidden_state[0]
            hidden = hidden.float()
            last.append(hidden[..., -1, :].numpy())
            own = hidden[..., max(0, prefix - 8) :, :]  # the request's own tokens (and the few template tokens around them)
            mean.append(own.mean(-2).numpy())
    return np.stack(last), np.stack(mean)


def by_layer(args) -> None:
    """Logistic regression on each layer's last-token state and mean over the request's tokens (standardised, then
    L2-normalised: a few dimensions of the raw states have a mean far above the rest). One row per layer."""
    from sklearn.preprocessing import StandardScaler, normalize

    from tunelab.config import DataConfig
    from tunelab.data.labels import LabelMap
    from tunelab.evaluation.baselines import embedding_classifier, fit_with_cv
    from tunelab.models import load_model

    train, validation, test = subsample(dataset_records(args.dataset), args.per_label, args.test_per_label, args.seed, args.labels)
    train = train + validation
    loaded = load_model("default")
    label_map = LabelMap.for_records(train, loaded.tokenizer)
    system = DataConfig().system_prompt
    train_last, train_mean = hidden_features(loaded, train, label_map, system, every_layer=True)
    test_last, test_mean = hidden_features(loaded, test, label_map, system, every_layer=True)
    y_train, y_test = np.array([r.label for r in train]), np.array([r.label for r in test])

    def accuracy(x_train, x_test):
        scaler = StandardScaler().fit(x_train)
        x_train, x_test = normalize(scaler.transform(x_train)), normalize(scaler.transform(x_test))
        classifier, _ = fit_with_cv(lambda c: embedding_classifier(c, 0), x_train, y_train, seed=0)
        return round(float(np.mean(classifier.predict(x_test) == y_test)), 4)

    for layer in range(0, train_last.shape[1], 2):
        row = {"dataset": args.dataset, "labels": len(set(y_train)), "per_label": args.per_label, "seed": args.seed,
               "layer": layer, "last_lr_standardised": accuracy(train_last[:, layer], test_last[:, layer]),
               "mean_lr_standardised": accuracy(train_mean[:, layer], test_mean[:, layer]),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        print(json.dumps(row), flush=True)
        append_row(RESULTS, row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="banking77", choices=[*sorted(DATASETS), "quickstart-train"])
    parser.add_argument("--per-label", type=int, default=10)
    parser.add_argument("--labels", type=int, default=20)
    parser.add_argument("--test-per-label", type=int, default=15)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--layers", action="store_true",
                        help="instead: last token and mean over the request at every other layer, features standardised")
    args = parser.parse_args()
    if args.layers:
        by_layer(args)
        return

    from sklearn.preprocessing import normalize

    from tunelab.config import DataConfig, EvalConfig
    from tunelab.data.labels import LabelMap
    from tunelab.evaluation.baselines import embedding_classifier, fit_with_cv
    from tunelab.models import load_model
    from tunelab.models.embedding import embed_texts, load_embedding_model, resolve_embedding_model

    train, validation, test = subsample(dataset_records(args.dataset), args.per_label, args.test_per_label, args.seed, args.labels)
    train = train + validation
    loaded = load_model("default")
    label_map = LabelMap.for_records(train, loaded.tokenizer)
    system = DataConfig().system_prompt
    started = time.perf_counter()
    train_last, train_mean = hidden_features(loaded, train, label_map, system)
    test_last, test_mean = hidden_features(loaded, test, label_map, system)
    model = load_embedding_model(resolve_embedding_model(EvalConfig().embedding_model))
    train_embedding = embed_texts(model, [r.text for r in train])
    test_embedding = embed_texts(model, [r.text for r in test])
    y_train, y_test = np.array([r.label for r in train]), np.array([r.label for r in test])

    def accuracy(x_train, x_test):
        x_train, x_test = normalize(x_train), normalize(x_test)
        classifier, fitted = fit_with_cv(lambda c: embedding_classifier(c, 0), x_train, y_train, seed=0)
        return float(np.mean(classifier.predict(x_test) == y_test)), fitted["C"]

    def centroid(x_train, x_test):
        x_train, x_test = normalize(x_train), normalize(x_test)
        labels = sorted(set(y_train))
        centres = normalize(np.stack([x_train[y_train == label].mean(0) for label in labels]))
        return float(np.mean(np.array(labels)[(x_test @ centres.T).argmax(1)] == y_test))

    row = {"dataset": args.dataset, "labels": len(set(y_train)), "per_label": args.per_label, "seed": args.seed,
           "train": len(train), "test": len(test)}
    for name, (a, b) in {"last": (train_last, test_last), "mean": (train_mean, test_mean),
                         "embedding": (train_embedding, test_embedding)}.items():
        row[f"{name}_lr"], row[f"{name}_C"] = accuracy(a, b)
    row["last_centroid"] = centroid(train_last, test_last)
    row["mean_centroid"] = centroid(train_mean, test_mean)
    row.update(seconds=round(time.perf_counter() - started, 1), load=round(os.getloadavg()[0], 2),
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(json.dumps(row))
    append_row(RESULTS, row)


if __name__ == "__main__":
    main()
