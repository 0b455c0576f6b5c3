"""Baselines: what a user would do instead of fine-tuning, scored on the same test examples as the tuned model.

Each baseline returns an ``EvalResult`` with the same per-example rows as ``evaluate``, so the paired
bootstrap of ``compare.py`` compares it with the tuned model example by example.

- ``base``: the base model zero-shot (``evaluate(..., baseline=True)``), every task.
- ``classical`` (classify): TF-IDF word 1-2-grams + char_wb 2-5-grams, logistic regression whose C is
  chosen by stratified cross-validation on the training records only (a fixed grid, seeded), so it
  is a fair opponent and not one tuned to lose. Its probabilities give ECE like the model's.
- ``few_shot`` (classify, sft): the base model with solved training examples in the prompt, as many as
  fit ``eval.few_shot_tokens``. classify: k examples per label (rounds of one per label), scored over
  the same label tokens as zero-shot, the shared prefix computed once (``prefix_label_logits``);
  sft: k training pairs, answered through the same generation path.
- ``retrieval`` (sft): the completion of the most similar training prompt (TF-IDF cosine).
- ``embedding``: frozen sentence embeddings (``tunelab.models.embedding``, all-MiniLM-L6-v2 by default):
  classify = logistic regression on them, C chosen by cross-validation on the training records like
  ``classical``; sft = the completion of the training prompt nearest by embedding cosine.
- a remote model (classify, sft): ``openai:NAME``, ``remote:NAME`` (``eval.endpoints``) or an
  ``{endpoint: ...}`` entry, asked through ``tunelab.remote`` and scored by ``evaluation/remote.py``.

The records a baseline learns from are the training *and* validation records of the split
(``data.split.learning_records``): the tuned model trains on the first and selects on the second, so both see
the same labelled data. Their fingerprint is part of the baseline's cache key.

With an out-of-scope label (``data.out_of_scope_label``) every baseline is treated as the tuned model
is: it learns from the training records only, scores the validation queries, and its own threshold is
chosen there by the same rule (``evaluate.calibrate_out_of_scope``) before it answers the test queries.

A baseline that cannot run here (the embedding model not installed) or cannot win is skipped, never
silently: ``evaluate_baselines`` returns it in ``Baselines.skipped`` with its reason, which the verdict,
the report and the CLI show. "Cannot win" is decided on the validation rows, never the test rows
(``model_baseline_cannot_win``): a classify baseline that runs the base model (base, few_shot) is first
scored on the in-scope validation queries; when the upper end of the 95% Wilson interval of its accuracy
there is below the cross-validated accuracy of a cheap opponent already in the verdict (classical,
embedding), it is not scored on the test rows. A classify few-shot prompt that cannot hold one example
per label is skipped before anything runs.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.config import (
    BASELINES,
    PREDICTIONS_TASKS,
    REMOTE_TASKS,
    TASK_BASELINES,
    DataConfig,
    EvalConfig,
    PredictionsConfig,
)
from tunelab.data.labels import LabelMap, OutOfScope
from tunelab.data.records import ClassifyRecord, Record, SFTRecord
from tunelab.data.templates import (
    few_shot_messages,
    render_prompt_ids,
    zero_shot_messages,
)
from tunelab.errors import ConfigError, DataError, ModelError, TunelabError
from tunelab.evaluation.evaluate import (
    answer_prompts,
    apply_out_of_scope,
    calibrate_out_of_scope,
    check_test_records,
    prompt_text,
    references_of,
    score_classify,
    score_sft,
    select_test_records,
    unstopped_warning,
)
from tunelab.evaluation.metrics import PRIMARY_METRIC, primary_metric, wilson_interval
from tunelab.evaluation.remote import names_label_map
from tunelab.evaluation.result import EvalResult, test_fingerprint
from tunelab.evaluation.suspects import SuspectReport, left_out_labels, suspect_report
from tunelab.inference import (
    Classifier,
    few_shot_budget,
    few_shot_classify_examples,
    few_shot_sft_chats,
    few_shot_sft_examples,
    zero_shot_extra_tokens,
)
from tunelab.models.generate import context_length
from tunelab.models.loader import on_inference_device

# Regularisation strengths tried by cross-validation (inverse: large C = little regularisation).
CLASSICAL_C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
CLASSICAL_FOLDS = 5
CLASSICAL_FALLBACK_C = 10.0  # when some label has a single training example, so no stratified CV
CROSS_VALIDATED = ("classical", "embedding")  # cheap opponents whose training-split CV accuracy is known before the test

Progress = Callable[[int], None]
# (baseline name, status, details); status: "start", "progress" (done, total, eta_s), "done", "skip" (a cached
# result reused), "rescore" (a cached result scored by other code: cached_from, reason; it is scored again),
# "skipped" (not scored: reason).
EventFn = Callable[[str, str, dict[str, Any]], None]


class BaselineSkipped(TunelabError):
    """A baseline that cannot run here or cannot win: not scored, and shown with this reason."""


class Baselines(dict):
    """The baselines' evaluations by name (a dict, in ``eval.baselines`` order), and those skipped with their reason."""

    def __init__(self, *args: Any, skipped: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skipped: dict[str, str] = dict(skipped or {})


class Meter:
    """Progress of one baseline: work expected and done (examples, texts or model fits), and its ETA.

    Every baseline function calls ``expect(n)`` for the work it is about to do and the meter with each
    part done; ``evaluate_baselines`` turns that into "progress" events with an ETA for the CLI to show.
    """

    def __init__(self, name: str, emit: EventFn, forward: Progress | None = None) -> None:
        import time

        self.name, self.emit, self.forward = name, emit, forward
        self.total = self.done = 0
        self.started = time.perf_counter()
        self._clock = time.perf_counter

    def expect(self, n: int) -> None:
        self.total += int(n)
        self._send()

    def __call__(self, n: int) -> None:
        self.done += int(n)
        if self.forward is not None:
            self.forward(n)
        self._send()

    def eta_seconds(self) -> float | None:
        if self.done <= 0 or self.total <= self.done:
            return None if self.done <= 0 else 0.0
        return (self._clock() - self.started) / self.done * (self.total - self.done)

    def _send(self) -> None:
        self.emit(self.name, "progress", {"done": min(self.done, self.total), "total": self.total, "eta_s": self.eta_seconds()})


def expect_progress(progress: Any, n: int) -> None:
    expect = getattr(progress, "expect", None)
    if expect is not None:
        expect(n)


def training_fingerprint(records: Sequence[Record]) -> str:
    """A hash of the records a baseline learns from (order-independent)."""
    from tunelab.data.split import data_fingerprint

    return data_fingerprint(records)


def _result(task: str, name: str, model: str, chosen: Sequence[Record], rows, metrics, settings, warnings, labels=None) -> EvalResult:
    return EvalResult(
        task=task,
        model=model,
        n=len(rows),
        metrics={"primary": PRIMARY_METRIC[task], **metrics},
        rows=rows,
        settings={"baseline": name, **settings},
        test_fingerprint=test_fingerprint(task, (r.id for r in chosen)),
        baseline=True,
        labels=list(labels) if labels is not None else None,
        baseline_name=name,
        warnings=list(warnings),
    )


def _prepare(records: Sequence[Record], task: str, data_config: DataConfig, train_ids) -> tuple[list[Record], list[str]]:
    # The same checks and the same seeded sample as ``evaluate``, so every opponent sees the same examples.
    warnings = check_test_records(records, task, train_ids)
    chosen = select_test_records(records, data_config.max_test_examples, data_config.seed)
    if len(chosen) < len(records):
        warnings.append(f"evaluated a seeded sample of {len(chosen)} of {len(records)} test examples (max_test_examples)")
    return chosen, warnings


def _need_training(name: str, train: Sequence[Record], expected: type) -> None:
    if not train:
        raise DataError(f"the {name} baseline learns from training data, and there is none", "give training records (tunelab eval --train FILE)")
    wrong = [r.source or r.id for r in train if not isinstance(r, expected)]
    if wrong:
        raise DataError(f"{len(wrong)} training records of the {name} baseline are not {expected.__name__}s (first: {wrong[0]})")


# ----------------------------------------------------------------------------------------- classical


def classical_pipeline(c: float = 1.0, seed: int = 0):
    """The classical text classifier: TF-IDF word 1-2-grams + char_wb 2-5-grams (sublinear tf), logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    features = FeatureUnion(
        [
            ("word", _word_features()(analyzer="word", ngram_range=(1, 2), sublinear_tf=True)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        ]
    )
    return Pipeline([("features", features), ("model", LogisticRegression(C=c, max_iter=2000, random_state=seed))])


@functools.cache
def _word_features() -> type:
    """TfidfVectorizer that gives no columns when its texts have no word, instead of sklearn's "empty vocabulary"
    ValueError: texts such as ":)" or "😡" are examples the data layer accepts, and the char n-grams still read them
    (also a cross-validation fold whose training texts happen to be symbols only). A class made once, lazily, so
    that importing this module does not import sklearn; ``clone`` rebuilds it from its parameters like its parent."""
    from scipy.sparse import csr_matrix
    from sklearn.feature_extraction.text import TfidfVectorizer

    class WordFeatures(TfidfVectorizer):
        def fit(self, raw_documents, y=None):
            self.fit_transform(raw_documents, y)
            return self

        def fit_transform(self, raw_documents, y=None):
            documents = list(raw_documents)
            analyze = self.build_analyzer()
            self.no_words_ = not any(analyze(document) for document in documents)
            if self.no_words_:
                return csr_matrix((len(documents), 0))
            return super().fit_transform(documents, y)

        def transform(self, raw_documents):
            if getattr(self, "no_words_", False):
                return csr_matrix((len(list(raw_documents)), 0))
            return super().transform(raw_documents)

    return WordFeatures


def cv_folds(labels: Sequence[str]) -> int:
    """Stratified folds the cross-validation of a learned baseline uses: at most 5, at most the rarest label's count.

    Raises:
        DataError: with fewer than two labels.
    """
    counts = np.unique(np.asarray(labels), return_counts=True)[1]
    if len(counts) < 2:
        raise DataError("a learned baseline needs at least two labels in its training data")
    return int(min(CLASSICAL_FOLDS, counts.min()))


@dataclass
class CrossValidation:
    """What ``cross_validate`` chose and fitted: the estimator refitted on every row at the chosen C, the choice (C,
    folds, CV accuracy), and, when asked for, each row's class probabilities from the fold that did not train on it
    (columns ``classes``, the sorted labels; None without cross-validation)."""

    fitted: Any
    chosen: dict[str, Any]
    classes: list[str]
    out_of_fold: np.ndarray | None = None


def cross_validate(
    make: Callable[[float], Any], features: Any, labels: Sequence[str], *, seed: int = 0, progress: Any = None, out_of_fold: bool = False,
) -> CrossValidation:
    """Fit ``make(C)`` with C chosen from ``CLASSICAL_C_GRID`` by stratified k-fold CV (accuracy) on these rows only.

    What ``GridSearchCV(refit=True)`` does (the same folds, mean fold accuracy, ties to the first C of the
    grid), written out so each fit is a step of the baseline's progress. ``out_of_fold``: also keep the fold
    classifiers' probabilities of the rows they did not see, at the chosen C (``suspects``' confident learning
    reads them): the fits the choice of C made anyway, so no classifier is fitted for them.

    Raises:
        DataError: with fewer than two labels.
    """
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(list(labels))
    classes = sorted(set(labels.tolist()))
    folds = cv_folds(labels)
    if folds < 2:
        expect_progress(progress, 1)
        fitted = make(CLASSICAL_FALLBACK_C).fit(features, labels)
        if progress is not None:
            progress(1)
        return CrossValidation(fitted, {"C": CLASSICAL_FALLBACK_C, "folds": 0, "cv_accuracy": None}, classes)
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels))
    expect_progress(progress, len(CLASSICAL_C_GRID) * folds + 1)
    means, probabilities = [], []
    for c in CLASSICAL_C_GRID:
        scores = []
        kept = np.zeros((len(labels), len(classes))) if out_of_fold else None
        for train_index, test_index in splits:
            estimator = clone(make(c)).fit(_rows(features, train_index), labels[train_index])
            # predict, not the argmax of predict_proba: the scores (hence C, and the cache) stay what they were.
            scores.append(float(np.mean(estimator.predict(_rows(features, test_index)) == labels[test_index])))
            if kept is not None:
                kept[test_index] = in_label_order(estimator.predict_proba(_rows(features, test_index)), estimator.classes_, classes)
            if progress is not None:
                progress(1)
        means.append(float(np.mean(scores)))
        probabilities.append(kept)
    best = int(np.argmax(means))  # the first of equal means, as GridSearchCV ranks them
    fitted = make(CLASSICAL_C_GRID[best]).fit(features, labels)
    if progress is not None:
        progress(1)
    return CrossValidation(fitted, {"C": float(CLASSICAL_C_GRID[best]), "folds": folds, "cv_accuracy": means[best]}, classes, probabilities[best])


def fit_with_cv(make: Callable[[float], Any], features: Any, labels: Sequence[str], *, seed: int = 0, progress: Any = None) -> tuple[Any, dict[str, Any]]:
    """``cross_validate`` without the out-of-fold probabilities: the estimator refitted on every row, and what was
    chosen (C, folds, CV accuracy).

    Raises:
        DataError: with fewer than two labels.
    """
    validated = cross_validate(make, features, labels, seed=seed, progress=progress)
    return validated.fitted, validated.chosen


def _rows(features: Any, index: np.ndarray) -> Any:
    if isinstance(features, list):
        return [features[i] for i in index]
    return features[index]


def fit_classical(texts: Sequence[str], labels: Sequence[str], seed: int = 0, progress: Any = None) -> tuple[Any, dict[str, Any]]:
    """Fit ``classical_pipeline`` with C chosen by stratified k-fold CV (accuracy) on these records only.

    Returns the pipeline refitted on all of them, and what was chosen (C, folds, CV accuracy).

    Raises:
        DataError: with fewer than two labels.
    """
    return fit_with_cv(lambda c: classical_pipeline(c, seed), list(texts), labels, seed=seed, progress=progress)


def classical_baseline(
    train: Sequence[ClassifyRecord],
    records: Sequence[ClassifyRecord],
    *,
    data_config: DataConfig,
    labels: Sequence[str] | None = None,
    train_ids=None,
    progress: Any = None,
) -> EvalResult:
    """The classical classifier trained on ``train``, scored on ``records`` like the model.

    ``labels`` fixes the answerable classes and their order (the tuned model's); default: the training labels.

    Raises:
        DataError: for missing or wrong training records, fewer than two labels, or a bad test set.
    """
    _need_training("classical", train, ClassifyRecord)
    chosen, warnings = _prepare(records, "classify", data_config, train_ids)
    # In a fixed order (by id), so the CV folds, hence C, do not depend on the order of the file:
    # the cache key (the records' fingerprint) does not either.
    train = sorted(train, key=lambda record: record.id)
    labels = list(labels) if labels is not None else sorted({r.label for r in train})
    pipeline, fitted = fit_classical([r.text for r in train], [r.label for r in train], seed=data_config.seed, progress=progress)
    if not fitted["folds"]:
        warnings.append(f"some label has a single training example: the classical baseline uses C={CLASSICAL_FALLBACK_C} without cross-validation")
    probabilities = in_label_order(pipeline.predict_proba([r.text for r in chosen]), pipeline.classes_, labels)
    rows, metrics, more = score_classify(chosen, probabilities, labels)
    model = f"classical (TF-IDF word 1-2 + char 2-5 grams, logistic regression C={fitted['C']:g})"
    settings = {"train_records": len(train), "c_grid": list(CLASSICAL_C_GRID), **fitted}
    return _result("classify", "classical", model, chosen, rows, metrics, settings, warnings + more, labels)


def in_label_order(predicted: np.ndarray, classes: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Columns in the tuned model's label order; a label the classifier never saw has probability 0."""
    probabilities = np.zeros((len(predicted), len(labels)))
    column = {label: index for index, label in enumerate(labels)}
    for source, label in enumerate(classes):
        if label in column:
            probabilities[:, column[label]] = predicted[:, source]
    return probabilities


# ----------------------------------------------------------------------------------------- embedding


def embedding_classifier(c: float = 1.0, seed: int = 0):
    """Logistic regression over unit-length sentence embeddings (the embedding baseline's classifier)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000, random_state=seed)


def load_embedder(config: EvalConfig, allow_network: bool) -> tuple[Any, Any]:
    """The embedding model of ``eval.embedding_model`` and its source, or BaselineSkipped with the reason."""
    from tunelab.models.embedding import load_embedding_model, resolve_embedding_model

    try:
        source = resolve_embedding_model(config.embedding_model, allow_network=allow_network)
        return load_embedding_model(source), source
    except ModelError as error:
        raise BaselineSkipped(f"the embedding model is unavailable: {error}") from None


def embedding_baseline(
    train: Sequence[ClassifyRecord],
    records: Sequence[ClassifyRecord],
    *,
    config: EvalConfig,
    data_config: DataConfig,
    labels: Sequence[str] | None = None,
    train_ids=None,
    allow_network: bool = False,
    progress: Any = None,
) -> EvalResult:
    """Frozen sentence embeddings + logistic regression trained on ``train``, scored on ``records`` like the model.

    C is chosen by stratified cross-validation on the training records only (``fit_with_cv``, the grid of
    ``classical``); probabilities give ECE like the model's.

    Raises:
        BaselineSkipped: when the embedding model cannot be loaded here (the reason says why).
        DataError: for missing or wrong training records, fewer than two labels, or a bad test set.
    """
    from tunelab.models.embedding import embed_texts

    _need_training("embedding", train, ClassifyRecord)
    chosen, warnings = _prepare(records, "classify", data_config, train_ids)
    train = sorted(train, key=lambda record: record.id)  # fold assignment independent of the file order
    labels = list(labels) if labels is not None else sorted({r.label for r in train})
    model, source = load_embedder(config, allow_network)
    expect_progress(progress, len(train) + len(chosen))
    train_vectors = embed_texts(model, [r.text for r in train], progress=progress)
    test_vectors = embed_texts(model, [r.text for r in chosen], progress=progress)
    validated = cross_validate(lambda c: embedding_classifier(c, data_config.seed), train_vectors, [r.label for r in train],
                               seed=data_config.seed, progress=progress, out_of_fold=True)
    classifier, fitted = validated.fitted, validated.chosen
    if not fitted["folds"]:
        warnings.append(f"some label has a single training example: the embedding baseline uses C={CLASSICAL_FALLBACK_C} without cross-validation")
    probabilities = in_label_order(classifier.predict_proba(test_vectors), classifier.classes_, labels)
    rows, metrics, more = score_classify(chosen, probabilities, labels)
    name = f"embedding ({source.display_name} sentence embeddings, logistic regression C={fitted['C']:g})"
    settings = {"train_records": len(train), "c_grid": list(CLASSICAL_C_GRID), "embedding_model": source.display_name, **fitted}
    result = _result("classify", "embedding", name, chosen, rows, metrics, settings, warnings + more, labels)
    # The rows it learned from whose label its own cross-validation doubts: kept with the result, so a cached
    # baseline gives the run the same list without embedding anything again.
    result.suspect_labels = _suspects_of(train, validated, source.display_name).to_dict(max_suspects=len(train))
    return result


def _suspects_of(records: Sequence[ClassifyRecord], validated: CrossValidation, model: str, total: int | None = None) -> SuspectReport:
    settings = {key: validated.chosen[key] for key in ("C", "folds", "cv_accuracy")}
    skipped = None if validated.out_of_fold is not None else (
        f"some label has a single example ({', '.join(left_out_labels(records))}): no cross-validation scored the rows")
    return suspect_report(records, validated.out_of_fold, validated.classes, total=total, model=model, settings=settings, skipped=skipped)


def find_suspect_labels(
    records: Sequence[ClassifyRecord], *, config: EvalConfig | None = None, seed: int = 0, allow_network: bool = False, progress: Any = None,
) -> SuspectReport:
    """``tunelab data check --suspect-labels``: rows of ``records`` whose label is likely wrong (``suspects``), found
    as the embedding baseline finds them in a run; never raises for too little data.

    Labels with a single example are left out (no fold can score them), the others cross-validated as the embedding
    baseline does. ``config.embedding_model`` names the embedding model; one that cannot be loaded gives a report with
    ``skipped`` saying why. ``progress`` is a baseline's (``expect(n)``, then called with each part done: texts
    embedded, classifiers fitted).
    """
    from tunelab.models.embedding import embed_texts

    left_out = set(left_out_labels(records))
    # Sorted by id, as the embedding baseline sorts: the folds do not depend on the file's order.
    kept = sorted((r for r in records if r.label not in left_out), key=lambda r: r.id)
    if len({r.label for r in kept}) < 2:
        report = suspect_report(records, None, [], skipped="too little to check: fewer than 2 labels have 2 or more examples")
        return report
    try:
        model, source = load_embedder(config or EvalConfig(), allow_network)
    except BaselineSkipped as error:
        return suspect_report(records, None, [], skipped=str(error))
    expect_progress(progress, len(kept))
    features = embed_texts(model, [r.text for r in kept], progress=progress)
    validated = cross_validate(lambda c: embedding_classifier(c, seed), features, [r.label for r in kept], seed=seed, progress=progress,
                               out_of_fold=True)
    report = _suspects_of(kept, validated, source.display_name, total=len(records))
    report.left_out = sorted(left_out)
    return report


def embedding_retrieval_baseline(
    train: Sequence[SFTRecord], records: Sequence[SFTRecord], *, config: EvalConfig, data_config: DataConfig, train_ids=None,
    allow_network: bool = False, progress: Any = None,
) -> EvalResult:
    """Answer each test prompt with the completion of the training prompt nearest by embedding cosine (ties: the first by id).

    Raises:
        BaselineSkipped: when the embedding model cannot be loaded here.
        DataError: for missing or wrong training records, a bad test set, or an example without reference.
    """
    from tunelab.models.embedding import embed_texts

    _need_training("embedding", train, SFTRecord)
    chosen, warnings = _prepare(records, "sft", data_config, train_ids)
    train = sorted(train, key=lambda record: record.id)
    references = [references_of(record) for record in chosen]
    model, source = load_embedder(config, allow_network)
    expect_progress(progress, len(train) + len(chosen))
    train_vectors = embed_texts(model, [prompt_text(r.prompt_messages) for r in train], progress=progress)
    test_vectors = embed_texts(model, [prompt_text(r.prompt_messages) for r in chosen], progress=progress)
    nearest = (test_vectors @ train_vectors.T).argmax(axis=1)  # unit vectors: the dot product is the cosine
    answers = [train[int(index)].completion for index in nearest]
    rows, metrics = score_sft(chosen, answers, references)
    settings = {"train_records": len(train), "features": f"{source.display_name} sentence embeddings, cosine", "embedding_model": source.display_name}
    model_name = f"embedding retrieval (completion of the nearest training prompt, {source.display_name} cosine)"
    return _result("sft", "embedding", model_name, chosen, rows, metrics, settings, warnings)


# ------------------------------------------------------------------------------------------ few-shot


def few_shot_round(
    train: Sequence[ClassifyRecord], label_map: LabelMap, tokenizer: Any, *, seed: int = 0, system_prompt: str | None = None
) -> tuple[list[tuple[str, str]], int, int]:
    """The first round of few-shot examples (one per label) and its token cost: (examples, k, tokens)."""
    examples, k = few_shot_classify_examples(train, label_map, tokenizer, 10**9, seed=seed, system_prompt=system_prompt)
    first = examples[: len(label_map.labels)]
    empty = render_prompt_ids(tokenizer, zero_shot_messages("", label_map, system_prompt))
    tokens = len(render_prompt_ids(tokenizer, few_shot_messages("", label_map, first, system_prompt))) - len(empty)
    return first, min(k, 1), tokens


def few_shot_classify(
    loaded: Any,
    train: Sequence[ClassifyRecord],
    records: Sequence[ClassifyRecord],
    *,
    config: EvalConfig,
    data_config: DataConfig,
    label_map: LabelMap,
    train_ids=None,
    progress: Progress | None = None,
) -> EvalResult:
    """The base model prompted with solved training examples, scored over the label tokens (shared prefix once).

    Raises:
        DataError: for missing or wrong training records or a bad test set.
    """
    _need_training("few_shot", train, ClassifyRecord)
    chosen, warnings = _prepare(records, "classify", data_config, train_ids)
    tokenizer, system = loaded.tokenizer, data_config.system_prompt
    # The text keeps data.max_length beside the label list (what the zero-shot instruction adds), so both count
    # against the context before the examples do.
    extra = zero_shot_extra_tokens(tokenizer, label_map, system)
    budget = _example_budget(loaded, config, data_config.max_length + extra, warnings)
    examples, k = few_shot_classify_examples(train, label_map, tokenizer, budget, seed=data_config.seed, system_prompt=system)
    if k == 0:
        # A prompt that never shows some labels cannot win against opponents that learned every one.
        _, _, round_tokens = few_shot_round(train, label_map, tokenizer, seed=data_config.seed, system_prompt=system)
        raise BaselineSkipped(
            f"{budget} tokens (eval.few_shot_tokens) hold {len(examples)} examples, not one for each of the "
            f"{len(label_map.labels)} labels (one round needs {round_tokens} tokens; raise eval.few_shot_tokens to try it)"
        )
    # The test text gets as many tokens as in the trained prompt; the label list and the examples come on top.
    limit = data_config.max_length + extra + budget
    # The one classify inference with the few-shot prompt: the examples are the shared prefix, computed once.
    classifier = Classifier(tokenizer, label_map, limit, system, messages=lambda text: few_shot_messages(text, label_map, examples, system),
                            context=context_length(loaded.model))
    built = [classifier.prompt(record.text) for record in chosen]
    truncated = sum(cut for _, cut in built)
    probabilities = classifier.probabilities(loaded.model, [ids for ids, _ in built], batch_size=config.batch_size, progress=progress)
    rows, metrics, more = score_classify(chosen, probabilities, label_map.labels)
    if truncated:
        more.append(f"{truncated} few-shot prompts were too long and had their text shortened")
    model = f"{_model_name(loaded)} few-shot ({k} per label, {len(examples)} examples)"
    settings = {"prompt": "few_shot", "examples_per_label": k, "examples": len(examples), "few_shot_tokens": config.few_shot_tokens, "labels": label_map.to_dict()}
    return _result("classify", "few_shot", model, chosen, rows, metrics, settings, warnings + more, label_map.labels)


def few_shot_sft(
    loaded: Any,
    train: Sequence[SFTRecord],
    records: Sequence[SFTRecord],
    *,
    config: EvalConfig,
    data_config: DataConfig,
    train_ids=None,
    progress: Progress | None = None,
) -> EvalResult:
    """The base model answering with k solved training pairs before each prompt (same generation path).

    Raises:
        DataError: for missing or wrong training records, a bad test set, or an example without reference.
    """
    _need_training("few_shot", train, SFTRecord)
    chosen, warnings = _prepare(records, "sft", data_config, train_ids)
    references = [references_of(record) for record in chosen]
    budget = _example_budget(loaded, config, data_config.max_length + config.max_new_tokens, warnings)
    examples = few_shot_sft_examples(train, loaded.tokenizer, budget, seed=data_config.seed)
    if not examples:
        raise BaselineSkipped(
            f"{budget} tokens (eval.few_shot_tokens) do not fit one training example: the prompt would be the base model's own"
        )
    conversations = few_shot_sft_chats(chosen, examples, data_config.system_prompt)
    answers, truncated, unstopped = answer_prompts(loaded, conversations, config, data_config.max_length + budget, progress)
    rows, metrics = score_sft(chosen, answers, references)
    if truncated:
        warnings.append(f"{truncated} few-shot prompts were too long and kept only their last tokens")
    warnings += unstopped_warning(unstopped, len(answers), config)
    settings = {"prompt": "few_shot", "examples": len(examples), "few_shot_tokens": config.few_shot_tokens,
                "max_new_tokens": config.max_new_tokens, "temperature": config.temperature, "top_p": config.top_p, "seed": config.seed}
    return _result("sft", "few_shot", f"{_model_name(loaded)} few-shot ({len(examples)} examples)", chosen, rows, metrics, settings, warnings)


# ----------------------------------------------------------------------------------------- retrieval


def nearest_training_prompts(train_prompts: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    """Index of the most TF-IDF-cosine-similar training prompt for each prompt (ties: the first).

    Raises:
        DataError: when the training prompts have no word to match on.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    try:
        train_matrix = vectorizer.fit_transform(list(train_prompts))
    except ValueError:
        raise DataError("the retrieval baseline found no words in the training prompts") from None
    # Rows are L2-normalised, so the dot product is the cosine similarity.
    similarity = (vectorizer.transform(list(prompts)) @ train_matrix.T).toarray()
    return similarity.argmax(axis=1)


