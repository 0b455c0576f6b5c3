"""Metrics, computed locally from per-example scores (nothing is loaded from a hub at run time).

Every task stores, per example, what its corpus metrics are made of, so a metric can be recomputed
on any subset of examples: that is what the paired bootstrap in ``compare`` does.

- sft: ROUGE-1/2/L F-measure (rouge-score, stemmed; its tokenizer widened to every script, see
  ``RougeTokenizer``), exact match after normalisation, answer length in words: per example, best over the references. BLEU and chrF (sacrebleu) are corpus metrics;
  each example keeps sacrebleu's sufficient statistics (n-gram matches and totals), whose sums give
  the exact corpus score of any resample. When a test set's answers are data (``answer_kind``: every reference JSON, or
  every one a tool call), also: json_valid, json_exact, json_f1 (F1 of the flattened leaf pairs), or tool_name_accuracy
  and tool_call_exact; absent on plain text.
- classify: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix (scikit-learn),
  expected calibration error over equal-width confidence bins. With an out-of-scope label: accuracy
  is over all queries (an out-of-scope query is right when rejected), plus in-scope accuracy (a
  rejected in-scope query is wrong) and out-of-scope precision/recall/F1 (rejected vs out of scope).
  ECE stays the calibration of the top label's probability on in-scope queries.
- text: perplexity = exp(total NLL / total predicted tokens) and bits per byte = total NLL /
  (ln 2 * UTF-8 bytes), which compares models with different tokenizers. The NLL is of exactly the
  documents' own tokens, the bytes counted (``TEXT_SCORING``).
"""

from __future__ import annotations

import json
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunelab.config import VERDICT_METRICS
from tunelab.data.records import tool_calls_in
from tunelab.errors import ConfigError

ECE_BINS = 15
_ARTICLES = re.compile(r"\b(a|an|the)\b")


@dataclass(frozen=True)
class MetricSpec:
    """One metric of a task: how to compute it on a resample, and which direction is better.

    ``compute(table, indices)`` takes the task's column table (see ``score_table``) and a 2-D array
    of example indices (one resample per row) and returns one value per row.
    """

    name: str
    higher_is_better: bool | None  # None: no better direction (answer length)
    compute: Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]
    # Measured against the model's reference (a preference run's implicit reward): the reference scored as itself (the
    # run's baseline) has no value of it, so ``compare`` does not compare the two on it.
    against_reference: bool = False
    # How a non-inferiority margin (a share, 0.02 for `tunelab promote`) reads on this metric: ``margin x full_scale``
    # on a bounded metric (1 for a proportion: 0.02 is two points of accuracy; 100 for BLEU and chrF, scored 0-100), and
    # ``margin x`` the incumbent's value on an unbounded one (None): an absolute 0.02 of perplexity 12.3 is far inside the
    # noise of any test set and would refuse every new run, while 2% of it (0.25) means the same at any scale
    # (``compare.MetricComparison.allowance``).
    full_scale: float | None = 1.0


# --------------------------------------------------------------------------------------------- sft


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD-style).

    Unicode-aware as MLQA's scorer: NFKC first (a decomposed accent, a full-width digit is the same answer),
    caseless matching, and any Unicode punctuation dropped (’, 。, «») besides SQuAD's ASCII set.
    """
    text = _ARTICLES.sub(" ", _without_punctuation(text))
    return " ".join(text.split())


def _without_punctuation(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in text if ch not in string.punctuation and not unicodedata.category(ch).startswith("P"))


def exact_match(prediction: str, reference: str) -> bool:
    """Whether two answers are the same after ``normalize_answer``.

    When both normalise to nothing (a multiple-choice "A" is an article), their articles are kept: "a" matches
    "A", while an empty answer, or "The", does not.
    """
    left, right = normalize_answer(prediction), normalize_answer(reference)
    if left or right:
        return left == right
    return " ".join(_without_punctuation(prediction).split()) == " ".join(_without_punctuation(reference).split())


_rouge_scorer = None
# Scripts written without spaces between words: each character is a unit of ROUGE (Han ideographs, kana).
_UNSPACED = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F))


def _unspaced(ch: str) -> bool:
    return any(low <= ord(ch) <= high for low, high in _UNSPACED)


class RougeTokenizer:
    """rouge-score's own tokenizer for every script: on ASCII text the same tokens (lower case, any character but a
    letter or digit separates, Porter-stemmed above three letters), so English ROUGE equals rouge-score's.

    rouge-score's keeps only a-z and 0-9: a Cyrillic, Greek or CJK answer had no token and scored 0 however right it
    was, and a Latin word lost its accented letters ("café" read "caf"). Here a word is any run of letters, marks and
    digits (NFKC first, as ``normalize_answer``), each Han or kana character is a word of its own (as sacrebleu's "zh"
    tokenizer and Chinese ROUGE take them), and only ASCII words are stemmed (Porter's rules are English).
    """

    def __init__(self) -> None:
        from nltk.stem import porter

        self._stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text).lower()
        spaced = "".join(f" {ch} " if _unspaced(ch) else ch if unicodedata.category(ch)[0] in "LMN" else " " for ch in text)
        return [self._stemmer.stem(word) if len(word) > 3 and word.isascii() else word for word in spaced.split()]


def _rouge():
    global _rouge_scorer
    if _rouge_scorer is None:
        from rouge_score import rouge_scorer

        _rouge_scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=RougeTokenizer())
    return _rouge_scorer


def _bleu():
    from sacrebleu.metrics import BLEU

    # Corpus BLEU with sacrebleu's defaults (13a tokenizer, exponential smoothing): comparable to papers.
    return BLEU()


def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


def sft_example_scores(prediction: str, references: Sequence[str], kind: str | None = None) -> dict[str, Any]:
    """Per-example sft scores: ROUGE F-measures and exact match (best over references), length; with ``kind``
    (``answer_kind`` of the whole test set) the JSON or tool-call scores too (``structured_scores``).

    Raises:
        ValueError: when ``references`` is empty.
    """
    if not references:
        raise ValueError("an sft example needs at least one reference answer")
    scorer = _rouge()
    best = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for reference in references:
        scores = scorer.score(reference, prediction)
        for key in best:
            best[key] = max(best[key], scores[key].fmeasure)
    exact = float(any(exact_match(prediction, reference) for reference in references))
    return {**best, "exact_match": exact, "length": float(len(prediction.split())), **structured_scores(prediction, references, kind)}


# ----------------------------------------------------------------------------- sft answers that are data

# An sft test set whose answers are data (an order as JSON, a function call) is judged on the data: ROUGE-L gives
# {"qty": 2} against {"qty": 20} nearly 1. Which kind a test set is, is decided once for all its examples
# (``answer_kind``), so every opponent scored on it has the same metrics; a test set of neither kind has none of these
# (never a misleading 0).
JSON_ANSWERS, TOOL_CALL_ANSWERS = "json", "tool_calls"
STRUCTURED_METRICS = {
    JSON_ANSWERS: ("json_valid", "json_exact", "json_f1"),
    TOOL_CALL_ANSWERS: ("tool_name_accuracy", "tool_call_exact"),
}
# One Markdown code fence around the whole text, with or without a language (```json).
_FENCE = re.compile(r"\A```[\w+-]*[ \t]*\n(.*?)\n?[ \t]*```\Z", re.DOTALL)


def parse_json(text: str) -> tuple[bool, Any]:
    """``text`` as JSON data: (True, the object or array), else (False, None).

    The rule for references and answers alike: surrounding whitespace and one code fence around the whole text
    (```json ... ``` or ``` ... ```, as chat models often wrap JSON) are dropped, and what is left must parse as a JSON
    object or array. A bare number or string is no record of fields: (False, None).
    """
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return False, None
    return (True, value) if isinstance(value, dict | list) else (False, None)


def _leaf(value: Any) -> tuple[str, Any]:
    # Typed, so true is not 1 and "2" is not 2; a whole float is its integer (2.0 == 2, as JSON does not tell them apart).
    if isinstance(value, bool):
        return "bool", value
    if isinstance(value, int | float):
        return "number", int(value) if isinstance(value, float) and value.is_integer() else value
    if isinstance(value, str):
        return "string", value
    if value is None:
        return "null", None
    # An empty object or array is a leaf of its own: {"items": []} and {"items": {}} differ from {}.
    return ("object" if isinstance(value, dict) else "array"), None


def json_leaves(value: Any, path: tuple = ()) -> set[tuple[tuple, tuple[str, Any]]]:
    """The flattened (path, value) pairs of JSON ``value``: a path is the keys and array positions down to a leaf.

    Keys are a set, so their order never matters; an array's items are matched by position (a list of items in
    another order is another answer).
    """
    if isinstance(value, dict) and value:
        return {leaf for key, item in value.items() for leaf in json_leaves(item, (*path, ("key", key)))}
    if isinstance(value, list) and value:
        return {leaf for index, item in enumerate(value) for leaf in json_leaves(item, (*path, ("index", index)))}
    return {(path, _leaf(value))}


def json_scores(prediction: str, reference: str) -> dict[str, float]:
    """One answer against one JSON reference: whether it parses (``parse_json``), whether it is the same data, and
    the F1 of its leaf pairs (``json_leaves``) against the reference's; an answer that does not parse scores 0."""
    valid, answer = parse_json(prediction)
    _, expected = parse_json(reference)
    if not valid:
        return {"json_valid": 0.0, "json_exact": 0.0, "json_f1": 0.0}
    got, wanted = json_leaves(answer), json_leaves(expected)
    return {"json_valid": 1.0, "json_exact": float(got == wanted), "json_f1": 2 * len(got & wanted) / (len(got) + len(wanted))}