def retrieval_baseline(train: Sequence[SFTRecord], records: Sequence[SFTRecord], *, data_config: DataConfig, train_ids=None) -> EvalResult:
    """Answer each test prompt with the completion of the most similar training prompt (TF-IDF cosine).

    Raises:
        DataError: for missing or wrong training records, a bad test set, or an example without reference.
    """
    _need_training("retrieval", train, SFTRecord)
    chosen, warnings = _prepare(records, "sft", data_config, train_ids)
    train = sorted(train, key=lambda record: record.id)  # ties go to the same record whatever the file order
    references = [references_of(record) for record in chosen]
    nearest = nearest_training_prompts([prompt_text(r.prompt_messages) for r in train], [prompt_text(r.prompt_messages) for r in chosen])
    answers = [train[int(index)].completion for index in nearest]
    rows, metrics = score_sft(chosen, answers, references)
    settings = {"train_records": len(train), "features": "TF-IDF word 1-2-grams, cosine"}
    return _result("sft", "retrieval", "retrieval (completion of the nearest training prompt, TF-IDF cosine)", chosen, rows, metrics, settings, warnings)


# ------------------------------------------------------------------------ the current system's predictions


def predictions_baseline(
    name: str, entry: PredictionsConfig, records: Sequence[Record], task: str, *, data_config: DataConfig,
    labels: Sequence[str] | None = None, train_ids=None, predictions_read: dict | None = None,
) -> EvalResult:
    """The answers the system in use now gave to the test requests (``entry``'s file), scored like the model's.

    classify: an answer that is none of ``labels`` counts as wrong (it is what the system answered; said once with a
    count), the out-of-scope label (``data.out_of_scope_label``) is an out-of-scope answer; ECE only where the file gives
    every answer's probability. The system learns nothing here and runs nothing: no threshold is chosen for it.

    Raises:
        DataError: for unreadable rows, two answers to one request, or a test request without an answer.

    ``predictions_read``: the files already read in this run (``data.predictions.read_once``).
    """
    from tunelab.data.predictions import match_predictions, read_once

    chosen, warnings = _prepare(records, task, data_config, train_ids)
    read = read_once(entry, task, data_config, predictions_read)
    answers, notes = match_predictions(read, chosen, records)
    warnings += notes
    settings = {"predictions": entry.path, "content_hash": read.content_hash}
    model = f"{name} (the current system's answers, {entry.path})"
    if task == "sft":
        rows, metrics = score_sft(chosen, [a.answer for a in answers], [references_of(r) for r in chosen])
        return _result("sft", name, model, chosen, rows, metrics, settings, warnings)
    labels = list(labels) if labels is not None else sorted({r.label for r in chosen})
    rows, metrics, more = score_answers(chosen, answers, labels, data_config.out_of_scope_label)
    return _result("classify", name, model, chosen, rows, metrics, settings, warnings + more, labels)