def _call_key(call: dict[str, Any]) -> tuple[str, frozenset]:
    return call["name"], frozenset(json_leaves(call["arguments"]))


def tool_call_scores(prediction: str, reference: str) -> dict[str, float]:
    """One answer against one reference that calls tools, both read by ``records.tool_calls_in``: whether it calls the
    same functions (names, as many times each, in any order), and whether each with the same arguments (equal as
    JSON: ``json_leaves``). An answer with no call scores 0."""
    got, wanted = tool_calls_in(prediction), tool_calls_in(reference)
    if not got:
        return {"tool_name_accuracy": 0.0, "tool_call_exact": 0.0}
    names = Counter(call["name"] for call in got) == Counter(call["name"] for call in wanted)
    exact = Counter(map(_call_key, got)) == Counter(map(_call_key, wanted))
    return {"tool_name_accuracy": float(names), "tool_call_exact": float(exact)}


def answer_kind(references: Sequence[Sequence[str]]) -> str | None:
    """Whether a test set's answers are data: ``TOOL_CALL_ANSWERS`` when every reference calls at least one tool,
    ``JSON_ANSWERS`` when every reference is JSON (``parse_json``), else None (plain text: no structured metrics)."""
    every = [reference for refs in references for reference in refs]
    if not every:
        return None
    if all(tool_calls_in(reference) for reference in every):
        return TOOL_CALL_ANSWERS
    if all(parse_json(reference)[0] for reference in every):
        return JSON_ANSWERS
    return None


def structured_scores(prediction: str, references: Sequence[str], kind: str | None) -> dict[str, float]:
    """The per-example scores of ``kind`` (``answer_kind``), each the best over the references; none for None."""
    if kind is None:
        return {}
    score = json_scores if kind == JSON_ANSWERS else tool_call_scores
    every = [score(prediction, reference) for reference in references]
    return {name: max(scores[name] for scores in every) for name in STRUCTURED_METRICS[kind]}


def corpus_statistics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, list[list[float]]]:
    """sacrebleu's per-sentence sufficient statistics for BLEU and chrF (variable reference counts)."""
    most = max(len(refs) for refs in references)
    # sacrebleu wants reference *streams*; a missing reference in a stream is None.
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(most)]
    bleu = _bleu()._extract_corpus_statistics(list(predictions), streams)
    chrf = _chrf()._extract_corpus_statistics(list(predictions), streams)
    return {"bleu": [list(map(float, s)) for s in bleu], "chrf": [list(map(float, s)) for s in chrf]}


def bleu_from_stats(stats: np.ndarray) -> float:
    """Corpus BLEU (0-100) from summed sentence statistics."""
    return float(_bleu()._compute_score_from_stats([float(x) for x in stats]).score)


def chrf_from_stats(stats: np.ndarray) -> float:
    """Corpus chrF (0-100) from summed sentence statistics."""
    return float(_chrf()._compute_score_from_stats([float(x) for x in stats]).score)


def _mean_of(column: str) -> Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]:
    def compute(table: dict[str, np.ndarray], indices: np.ndarray) -> np.ndarray:
        return table[column][indices].mean(axis=1)

    return compute


def _corpus_of(column: str, from_stats: Callable[[np.ndarray], float]) -> Callable[..., np.ndarray]:
    def compute(table: dict[str, np.ndarray], indices: np.ndarray) -> np.ndarray:
        stats = table[column]
        return np.array([from_stats(stats[row].sum(axis=0)) for row in indices])

    return compute


# ---------------------------------------------------------------------------------------- classify


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the |accuracy - mean confidence| of each equal-width confidence bin, weighted by its size."""
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    if confidence.size == 0:
        return 0.0
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 goes to bin 0.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(total / confidence.size)


def wilson_interval(successes: float, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (good at small n and near 0 or 1): the one interval of a win
    rate (review, where a tie counts as half a success) and of a live accuracy (monitor). statsmodels computes it.

    With nothing observed (``total`` 0) every proportion is possible: (0, 1).
    """
    if total <= 0:
        return 0.0, 1.0
    # Imported here: it pulls in pandas (about a second), which only these two readings need.
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(successes, total, alpha=1 - confidence, method="wilson")
    # At 0 or n successes the Wilson bound is exactly 0 or 1; the float formula left 0.9999999999999999.
    if successes <= 0:
        low = 0.0
    if successes >= total:
        high = 1.0
    return max(0.0, float(low)), min(1.0, float(high))


def difference_interval(successes1: float, total1: int, successes2: float, total2: int, confidence: float = 0.95) -> tuple[float, float]:
    """The interval of the difference of two independent proportions, first minus second: Newcomb's hybrid score
    interval, built from the two Wilson intervals (``wilson_interval``): inside [-1, 1], and defined at 0 or n successes
    (where statsmodels' "score" method fails to converge); one of the intervals Fagerland et al. (2015) recommend.

    A monitored live accuracy against the test accuracy is such a pair: the test set is a sample too.
    """
    if total1 <= 0 or total2 <= 0:
        return -1.0, 1.0
    from statsmodels.stats.proportion import confint_proportions_2indep

    low, high = confint_proportions_2indep(successes1, total1, successes2, total2, method="newcomb", compare="diff", alpha=1 - confidence)
    return max(-1.0, float(low)), min(1.0, float(high))