def score_answers(
    records: Sequence[ClassifyRecord], answers: Sequence[Any], labels: Sequence[str], out_of_scope_label: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Rows, metrics and warnings of classify answers given as labels (``Prediction``s: answer, source, probability).

    A confidence is the answer's probability where the file gives one; without one for every answer ECE is None
    (shown "—", never 0), and each row's confidence is None.
    """
    from tunelab.evaluation.metrics import classify_metrics

    labels = list(labels)
    answerable = {*labels, *([out_of_scope_label] if out_of_scope_label is not None else [])}
    calibrated = all(answer.probability is not None for answer in answers)
    rows = []
    for record, answer in zip(records, answers, strict=True):
        known = record.label in answerable
        correct = float(answer.answer == record.label)
        confidence = answer.probability if calibrated else None
        scores: dict[str, Any] = {
            "correct": correct, "confidence": confidence,
            "probability_of_reference": (confidence if correct else 0.0) if calibrated else None, "known_label": known,
        }
        row = {"id": record.id, "source": record.source, "prompt": record.text, "reference": record.label, "prediction": answer.answer,
               "answer_source": answer.source, "scores": scores}
        if out_of_scope_label is not None:
            outside = record.label == out_of_scope_label
            scores.update(label_correct=float(not outside and correct), out_of_scope=float(outside),
                          rejected=float(answer.answer == out_of_scope_label))
            row["label_prediction"] = answer.answer
        rows.append(row)
    # An answer that is none of the labels is its own (always wrong) class in the confusion matrix, as a remote model's.
    unknown = sorted({answer.answer for answer in answers} - answerable)
    metrics = classify_metrics(
        [r.label for r in records], [a.answer for a in answers], [a.probability if calibrated else 1.0 for a in answers], labels + unknown,
        out_of_scope_label=out_of_scope_label,
        label_correct=[row["scores"]["label_correct"] for row in rows] if out_of_scope_label is not None else None,
    )
    warnings = []
    if not calibrated:
        metrics["ece"] = None
    count, warning = unknown_answers(answers, answerable)
    if warning:
        metrics["unknown_answers"] = count
        warnings.append(warning)
    return rows, metrics, warnings


def unknown_answers(answers: Sequence[Any], answerable: Collection[str]) -> tuple[int, str | None]:
    """How many of classify ``answers`` (``Prediction``s) are none of the ``answerable`` labels, and the warning that
    says so (None when there is none): they count as wrong."""
    unknown = sorted({answer.answer for answer in answers} - set(answerable))
    if not unknown:
        return 0, None
    count = sum(1 for answer in answers if answer.answer in set(unknown))
    shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
    return count, f"{count} answers are none of the run's labels ({shown}): they count as wrong"


# ---------------------------------------------------------------------------------------- dispatching


def _model_name(loaded: Any) -> str:
    return loaded.source.display_name


def _example_budget(loaded: Any, config: EvalConfig, room: int, warnings: list[str]) -> int:
    """``eval.few_shot_tokens``, lowered so examples + the example's own ``room`` tokens fit the model's context."""
    context = context_length(loaded.model)  # the one context length, as the Classifier caps the prompt at
    budget = few_shot_budget(context, config.few_shot_tokens, room)
    if budget < config.few_shot_tokens:
        warnings.append(f"few-shot examples get {budget} tokens, not eval.few_shot_tokens={config.few_shot_tokens}: the model reads at most {context}")
    return budget


@dataclass(frozen=True)
class BaselineJob:
    """What a baseline's scorer is given: the base model (when its catalogue entry needs one), the test records,
    the records it may learn from, the settings and the labels it answers over.

    ``progress`` is called with each part of the work done; a ``Meter`` is also told how much to expect.
    ``allow_network``: whether a hub model it needs (``eval.embedding_model``) may be downloaded."""

    name: str
    base: Any
    records: Sequence[Record]
    task: str
    train: Sequence[Record]
    config: EvalConfig
    data_config: DataConfig
    label_map: LabelMap | None
    train_ids: Any
    progress: Progress | None
    allow_network: bool = False
    predictions_read: dict | None = None  # the predictions files this run has read (``data.predictions.read_once``)

    @property
    def test_count(self) -> int:
        return len(select_test_records(self.records, self.data_config.max_test_examples, self.data_config.seed))


@dataclass(frozen=True)
class BaselineScorer:
    """How one catalogue entry (``tunelab.config.BASELINES``) scores, and what else than the common settings
    changes its scores (its part of the cache key)."""

    score: Callable[[BaselineJob], EvalResult]
    cache_settings: Callable[[EvalConfig], dict[str, Any]]


SCORERS: dict[str, BaselineScorer] = {}


def scorer(name: str, cache_settings: Callable[[EvalConfig], dict[str, Any]] = lambda config: {}) -> Callable:
    """Register the scorer of the catalogue entry ``name`` (a decorator)."""

    def register(function: Callable[[BaselineJob], EvalResult]) -> Callable[[BaselineJob], EvalResult]:
        SCORERS[name] = BaselineScorer(function, cache_settings)
        return function

    return register


CROSS_VALIDATION_SETTINGS = {"c_grid": list(CLASSICAL_C_GRID), "folds": CLASSICAL_FOLDS}


@scorer("base")
def _score_base(job: BaselineJob) -> EvalResult:
    from tunelab.evaluation.answering import LocalModel

    expect_progress(job.progress, job.test_count)
    return LocalModel(job.base).evaluate(job.records, job.task, config=job.config, data_config=job.data_config, label_map=job.label_map,
                                         baseline=True, train_ids=job.train_ids, progress=job.progress, baseline_name="base")


@scorer("classical", lambda config: {"classical": CROSS_VALIDATION_SETTINGS})
def _score_classical(job: BaselineJob) -> EvalResult:
    labels = job.label_map.labels if job.label_map is not None else None
    return classical_baseline(job.train, job.records, data_config=job.data_config, labels=labels, train_ids=job.train_ids, progress=job.progress)


@scorer("embedding", lambda config: {"classical": CROSS_VALIDATION_SETTINGS, "embedding_model": _embedding_key(config)})
def _score_embedding(job: BaselineJob) -> EvalResult:
    if job.task == "classify":
        labels = job.label_map.labels if job.label_map is not None else None
        return embedding_baseline(job.train, job.records, config=job.config, data_config=job.data_config, labels=labels,
                                  train_ids=job.train_ids, allow_network=job.allow_network, progress=job.progress)
    return embedding_retrieval_baseline(job.train, job.records, config=job.config, data_config=job.data_config, train_ids=job.train_ids,
                                        allow_network=job.allow_network, progress=job.progress)


@scorer("few_shot", lambda config: {"few_shot_tokens": config.few_shot_tokens})
def _score_few_shot(job: BaselineJob) -> EvalResult:
    expect_progress(job.progress, job.test_count)
    # The base model, loaded on the CPU, is prompted on the GPU where it fits (as the zero-shot base baseline's evaluate does).
    with on_inference_device(job.base.model):
        if job.task == "classify":
            return few_shot_classify(job.base, job.train, job.records, config=job.config, data_config=job.data_config,
                                     label_map=job.label_map, train_ids=job.train_ids, progress=job.progress)
        return few_shot_sft(job.base, job.train, job.records, config=job.config, data_config=job.data_config, train_ids=job.train_ids,
                            progress=job.progress)


@scorer("retrieval")
def _score_retrieval(job: BaselineJob) -> EvalResult:
    expect_progress(job.progress, 1)
    result = retrieval_baseline(job.train, job.records, data_config=job.data_config, train_ids=job.train_ids)
    if job.progress is not None:
        job.progress(1)
    return result


@scorer("predictions")
def _score_predictions(job: BaselineJob) -> EvalResult:
    entry = job.config.predictions_of(job.name)
    if entry is None:
        raise ConfigError("the predictions baseline needs its file: {predictions: PATH, name: NAME} in eval.baselines")
    expect_progress(job.progress, 1)
    labels = job.label_map.labels if job.label_map is not None else None
    result = predictions_baseline(job.name, entry, job.records, job.task, data_config=job.data_config, labels=labels, train_ids=job.train_ids,
                                  predictions_read=job.predictions_read)
    if job.progress is not None:
        job.progress(1)
    return result


def is_predictions(name: str, config: EvalConfig, task: str) -> bool:
    """Whether ``name`` is the current system's predictions file (``{predictions: PATH, name: NAME}``) for ``task``."""
    return config.predictions_of(name) is not None and task in PREDICTIONS_TASKS


def needs_base_model(name: str) -> bool:
    """Whether baseline ``name`` runs the base model (a remote one runs elsewhere)."""
    entry = BASELINES.get(name)
    return entry is not None and entry.needs_base_model


def learns_from_training(name: str) -> bool:
    """Whether baseline ``name`` learns from the training split."""
    entry = BASELINES.get(name)
    return entry is not None and entry.learns_from_training


def check_baselines(names: Sequence[str], task: str, config: EvalConfig, *, train: Sequence[Record], has_base: bool) -> None:
    """Refuse, before anything runs, a baseline that does not apply to ``task``, learns without training records,
    or needs a base model there is none of (under a remote model).

    Raises:
        ConfigError: for a baseline that does not apply, or needs a base model.
        DataError: when a baseline that learns has no training records.
    """
    for name in names:
        if name not in TASK_BASELINES.get(task, ()) and not (config.endpoint_of(name) and task in REMOTE_TASKS) and not is_predictions(name, config, task):
            raise ConfigError(f"the {name} baseline does not apply to the task {task}", f"choose from {', '.join(TASK_BASELINES.get(task, ()))}")
    local = [name for name in names if needs_base_model(name)]
    if local and not has_base:
        raise ConfigError(f"the {', '.join(local)} baseline(s) run the local model under the evaluated one, and a remote model has none",
                          "use classical, retrieval or another remote model (openai:NAME) as baselines")
    missing = [name for name in names if learns_from_training(name) and not train]
    if missing:
        raise DataError(f"the {', '.join(missing)} baseline(s) learn from training data", "give the training file with --train FILE")


def check_predictions(
    names: Sequence[str], records: Sequence[Record] | None, task: str, *, config: EvalConfig, data_config: DataConfig,
    labels: Collection[str] | None = None, predictions_read: dict | None = None,
) -> list[str]:
    """Refuse, before any model answers, a predictions file of ``names`` with unreadable rows, two answers to one
    request, or (given the test ``records``) no answer to a test request that will be scored; the notes to show
    (answers to requests outside the test set, ignored; given the run's classify ``labels``, answers to the scored
    requests that are none of them, counted wrong). Without ``records`` the files are only read (a run's data check,
    before its split exists).

    Raises:
        DataError: as ``data.predictions.read_predictions`` and ``match_predictions``.

    ``predictions_read``: the files already read in this run, kept for its next use (``data.predictions.read_once``).
    """
    from tunelab.data.predictions import match_predictions, read_once

    chosen = None if records is None else select_test_records(records, data_config.max_test_examples, data_config.seed)
    notes: list[str] = []
    for name in names:
        if is_predictions(name, config, task):
            read = read_once(config.predictions_of(name), task, data_config, predictions_read)  # type: ignore[arg-type]
            if chosen is not None:
                answers, found = match_predictions(read, chosen, records)
                if task == "classify" and labels is not None:
                    outside = [data_config.out_of_scope_label] if data_config.out_of_scope_label is not None else []
                    found.append(unknown_answers(answers, {*labels, *outside})[1])
                notes += [f"baseline {name}: {note}" for note in found if note]
    return notes


def evaluate_baseline(
    name: str,
    base: Any,
    records: Sequence[Record],
    task: str,
    *,
    train: Sequence[Record],
    config: EvalConfig,
    data_config: DataConfig,
    label_map: LabelMap | None = None,
    train_ids=None,
    progress: Progress | None = None,
    allow_network: bool = False,
    predictions_read: dict | None = None,
) -> EvalResult:
    """One baseline's evaluation on ``records`` (``base`` is the base model, needed by base and few_shot).

    A remote baseline (``openai:NAME``, ``remote:NAME``) is a remote model answering through the one model
    interface; every other is an entry of the catalogue (``tunelab.config.BASELINES``) scored by its ``SCORERS`` entry.
    ``progress``: called with each part of the work done; a ``Meter`` is also told how much work to expect.

    Raises:
        BaselineSkipped: for a baseline that cannot run here or cannot win (the reason says which).
        ConfigError: for a baseline that does not apply to the task, or no base model where one is needed.
        DataError: for missing training records or a bad test set.
    """
    endpoint = config.endpoint_of(name)
    if endpoint is not None and task in REMOTE_TASKS:
        from tunelab.evaluation.answering import remote_model

        if task == "classify" and label_map is None and train:
            label_map = names_label_map(sorted({r.label for r in train}))
        return remote_model(endpoint, check=False).evaluate(records, task, config=config, data_config=data_config, label_map=label_map,
                                                            train_ids=train_ids, baseline_name=name, progress=progress)
    if is_predictions(name, config, task):
        job = BaselineJob(name, base, records, task, train, config, data_config, label_map, train_ids, progress, allow_network, predictions_read)
        return SCORERS["predictions"].score(job)
    if name not in TASK_BASELINES.get(task, ()):
        raise ConfigError(f"the {name} baseline does not apply to the task {task}", f"choose from {', '.join(TASK_BASELINES.get(task, ()))}")
    if needs_base_model(name) and base is None:
        raise ConfigError(f"the {name} baseline needs the base model")
    if task == "classify" and label_map is None:
        source = train if learns_from_training(name) else records
        label_map = LabelMap.for_records(source, base.tokenizer, data_config.out_of_scope_label) if base is not None else None
    job = BaselineJob(name, base, records, task, train, config, data_config, label_map, train_ids, progress, allow_network)
    return SCORERS[name].score(job)


def baseline_settings(
    name: str, task: str, config: EvalConfig, data_config: DataConfig, label_map: LabelMap | None, train: Sequence[Record] = (),
    validation: Sequence[Record] | None = None,
) -> dict[str, Any]:
    """Everything that changes a baseline's scores besides the model and the test set: its cache settings.

    Includes the fingerprint of the training records for the baselines that learn from them, and with
    an out-of-scope label the label and the fingerprint of the validation queries its threshold is chosen on.
    """
    settings: dict[str, Any] = {
        "baseline": name,
        "task": task,
        "max_length": data_config.max_length,
        "stride": data_config.stride,
        "system_prompt": data_config.system_prompt,
        "max_test_examples": data_config.max_test_examples,
        "sample_seed": data_config.seed,
        "labels": label_map.to_dict() if label_map is not None else None,
    }
    endpoint = config.endpoint_of(name)
    if endpoint is not None:
        settings["endpoint"] = {"base_url": endpoint.base_url, "name": endpoint.name}
        settings["eval"] = config.model_dump(mode="json", include={"max_new_tokens", "temperature", "top_p", "seed"})
    if needs_base_model(name):
        # Batch size is in: padding changes float rounding, hence (rarely) an argmax.
        settings["eval"] = config.model_dump(mode="json", include={"max_new_tokens", "temperature", "top_p", "batch_size", "seed"})
        if task == "classify":
            # Since 2026-12-01 the label list no longer counts against max_length (it used to be cut for many labels).
            settings["label_list"] = "beyond max_length"
            if label_map is not None:
                # The prompt tunelab writes is part of the key (as for tokenized training data): a changed
                # instruction is never scored from answers cached with the old one.
                solved = [("{example}", label) for label in label_map.labels[:1]]  # one solved example: the instruction and both turn shapes
                settings["prompt"] = few_shot_messages("{text}", label_map, solved, data_config.system_prompt)
    if task == "sft":
        # How exact match compares (``metrics.exact_match``: Unicode-aware since it was ASCII-only): a baseline
        # scored the old way is not reused beside a tuned model scored the new way.
        settings["exact_match"] = "nfkc, casefold, unicode punctuation; articles kept when nothing else is left"
    if task == "text" and needs_base_model(name):
        # The continuation samples the base model writes beside its perplexity (read by the review sheet): a cached
        # evaluation with another count of them is not this one.
        settings["text_samples"] = config.text_samples
    if name in SCORERS:
        settings.update(SCORERS[name].cache_settings(config))
    predictions = config.predictions_of(name)
    if predictions is not None:
        from tunelab.data.formats import content_hash
        from tunelab.data.predictions import reading_config

        # The file's content, not its name or time: an edited file is scored again, a copied one is not; and the columns
        # it is read from (the run's own data.*_field where the entry names none).
        read_as = reading_config(predictions, data_config).model_dump(mode="json", include={
            "format", "text_field", "label_field", "prompt_field", "completion_field", "messages_field"})
        settings["predictions"] = {"content": content_hash(predictions.path), "probability_field": predictions.probability_field, **read_as}
    if learns_from_training(name):
        settings["train_fingerprint"] = training_fingerprint(train)
    if task == "classify" and data_config.out_of_scope_label is not None:
        settings["out_of_scope"] = {"label": data_config.out_of_scope_label, "validation": training_fingerprint(validation or [])}
    return settings


def _embedding_key(config: EvalConfig) -> str:
    """What identifies the embedding model's weights (its package version or files), for the cache key."""
    from tunelab.models.embedding import resolve_embedding_model

    try:
        return resolve_embedding_model(config.embedding_model, allow_network=True).key
    except ModelError:
        return f"unavailable:{config.embedding_model}"


# Why a remote baseline has no out-of-scope threshold (kept in its ``OutOfScope.validation``, said by the report).
ANSWERS_ITSELF = "answers the out-of-scope label itself (offered in its prompt); no threshold"


def calibrated_baseline(
    name: str, base: Any, records: Sequence[Record], validation: Sequence[Record], *, train: Sequence[Record],
    config: EvalConfig, data_config: DataConfig, label_map: LabelMap | None = None, train_ids=None, progress: Progress | None = None,
    allow_network: bool = False,
) -> EvalResult:
    """A classify baseline with its own out-of-scope threshold, chosen on ``validation`` by the tuned model's rule.

    The validation and test queries are scored in one pass (one fit of the classical model, one shared
    few-shot prefix); the threshold then answers the test queries. A remote baseline is asked the test queries only:
    its prompt offers the label, and its threshold is 0 (``ANSWERS_ITSELF``).
    """
    label = data_config.out_of_scope_label
    chosen = select_test_records(records, data_config.max_test_examples, data_config.seed)
    if config.endpoint_of(name) is not None:
        # A remote model's confidence is always 1, so a threshold chosen on validation rows is always 0: asking it
        # them would cost money and send the user's rows for nothing. It is offered the label in its prompt instead.
        answered = evaluate_baseline(name, base, records, "classify", train=train, config=config, data_config=data_config,
                                     label_map=label_map, train_ids=train_ids, progress=progress, allow_network=allow_network)
        return apply_out_of_scope(answered, OutOfScope(label, 0.0, validation={"queries": 0, "out_of_scope": 0, "no_threshold": ANSWERS_ITSELF}))
    whole = data_config.model_copy(update={"max_test_examples": None})
    scored = evaluate_baseline(
        name, base, [*validation, *chosen], "classify", train=train, config=config, data_config=whole,
        label_map=label_map, train_ids=train_ids, progress=progress, allow_network=allow_network,
    )
    cut = len(validation)
    on_validation = dataclasses.replace(scored, rows=scored.rows[:cut], n=cut)
    out_of_scope = calibrate_out_of_scope(on_validation, label) if cut else OutOfScope(label, 0.0, validation={"queries": 0, "out_of_scope": 0})
    warnings = list(scored.warnings)
    if not any(r.label == label for r in validation):
        warnings.append(f"no '{label}' query among the validation queries: the {name} baseline's threshold is 0 (it never answers '{label}')")
    if len(chosen) < len(records):
        warnings.append(f"evaluated a seeded sample of {len(chosen)} of {len(records)} test examples (max_test_examples)")
    on_test = dataclasses.replace(
        scored, rows=scored.rows[cut:], n=len(chosen), test_fingerprint=test_fingerprint("classify", (r.id for r in chosen)), warnings=warnings,
    )
    return apply_out_of_scope(on_test, out_of_scope)


def estimate_remote_baselines(
    names: Sequence[str], records: Sequence[Record], task: str, *, config: EvalConfig, data_config: DataConfig,
    labels: Sequence[str] | None = None, prices: Any = None,
) -> dict[str, Any]:
    """What each remote baseline of ``names`` will cost (``remote.client.RequestEstimate``), before anything is asked:
    the requests ``evaluate_baselines`` sends it (the test rows after ``data.max_test_examples``, through the one prompt
    builder, the out-of-scope option included; no validation rows: ``calibrated_baseline``), the cached ones free.
    ``labels``: the categories it is asked over (the run's label map's). Local baselines are not in the result.

    Raises:
        ConfigError: when an endpoint's API key variable is empty.
        DataError: for a test set the evaluation would refuse.
    """
    from tunelab.evaluation.remote import estimate_remote, remote_client

    if task not in REMOTE_TASKS:
        return {}
    priced = {}
    for name in names:
        endpoint = config.endpoint_of(name)
        if endpoint is not None:
            priced[name] = estimate_remote(remote_client(endpoint, prices=prices), records, task, config=config, data_config=data_config,
                                           labels=labels, out_of_scope_label=data_config.out_of_scope_label)
    return priced


# The modules that build a baseline's prompts, fit it, answer and score it, besides the two that
# ``tokenize.code_fingerprint`` already covers (tokenize.py, templates.py).
SCORING_MODULES = (
    "tunelab.evaluation.baselines", "tunelab.evaluation.evaluate", "tunelab.evaluation.predict", "tunelab.evaluation.answering",
    "tunelab.evaluation.metrics", "tunelab.evaluation.remote", "tunelab.inference", "tunelab.data.labels", "tunelab.models.generate",
    "tunelab.models.prefix", "tunelab.models.embedding", "tunelab.data.predictions",
    "tunelab.evaluation.suspects",  # the embedding baseline's suspect labels are kept with its cached result
)


@functools.cache
def scoring_code_fingerprint() -> str:
    """A hash of the code that prompts, fits, answers and scores a baseline: ``tokenize.code_fingerprint`` extended
    by ``SCORING_MODULES``.

    Stored with each cached baseline and compared when it is read, not part of its key: a tunelab upgrade that
    prompts or scores differently rescores the cached baselines once (and says so) and the cache files keep
    their names. Any edit to these files rescores them too; a wasted rescoring costs minutes, a stale one a verdict.
    """
    from tunelab import __version__
    from tunelab.data.keys import stable_hash
    from tunelab.data.tokenize import code_fingerprint

    sources = [code_fingerprint()]
    for module in SCORING_MODULES:
        spec = importlib.util.find_spec(module)  # the file only: importing the embedding module costs seconds
        try:
            sources.append(Path(spec.origin).read_text(encoding="utf-8"))  # type: ignore[union-attr, arg-type]
        except (AttributeError, TypeError, OSError):  # installed without its sources (bytecode only): the version stands in
            sources.append(__version__)
    return stable_hash(*sources)[:16]


def baseline_cache_key(name: str, model_key: str, test_fingerprint_: str, settings: Mapping[str, Any]):
    """The registry's cache key of a baseline (``tunelab.registry.store.BaselineKey``).

    The model is part of it only for the baselines that run the base model.
    """
    from tunelab.registry.store import baseline_key

    return baseline_key(model_key if needs_base_model(name) else name, test_fingerprint_, dict(settings))


def model_baseline_cannot_win(
    name: str, base: Any, validation: Sequence[Record], *, train: Sequence[Record], config: EvalConfig, data_config: DataConfig,
    label_map: LabelMap | None, cross_validated: Mapping[str, float], progress: Progress | None = None,
) -> str | None:
    """Why a classify baseline that runs the base model cannot win, judged on the validation rows; None when it may.

    It is scored on the in-scope validation queries; when the upper end of the 95% Wilson interval of its
    accuracy there is below the cross-validated accuracy of a cheap opponent already in the verdict
    (``cross_validated``: classical, embedding), it is behind that opponent by more than chance explains,
    so scoring it on the test rows could not change the verdict. Without validation rows or such an
    opponent nothing is skipped. (A few-shot prompt may show a validation row as an example: that can only
    raise its validation score, so the rule stays on the side of scoring it.)
    """
    label = data_config.out_of_scope_label
    rows = [r for r in validation if r.label != label]
    if not rows or not cross_validated:
        return None
    whole = data_config.model_copy(update={"max_test_examples": None})
    scored = evaluate_baseline(name, base, rows, "classify", train=train, config=config, data_config=whole,
                               label_map=label_map, progress=progress)
    right = int(sum(row["scores"]["correct"] for row in scored.rows))
    _, high = wilson_interval(right, len(rows))
    best = max(cross_validated, key=lambda key: cross_validated[key])
    if high >= cross_validated[best]:
        return None
    return (
        f"{right} of {len(rows)} validation requests right ({right / len(rows):.3f}, 95% interval up to {high:.3f}), "
        f"below the {best} baseline's cross-validated accuracy {cross_validated[best]:.3f}: it cannot win, so it is not scored on the test rows"
    )


def evaluate_baselines(
    names: Sequence[str],
    base: Any,
    records: Sequence[Record],
    task: str,
    *,
    train: Sequence[Record],
    config: EvalConfig,
    data_config: DataConfig,
    label_map: LabelMap | None = None,
    train_ids=None,
    registry: Any = None,
    cache_dir: str | Path | None = None,
    model_key: str | None = None,
    run_id: str | None = None,
    on_event: EventFn | None = None,
    progress: Progress | None = None,
    validation: Sequence[Record] | None = None,
    allow_network: bool = False,
    predictions_read: dict | None = None,
) -> Baselines:
    """Every baseline in ``names`` on ``records``; cached in ``registry`` when one is given.

    A cached evaluation is reused when its key (model for base/few_shot, test-set fingerprint,
    ``baseline_settings``, the training records' fingerprint where it learns) matches, its file exists and it was
    scored by the same code (``scoring_code_fingerprint``); one scored by other code is scored again, after a
    "rescore" event.
    classify with ``data_config.out_of_scope_label``: each baseline's threshold is chosen on ``validation``
    (``calibrated_baseline``); without validation queries it stays 0 (nothing rejected).

    The cheap baselines run first, so that (classify, ``eval.skip_hopeless``) a baseline that runs the base
    model can be skipped when the validation rows show it cannot win (``model_baseline_cannot_win``).
    A baseline that cannot run here or cannot win is in the result's ``skipped`` with its reason (and a
    "skipped" event), never silently absent. Each baseline reports "progress" events with an ETA.

    Raises:
        ConfigError, DataError: as ``evaluate_baseline``.
    """
    emit = on_event or (lambda name, status, details: None)
    results: dict[str, EvalResult] = {}
    skipped: dict[str, str] = {}
    cross_validated: dict[str, float] = {}
    test_key = test_fingerprint("split", (r.id for r in records))
    cheap_first = sorted(names, key=needs_base_model)  # stable: the listed order otherwise
    code = scoring_code_fingerprint()
    for name in cheap_first:
        key = None
        if registry is not None and cache_dir is not None:
            settings = baseline_settings(name, task, config, data_config, label_map, train, validation)
            key = baseline_cache_key(name, model_key or "", test_key, settings)
            cached = registry.get_cached_baseline(key)
            if cached and cached.predictions_path and Path(cached.predictions_path).is_file():
                reused = EvalResult.load(cached.predictions_path)
                if reused.settings.get("code") == code:
                    results[name] = reused
                    _note_cross_validated(name, reused, cross_validated)
                    emit(name, "skip", {"cached_from": cached.predictions_path})
                    continue
                emit(name, "rescore", {"cached_from": cached.predictions_path, "reason": (
                    "its cached result was scored by another tunelab version (its prompts, training or scoring code differ)")})
        emit(name, "start", {"n": len(records)})
        meter = Meter(name, emit, progress if needs_base_model(name) else None)
        scoring = {"train": train, "config": config, "data_config": data_config, "label_map": label_map, "train_ids": train_ids,
                   "progress": meter, "allow_network": allow_network}
        try:
            if task == "classify" and config.skip_hopeless and needs_base_model(name) and validation and config.endpoint_of(name) is None:
                reason = model_baseline_cannot_win(name, base, list(validation), train=train, config=config, data_config=data_config,
                                                   label_map=label_map, cross_validated=cross_validated, progress=meter)
                if reason is not None:
                    raise BaselineSkipped(reason)
            if task == "classify" and data_config.out_of_scope_label is not None and config.predictions_of(name) is None:
                # (The current system answers out of scope as it does: it has no threshold to choose.)
                result = calibrated_baseline(name, base, records, list(validation or []), **scoring)
            else:
                result = evaluate_baseline(name, base, records, task, **scoring, predictions_read=predictions_read)
        except BaselineSkipped as skip:
            skipped[name] = skip.message
            emit(name, "skipped", {"reason": skip.message})
            continue
        result.settings["code"] = code  # which code scored it: checked before the cached result is reused
        if key is not None:
            path = Path(cache_dir) / f"{name}-{key.settings_hash}-{key.test_fingerprint[:12]}.json"
            result.save(path)
            registry.put_cached_baseline(key, metrics=result.metrics, predictions_path=str(path), run_id=run_id)
        results[name] = result
        _note_cross_validated(name, result, cross_validated)
        emit(name, "done", {"metrics": result.metrics})
    for result in results.values():
        # The verdict's metric (eval.metric) is the run's, not the scores': set here, so a cached result judged by
        # another metric before is judged by this one now.
        result.metrics["primary"] = primary_metric(task, result.metrics, config.metric)
    return Baselines({name: results[name] for name in names if name in results}, skipped=skipped)


def _note_cross_validated(name: str, result: EvalResult, cross_validated: dict[str, float]) -> None:
    score = result.settings.get("cv_accuracy")
    if name in CROSS_VALIDATED and isinstance(score, int | float):
        cross_validated[name] = float(score)


def evaluate_with_baselines(
    model: Any,
    records: Sequence[Record],
    task: str,
    *,
    baselines: Sequence[str],
    train: Sequence[Record],
    config: EvalConfig,
    data_config: DataConfig,
    label_map: LabelMap | None = None,
    zero_shot_prompt: bool = False,
    allow_network: bool = False,
    progress: Progress | None = None,
    on_event: EventFn | None = None,
    validation: Sequence[Record] | None = None,
) -> tuple[EvalResult, dict[str, EvalResult], Any]:
    """``tunelab eval`` with opponents: ``model`` (an ``answering.AnsweringModel``: local or remote), each baseline on
    the same examples, and the verdict.

    The base model (for base and few_shot) is the one under ``model`` (``model.base_model()``; a remote model has
    none, so those are refused). classify labels: ``label_map``, else the model's own, else the training labels
    (else the test labels). Returns (the model's evaluation, the baselines' evaluations, the ``Verdict`` or None).

    Raises:
        ConfigError: for a baseline that does not apply to the task, or needs a base model a remote model lacks.
        DataError: when a baseline that learns has no training records, or for a bad test set.
        ModelError: when the base model cannot be loaded.
    """
    from tunelab.evaluation.compare import compare_with_baselines

    check_baselines(baselines, task, config, train=train, has_base=not model.remote)
    predictions_read: dict = {}  # a predictions file is checked here and scored below: parsed once
    check_predictions(baselines, records, task, config=config, data_config=data_config, predictions_read=predictions_read)
    if task == "classify" and label_map is None:
        if model.label_map is not None:
            label_map = model.label_map
        elif model.remote:
            label_map = names_label_map(sorted({r.label for r in (train or records)}))
        else:
            label_map = LabelMap.for_records(train or records, model.loaded.tokenizer, data_config.out_of_scope_label)
    train_ids = [r.id for r in train] or None
    result = model.evaluate(records, task, config=config, data_config=data_config, label_map=label_map, baseline=zero_shot_prompt,
                            train_ids=train_ids, progress=progress)
    base = model.base_model(allow_network=allow_network) if any(needs_base_model(name) for name in baselines) else None
    opponents = evaluate_baselines(baselines, base, records, task, train=train, config=config, data_config=data_config,
                                   label_map=label_map, train_ids=train_ids, on_event=on_event, progress=progress, validation=validation,
                                   allow_network=allow_network, predictions_read=predictions_read)
    verdict = (compare_with_baselines(opponents, result, seed=config.seed, samples=config.bootstrap_samples, skipped=opponents.skipped)
               if opponents else None)
    return result, opponents, verdict