def fit_temperature(logits: np.ndarray, targets: Sequence[int]) -> float:
    """The temperature T that minimises the negative log-likelihood of softmax(logits / T) on these rows.

    Temperature scaling (Guo et al. 2017): one positive scalar, so the argmax (every answer) is unchanged;
    searched on log T in [log 0.05, log 20]. When every row is answered right (a few dozen easy validation queries
    often are) the likelihood has no optimum: it rises for ever as T -> 0, and the fit ran to the bound, every later
    answer "100 %" however often it is wrong (and a probability threshold for out-of-scope requests had nothing left
    to tell apart). Then the targets are smoothed as Platt (1999) smooths his for that case: each row's own label
    (n + 1) / (n + 2) of the mass (Laplace's rule of succession: what n right answers in a row support), the other
    labels the rest in equal shares, which keeps the optimum finite. Rows with an error keep the plain fit.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=int)
    if logits.size == 0:
        return 1.0
    rows, labels = logits.shape
    soft = np.zeros((rows, labels))
    soft[np.arange(rows), targets] = 1.0
    if labels > 1 and bool((logits.argmax(axis=1) == targets).all()):
        soft[:] = 1.0 / ((rows + 2) * (labels - 1))
        soft[np.arange(rows), targets] = (rows + 1) / (rows + 2)

    def loss(log_t: float) -> float:
        return float(-(soft * log_softmax(logits / np.exp(log_t), axis=1)).sum(axis=1).mean())

    found = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    best = float(np.exp(found.x))
    return best if loss(np.log(best)) <= loss(0.0) else 1.0


def choose_threshold(
    confidence: Sequence[float], correct: Sequence[float], out_of_scope: Sequence[float], answered_out: Sequence[bool] | None = None,
) -> tuple[float, float]:
    """The out-of-scope threshold chosen on validation queries, and the accuracy it reaches there.

    The rule (``tunelab.data.labels.OUT_OF_SCOPE_RULE``): a query is rejected (answered out of
    scope) when its score (``confidence``: the top label's probability, or another out-of-scope score
    such as a cosine similarity) is below t. Candidates are 0 or the lowest score when it is negative
    (reject nothing), the midpoints between consecutive distinct scores, and 1 or the highest score
    above it; t maximises the accuracy over all
    queries (in-scope: top label correct and not rejected; out-of-scope: rejected); ties go to the
    lowest t, so a threshold never rejects more than the data asks for. ``correct`` is whether the
    top label is right (in-scope queries), ``out_of_scope`` whether the query is out of scope.
    ``answered_out``: whether the model's own answer already is the out-of-scope label (a remote model offered it in
    its prompt): such a query is rejected whatever t.
    """
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    outside = np.asarray(out_of_scope, dtype=bool)
    already = np.asarray(answered_out, dtype=bool) if answered_out is not None else np.zeros(confidence.size, dtype=bool)
    if confidence.size == 0:
        return 0.0, 0.0
    distinct = np.unique(confidence)
    candidates = np.concatenate([[min(0.0, distinct[0])], (distinct[:-1] + distinct[1:]) / 2, [max(1.0, distinct[-1])]])
    accepted = confidence[None, :] >= candidates[:, None]
    rejected = ~accepted | already[None, :]
    right = np.where(outside[None, :], rejected, ~rejected & correct[None, :])
    accuracy = right.mean(axis=1)
    best = int(np.argmax(accuracy))  # the first maximum: the lowest threshold among equals
    return float(candidates[best]), float(accuracy[best])


def out_of_scope_values(correct: np.ndarray, outside: np.ndarray, rejected: np.ndarray) -> dict[str, float]:
    """In-scope accuracy and out-of-scope precision/recall/F1 of one set of queries (0 where undefined)."""
    correct, outside, rejected = (np.asarray(a, dtype=float) for a in (correct, outside, rejected))
    everything = np.arange(correct.size)[None, :]
    table = {"correct": correct, "out_of_scope": outside, "rejected": rejected}
    return {spec.name: float(spec.compute(table, everything)[0]) for spec in OUT_OF_SCOPE_METRICS}


def classify_metrics(
    references: Sequence[str],
    predictions: Sequence[str],
    confidences: Sequence[float],
    labels: Sequence[str],
    out_of_scope_label: str | None = None,
    label_correct: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class P/R/F1, confusion matrix and ECE (+ the out-of-scope metrics).

    ``labels`` are the classes the model can answer; a reference outside them (a label the model
    was never trained on) counts as wrong and gets its own row in the confusion matrix, and a prediction
    outside them (a remote model's answer that names no category, ``remote.UNPARSED``) its own column. With
    ``out_of_scope_label`` that label is one more class, and ``label_correct`` (whether the top label,
    before the threshold, is right) gives ECE on the in-scope queries.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    answerable = list(labels) + ([out_of_scope_label] if out_of_scope_label is not None and out_of_scope_label not in labels else [])
    classes = answerable + sorted({r for r in references if r not in set(answerable)})
    # confusion_matrix drops a row whose prediction is no class: every prediction is one, so each query is counted.
    classes += sorted({p for p in predictions if p not in set(classes)})
    correct = np.array([r == p for r, p in zip(references, predictions, strict=True)], dtype=float)
    outside = np.array([r == out_of_scope_label for r in references], dtype=float) if out_of_scope_label is not None else np.zeros(len(references))
    in_scope = outside == 0
    ece_correct = np.asarray(label_correct, dtype=float) if label_correct is not None else correct
    precision, recall, f1, support = precision_recall_fscore_support(
        references, predictions, labels=classes, zero_division=0
    )
    present = sorted(set(references) | set(predictions), key=classes.index)
    macro = precision_recall_fscore_support(references, predictions, labels=present, average="macro", zero_division=0)
    matrix = confusion_matrix(references, predictions, labels=classes)
    metrics = {
        "accuracy": float(correct.mean()) if correct.size else 0.0,
        "macro_f1": float(macro[2]),
        "ece": expected_calibration_error(np.asarray(confidences, dtype=float)[in_scope], ece_correct[in_scope]),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": {"labels": classes, "matrix": matrix.tolist()},
    }
    if out_of_scope_label is not None:
        rejected = np.array([p == out_of_scope_label for p in predictions], dtype=float)
        metrics.update(out_of_scope_values(correct, outside, rejected))
        metrics["out_of_scope_queries"] = int(outside.sum())
    return metrics


def _macro_f1_resampled(table: dict[str, np.ndarray], indices: np.ndarray) -> np.ndarray:
    # Vectorised macro-F1 over the classes present in each resample (as sklearn's labels=present).
    reference, prediction = table["reference_index"], table["prediction_index"]
    classes = int(max(reference.max(), prediction.max())) + 1
    values = np.empty(len(indices))
    for row, sample in enumerate(indices):
        ref, pred = reference[sample], prediction[sample]
        tp = np.bincount(ref[ref == pred], minlength=classes).astype(float)
        ref_count = np.bincount(ref, minlength=classes).astype(float)
        pred_count = np.bincount(pred, minlength=classes).astype(float)
        present = (ref_count + pred_count) > 0
        denominator = ref_count + pred_count
        f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
        values[row] = f1[present].mean()
    return values


def _ece_resampled(table: dict[str, np.ndarray], indices: np.ndarray) -> np.ndarray:
    # On in-scope queries, of the top label before any out-of-scope threshold (as classify_metrics).
    correct = table.get("label_correct", table["correct"])
    if np.isnan(table["confidence"]).any():  # answers given without a probability (a predictions file): no ECE
        return np.full(len(indices), np.nan)
    inside = table["out_of_scope"] == 0 if "out_of_scope" in table else np.ones(len(correct), dtype=bool)
    return np.array([expected_calibration_error(table["confidence"][s[inside[s]]], correct[s[inside[s]]]) for s in indices])


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=float), where=denominator > 0)


def _in_scope_accuracy(table: dict[str, np.ndarray], indices: np.ndarray) -> np.ndarray:
    inside = 1.0 - table["out_of_scope"][indices]
    return _ratio((table["correct"][indices] * inside).sum(axis=1), inside.sum(axis=1))


def _out_of_scope_counts(table: dict[str, np.ndarray], indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    outside, rejected = table["out_of_scope"][indices], table["rejected"][indices]
    return (outside * rejected).sum(axis=1), rejected.sum(axis=1), outside.sum(axis=1)


def _out_of_scope_precision(table: dict[str, np.ndarray], indices: np.ndarray) -> np.ndarray:
    hits, rejected, _ = _out_of_scope_counts(table, indices)
    return _ratio(hits, rejected)


def _out_of_scope_recall(table: dict[str, np.ndarray], indices: np.ndarray) -> np.ndarray:
    hits, _, outside = _out_of_scope_counts(table, indices)
    return _ratio(hits, outside)


def _out_of_scope_f1(table: dict[str, np.ndarray], indices: np.ndarray) -> np.ndarray:
    hits, rejected, outside = _out_of_scope_counts(table, indices)
    return _ratio(2 * hits, rejected + outside)


# Metrics of a classify evaluation with an out-of-scope label (its rows score "out_of_scope" and "rejected").
OUT_OF_SCOPE_METRICS = [
    MetricSpec("in_scope_accuracy", True, _in_scope_accuracy),
    MetricSpec("out_of_scope_precision", True, _out_of_scope_precision),
    MetricSpec("out_of_scope_recall", True, _out_of_scope_recall),
    MetricSpec("out_of_scope_f1", True, _out_of_scope_f1),
]


# -------------------------------------------------------------------------------------------- text


# Which tokens a text evaluation's NLL covers, stored in its settings ("text_scoring"); evaluations by different rules
# are never compared (``compare.compare_evaluations``). 1 (none stored): every token after the document's first, and the
# appended EOS: with no BOS the first token's bytes were counted, never predicted, and the EOS predicted with no byte.
# 2: exactly the document's own tokens, each after the one before it or, the first, after the BOS (else the EOS), as
# lm-evaluation-harness's rolling loglikelihood: bits per byte is then the NLL of the very bytes it counts.
TEXT_SCORING = 2


def text_metrics(nll_sum: float, tokens: int, byte_count: int) -> dict[str, float]:
    """Perplexity, mean NLL per token (nats) and bits per byte from summed NLL, tokens and bytes."""
    nll_per_token = nll_sum / tokens if tokens else float("nan")
    return {
        "perplexity": math.exp(nll_per_token) if tokens else float("nan"),
        "nll_per_token": nll_per_token,
        "bits_per_byte": nll_sum / (math.log(2) * byte_count) if byte_count else float("nan"),
        "tokens": float(tokens),
        "bytes": float(byte_count),
    }


def _perplexity_resampled(table: dict[str, np.ndarray], indices: np.ndarray) -> np.ndarray:
    return np.exp(table["nll"][indices].sum(axis=1) / table["tokens"][indices].sum(axis=1))


def _bits_per_byte_resampled(table: dict[str, np.ndarray], indices: np.ndarray) -> np.ndarray:
    return table["nll"][indices].sum(axis=1) / (math.log(2) * table["bytes"][indices].sum(axis=1))


# ------------------------------------------------------------------------------------ per task API

# preference: the one rule that ranks pairs the same way before and after (the model's own per-token likelihood); the
# implicit reward is zero for the reference, so any step in the trained direction would "beat" it (evaluation/preference.py).
PRIMARY_METRIC = {"classify": "accuracy", "sft": "rougeL", "text": "perplexity", "preference": "likelihood_accuracy"}


def likelihood_margin(scores: dict[str, Any]) -> float:
    """A preference pair's verdict rule (``likelihood_accuracy``): the model's mean log-probability per answer token of
    the chosen answer minus that of the rejected one; positive where the model prefers the chosen answer."""
    return scores["chosen_log_prob"] / scores["chosen_tokens"] - scores["rejected_log_prob"] / scores["rejected_tokens"]


TASK_METRICS: dict[str, list[MetricSpec]] = {
    "sft": [
        MetricSpec("rouge1", True, _mean_of("rouge1")),
        MetricSpec("rouge2", True, _mean_of("rouge2")),
        MetricSpec("rougeL", True, _mean_of("rougeL")),
        MetricSpec("bleu", True, _corpus_of("bleu_stats", bleu_from_stats), full_scale=100.0),
        MetricSpec("chrf", True, _corpus_of("chrf_stats", chrf_from_stats), full_scale=100.0),
        MetricSpec("exact_match", True, _mean_of("exact_match")),
        MetricSpec("length", None, _mean_of("length"), full_scale=None),
    ],
    "classify": [
        MetricSpec("accuracy", True, _mean_of("correct")),
        MetricSpec("macro_f1", True, _macro_f1_resampled),
        MetricSpec("ece", False, _ece_resampled),
    ],
    "text": [
        MetricSpec("perplexity", False, _perplexity_resampled, full_scale=None),
        MetricSpec("bits_per_byte", False, _bits_per_byte_resampled, full_scale=None),
    ],
    # preference: see evaluation/preference.py (before: the reference's own per-token likelihood ranks the pair).
    "preference": [
        MetricSpec("preference_accuracy", True, _mean_of("correct"), against_reference=True),
        MetricSpec("reward_margin", True, _mean_of("margin"), against_reference=True, full_scale=None),
        MetricSpec("likelihood_accuracy", True, _mean_of("likelihood_correct")),
        MetricSpec("log_ratio_chosen", None, _mean_of("log_ratio_chosen"), against_reference=True, full_scale=None),
        MetricSpec("log_ratio_rejected", None, _mean_of("log_ratio_rejected"), against_reference=True, full_scale=None),
    ],
}


# The metrics of an sft test set whose answers are data (``answer_kind``): shares of examples, in [0, 1], so a
# non-inferiority margin reads on them as on accuracy (full_scale 1).
STRUCTURED_SPECS = [MetricSpec(name, True, _mean_of(name)) for names in STRUCTURED_METRICS.values() for name in names]


def primary_metric(task: str, metrics: dict[str, Any], configured: str | None = None) -> str:
    """The metric an evaluation's verdict is on (stored as its ``metrics["primary"]``, which every comparison, sweep,
    promotion and report reads): ``eval.metric`` when set, else the task's default (``PRIMARY_METRIC``).

    Raises:
        ConfigError: when the configured metric was not measured on this test set (a JSON metric on references that
            are not JSON).
    """
    name = configured or PRIMARY_METRIC[task]
    if name in metrics:
        return name
    if name not in VERDICT_METRICS.get(task, ()):
        raise ConfigError(f"eval.metric {name!r} is not a metric of task {task}: choose from {', '.join(VERDICT_METRICS.get(task, ()))}")
    kind = next((kind for kind, names in STRUCTURED_METRICS.items() if name in names), None)
    needs = {JSON_ANSWERS: "every test reference to be JSON (an object or array, a ```json fence allowed)",
             TOOL_CALL_ANSWERS: "every test reference to call a tool (an assistant turn with tool_calls)"}.get(kind, "an out-of-scope label (data.out_of_scope_label)")
    measured = [known for known in VERDICT_METRICS[task] if known in metrics]
    raise ConfigError(f"eval.metric {name} needs {needs}, and this test set's are not: set eval.metric to one of {', '.join(measured)}")


def score_table(task: str, rows: Sequence[dict[str, Any]], labels: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Columns of per-example scores that the task's MetricSpecs compute on.

    ``labels`` (classify) fixes the class indices so two evaluations share one numbering.
    """
    if task == "sft":
        table = {key: np.array([row["scores"][key] for row in rows], dtype=float) for key in ("rouge1", "rouge2", "rougeL", "exact_match", "length")}
        table["bleu_stats"] = np.array([row["scores"]["bleu_stats"] for row in rows], dtype=float)
        table["chrf_stats"] = np.array([row["scores"]["chrf_stats"] for row in rows], dtype=float)
        # Only where every example has them (a test set of answers that are data, scored by this tunelab).
        for spec in STRUCTURED_SPECS:
            if rows and all(spec.name in row["scores"] for row in rows):
                table[spec.name] = np.array([row["scores"][spec.name] for row in rows], dtype=float)
        return table
    if task == "classify":
        names = list(labels or [])
        for row in rows:
            for value in (row["reference"], row["prediction"]):
                if value not in names:
                    names.append(value)
        position = {name: i for i, name in enumerate(names)}
        table = {
            "correct": np.array([row["scores"]["correct"] for row in rows], dtype=float),
            "confidence": np.array([row["scores"]["confidence"] for row in rows], dtype=float),
            "reference_index": np.array([position[row["reference"]] for row in rows], dtype=int),
            "prediction_index": np.array([position[row["prediction"]] for row in rows], dtype=int),
        }
        if rows and all("out_of_scope" in row["scores"] for row in rows):
            for key in ("out_of_scope", "rejected", "label_correct"):
                table[key] = np.array([row["scores"][key] for row in rows], dtype=float)
        return table
    if task == "text":
        return {key: np.array([row["scores"][key] for row in rows], dtype=float) for key in ("nll", "tokens", "bytes")}
    if task == "preference":
        columns = ("correct", "margin", "likelihood_correct", "log_ratio_chosen", "log_ratio_rejected")
        return {key: np.array([row["scores"][key] for row in rows], dtype=float) for key in columns}
    raise ValueError(f"no metrics for task {task!r}")


def metric_specs(task: str, *tables: dict[str, np.ndarray]) -> list[MetricSpec]:
    """The MetricSpecs to compute on these tables: the task's, plus the out-of-scope ones (classify) and those of answers
    that are data (sft, ``STRUCTURED_SPECS``) when every table has them."""
    specs = list(TASK_METRICS[task])
    if task == "classify" and tables and all("out_of_scope" in table for table in tables):
        specs += OUT_OF_SCOPE_METRICS
    if task == "sft" and tables:
        specs += [spec for spec in STRUCTURED_SPECS if all(spec.name in table for table in tables)]
    return specs


def metric_values(task: str, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Every MetricSpec of ``task`` on all of ``rows`` (the same code path the bootstrap uses)."""
    table = score_table(task, rows)
    everything = np.arange(len(rows))[None, :]
    return {spec.name: float(spec.compute(table, everything)[0]) for spec in metric_specs(task, table)}
