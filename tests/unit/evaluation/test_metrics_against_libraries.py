"""Every metric tunelab reports, against an independent implementation (scikit-learn, scipy, sacrebleu, rouge-score,
torch) on hand-built and random inputs: what a user recomputing a number with their own library would get."""

import math
import re
import string
import warnings
from collections import Counter

import numpy as np
import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer, tokenizers
from scipy.stats import bootstrap
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from tunelab.evaluation.compare import compare_evaluations, compare_with_baselines
from tunelab.evaluation.metrics import (
    ECE_BINS,
    RougeTokenizer,
    classify_metrics,
    corpus_statistics,
    exact_match,
    expected_calibration_error,
    fit_temperature,
    metric_values,
    sft_example_scores,
)
from tunelab.evaluation.result import EvalResult


def _result(name, task, scores, labels=None, references=None, predictions=None):
    rows = [{"id": f"x{i}", "source": "", "prompt": "", "reference": references[i] if references else "",
             "prediction": predictions[i] if predictions else "", "scores": s} for i, s in enumerate(scores)]
    return EvalResult(task, name, len(rows), {}, rows, labels=labels)


# ---------------------------------------------------------------------------------------- classify


def _random_labels(rng, n, answerable):
    # References from a subset of the classes (some never occur), predictions from all: a label predicted but never
    # true, and one true but never predicted (macro-F1's zero divisions), happen often.
    references = [str(x) for x in rng.choice(answerable[: rng.integers(1, len(answerable) + 1)], n)]
    predictions = [str(x) for x in rng.choice(answerable, n)]
    return references, predictions


@pytest.mark.parametrize("seed", range(5))
def test_accuracy_macro_f1_and_per_class_scores_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = ["a", "b", "c", "d"]
    for _ in range(20):
        n = int(rng.integers(1, 15))
        references, predictions = _random_labels(rng, n, labels)
        metrics = classify_metrics(references, predictions, [0.5] * n, labels)
        assert metrics["accuracy"] == pytest.approx(accuracy_score(references, predictions))
        # sklearn's default: the macro average over the labels in either list, an undefined F1 counted 0.
        assert metrics["macro_f1"] == pytest.approx(f1_score(references, predictions, average="macro", zero_division=0))
        p, r, f, s = precision_recall_fscore_support(references, predictions, labels=labels, zero_division=0)
        for i, label in enumerate(labels):
            assert metrics["per_class"][label] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
        # The bootstrap's own code path (one resample: every row) gives the same two numbers.
        rows = [{"reference": x, "prediction": y, "scores": {"correct": float(x == y), "confidence": 0.5}} for x, y in zip(references, predictions, strict=True)]
        values = metric_values("classify", rows)
        assert (values["accuracy"], values["macro_f1"]) == pytest.approx((metrics["accuracy"], metrics["macro_f1"]))


def test_macro_f1_of_one_class_only_and_of_a_label_never_predicted():
    assert classify_metrics(["a"] * 4, ["a"] * 4, [0.9] * 4, ["a", "b"])["macro_f1"] == pytest.approx(f1_score(["a"] * 4, ["a"] * 4, average="macro"))
    references, predictions = ["a", "a", "b", "b"], ["a", "a", "a", "a"]  # b is never predicted: its F1 is 0
    expected = f1_score(references, predictions, average="macro", zero_division=0)
    assert expected == pytest.approx((2 / 3 + 0) / 2)
    assert classify_metrics(references, predictions, [0.9] * 4, ["a", "b"])["macro_f1"] == pytest.approx(expected)


def _ece_from_sklearn(confidence, correct, bins=ECE_BINS):
    # sklearn's reliability diagram (uniform bins, a confidence on an edge in the lower bin) with each bin's size
    # counted the way calibration_curve assigns it.
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0 + 1e-8, bins + 1)
    sizes = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=bins)
    sizes = sizes[sizes > 0]
    return float((sizes * np.abs(accuracy - mean_confidence)).sum() / len(confidence))


def test_ece_equals_sklearns_reliability_bins_on_exact_edges_and_random_confidences():
    rng = np.random.default_rng(0)
    on_edges = np.array([k / ECE_BINS for k in range(1, ECE_BINS + 1)] * 3)  # every confidence exactly on a bin edge
    for confidence in (on_edges, rng.uniform(0.3, 1.0, 200), np.round(rng.uniform(0, 1, 100), 1)):
        correct = (rng.random(confidence.size) < confidence).astype(int)
        correct[:2] = [0, 1]  # calibration_curve wants both classes
        assert expected_calibration_error(confidence, correct) == pytest.approx(_ece_from_sklearn(confidence, correct), abs=1e-12)


# --------------------------------------------------------------------------------------------- sft

_WORDS = ["the", "cats", "cat", "running", "ran", "quickly", "quick", "jumps", "jumped", "over", "lazy", "dogs", "a",
          "It's", "U.S.", "e-mail", "don't", "42", "3.14", "(note)", "well-known", "generalization", "generalize"]


def _sentence(rng):
    return " ".join(str(w) for w in rng.choice(_WORDS, int(rng.integers(0, 9))))


def test_rouge_on_english_equals_rouge_score_and_its_multi_reference_choice():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rng = np.random.default_rng(0)
    for _ in range(60):
        prediction, references = _sentence(rng), [_sentence(rng) for _ in range(int(rng.integers(1, 4)))]
        ours = sft_example_scores(prediction, references)
        library = scorer.score_multi(references, prediction)
        assert {key: ours[key] for key in library} == pytest.approx({key: value.fmeasure for key, value in library.items()})


def test_rouge_tokens_of_any_ascii_text_are_rouge_scores_own():
    library = tokenizers.DefaultTokenizer(use_stemmer=True)
    rng = np.random.default_rng(2)
    alphabet = list(string.printable) + ["running", "generalization", "CATS", "don't"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet, int(rng.integers(0, 40))))
        assert RougeTokenizer().tokenize(text) == library.tokenize(text)


@pytest.mark.parametrize("answer", ["北京是中国的首都", "Москва — столица России", "Η Αθήνα είναι πόλη", "東京は日本の首都です", "서울은 한국의 수도"])
def test_a_non_latin_answer_identical_to_its_reference_scores_full_rouge(answer):
    # rouge-score's own tokenizer keeps only a-z and 0-9: every Cyrillic, Greek or CJK answer had ROUGE 0 however right
    # it was, and sft's primary metric could tell no model from another on such a test set.
    scores = sft_example_scores(answer, [answer])
    assert (scores["rouge1"], scores["rouge2"], scores["rougeL"]) == (1.0, 1.0, 1.0)


def _f1(hits, predicted, reference):
    return 0.0 if hits == 0 else 2 * hits / (predicted + reference)


def _lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_chinese_rouge_counts_characters_as_words_and_cyrillic_rouge_counts_words():
    # Chinese is written without spaces: each character is a unit, as sacrebleu's "zh" tokenizer and the usual
    # Chinese ROUGE (LCSTS) take it. Hand computation on those units.
    prediction, reference = "北京是中国首都", "北京是中国的首都"
    p, r = list(prediction), list(reference)
    unigrams = sum((Counter(p) & Counter(r)).values())
    bigrams = sum((Counter(zip(p, p[1:], strict=False)) & Counter(zip(r, r[1:], strict=False))).values())
    scores = sft_example_scores(prediction, [reference])
    assert scores["rouge1"] == pytest.approx(_f1(unigrams, len(p), len(r)))
    assert scores["rouge2"] == pytest.approx(_f1(bigrams, len(p) - 1, len(r) - 1))
    assert scores["rougeL"] == pytest.approx(_f1(_lcs(p, r), len(p), len(r)))
    # Words of a spaced script stay words; punctuation (the dash) separates; case does not matter.
    scores = sft_example_scores("москва столица", ["Москва — столица России"])
    assert scores["rouge1"] == pytest.approx(_f1(2, 2, 3)) and scores["rougeL"] == pytest.approx(_f1(2, 2, 3))


def test_corpus_bleu_and_chrf_equal_sacrebleu_on_unicode_cjk_and_empty_predictions():
    predictions = ["北京是中国的首都", "", "Москва — столица России", "naïve café résumé", "the cat sat on the mat"]
    references = [["北京是中国首都"], ["空的"], ["Москва столица"], ["naive cafe resume"], ["the cat is on the mat"]]
    rows = []
    for prediction, refs, bleu, chrf in zip(predictions, references, *corpus_statistics(predictions, references).values(), strict=True):
        rows.append({"scores": {**sft_example_scores(prediction, refs), "bleu_stats": bleu, "chrf_stats": chrf}})
    values = metric_values("sft", rows)
    stream = [[r[0] for r in references]]
    assert values["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, stream).score)
    assert values["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, stream).score)


def _squad_normalize(text):
    # The official SQuAD v1.1 evaluation script's normalize_answer, as published.
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def test_exact_match_equals_squads_on_english_answers():
    rng = np.random.default_rng(1)
    for _ in range(200):
        prediction, reference = _sentence(rng), _sentence(rng)
        if rng.random() < 0.3:
            reference = prediction.upper() + "."
        expected = _squad_normalize(prediction) == _squad_normalize(reference)
        if not _squad_normalize(prediction) and not _squad_normalize(reference):
            continue  # tunelab's documented departure: an empty answer never matches a bare article ("A")
        assert exact_match(prediction, reference) == expected


# -------------------------------------------------------------------------------------------- text


def test_perplexity_weights_tokens_not_documents_and_bits_count_utf8_bytes():
    # Documents of very different lengths: corpus perplexity is exp(mean NLL over all predicted tokens), as torch's
    # cross-entropy over the concatenated tokens gives it, not the mean of per-document perplexities.
    torch.manual_seed(0)
    texts = ["短", "Größe ändern", "a much longer English document " * 20]
    lengths = [1, 12, 150]
    logits = [torch.randn(n, 50) for n in lengths]
    targets = [torch.randint(0, 50, (n,)) for n in lengths]
    rows = []
    for text, x, y in zip(texts, logits, targets, strict=True):
        nll = torch.nn.functional.cross_entropy(x, y, reduction="sum").item()
        rows.append({"scores": {"nll": nll, "tokens": len(y), "bytes": len(text.encode("utf-8"))}})
    values = metric_values("text", rows)
    everything = torch.nn.functional.cross_entropy(torch.cat(logits), torch.cat(targets)).item()
    assert values["perplexity"] == pytest.approx(math.exp(everything))
    assert values["perplexity"] != pytest.approx(np.mean([math.exp(r["scores"]["nll"] / r["scores"]["tokens"]) for r in rows]))
    total = sum(r["scores"]["nll"] for r in rows)
    assert values["bits_per_byte"] == pytest.approx(total / math.log(2) / (3 + 15 + len(texts[2])))  # 短: 3 bytes; ö, ß, ä: 2 each


# ------------------------------------------------------------------------------------------ compare


def _preference(name, margins):
    return _result(name, "preference", [{"correct": float(m > 0), "margin": float(m), "likelihood_correct": float(m > 0),
                                         "log_ratio_chosen": 0.0, "log_ratio_rejected": 0.0} for m in margins])


def test_paired_bootstrap_interval_equals_scipys_paired_percentile_bootstrap_with_ties():
    rng = np.random.default_rng(3)
    before, after = np.round(rng.normal(0, 1, 40)), np.round(rng.normal(0.3, 1, 40))  # few distinct values: many ties
    comparison = compare_evaluations(_preference("a", before), _preference("b", after), seed=7, samples=1000)
    for name, a, b in (("reward_margin", before, after), ("preference_accuracy", before > 0, after > 0)):
        library = bootstrap((a.astype(float), b.astype(float)), lambda x, y, axis=-1: y.mean(axis=axis) - x.mean(axis=axis), paired=True,
                            vectorized=True, n_resamples=1000, method="percentile", rng=np.random.default_rng(7))
        metric = comparison.metric(name)
        assert (metric.low, metric.high) == pytest.approx(tuple(library.confidence_interval))


def test_the_bootstrap_resamples_both_models_with_the_same_indices():
    # B is A plus 0.1 on every example: paired resamples see exactly that difference, independent ones would not.
    before = np.random.default_rng(0).normal(0, 5, 50)
    metric = compare_evaluations(_preference("a", before), _preference("b", before + 0.1), samples=300).metric("reward_margin")
    assert (metric.low, metric.difference, metric.high) == pytest.approx((0.1, 0.1, 0.1))
    assert metric.outcome == "better"


def test_out_of_scope_metrics_in_a_comparison_equal_sklearn():
    rng = np.random.default_rng(5)
    labels = ["a", "b", "oos"]
    references, predictions = (rng.choice(labels, 60).tolist() for _ in range(2))
    scores = [{"correct": float(r == p), "confidence": 0.5, "out_of_scope": float(r == "oos"), "rejected": float(p == "oos"),
               "label_correct": float(r == p and r != "oos")} for r, p in zip(references, predictions, strict=True)]
    result = _result("m", "classify", scores, labels=labels, references=references, predictions=predictions)
    values = {m.name: m.before for m in compare_evaluations(result, result, samples=10).metrics}
    outside, rejected = [r == "oos" for r in references], [p == "oos" for p in predictions]
    p, r, f, _ = precision_recall_fscore_support(outside, rejected, average="binary", zero_division=0)
    inside = [i for i, x in enumerate(outside) if not x]
    assert values["accuracy"] == pytest.approx(accuracy_score(references, predictions))
    assert values["in_scope_accuracy"] == pytest.approx(accuracy_score([references[i] for i in inside], [predictions[i] for i in inside]))
    assert (values["out_of_scope_precision"], values["out_of_scope_recall"], values["out_of_scope_f1"]) == pytest.approx((p, r, f))
    assert values["macro_f1"] == pytest.approx(f1_score(references, predictions, average="macro", zero_division=0))


def _text(name, nll):
    return _result(name, "text", [{"nll": float(v), "tokens": 10.0, "bytes": 40.0} for v in nll])


def test_a_metric_that_is_not_a_number_on_the_full_test_set_gets_no_interval_and_no_verdict():
    # One document's NLL is NaN (a model overflowing in half precision): the tuned model's perplexity is undefined. The
    # interval came from the resamples that happened to leave that document out (about a third of them) and the verdict
    # said "better" beside a difference of NaN; scipy's bootstrap gives no interval at all.
    before = np.random.default_rng(0).normal(30, 3, 40)
    after = before - 5
    after[3] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns that its statistic is degenerate: it is NaN
        library = bootstrap((before, after), lambda x, y, axis=-1: y.mean(axis=axis) - x.mean(axis=axis), paired=True,
                            vectorized=True, n_resamples=200, method="percentile", rng=np.random.default_rng(0))
    assert np.isnan(library.confidence_interval).all()
    comparison = compare_evaluations(_text("base", before), _text("tuned", after), samples=200)
    metric = comparison.metric("perplexity")
    assert math.isnan(metric.after) and np.isnan([metric.difference, metric.low, metric.high]).all()
    assert metric.outcome not in ("better", "worse") and comparison.verdict not in ("better", "worse")
    assert "tuned" in metric.not_compared
    verdict = compare_with_baselines({"base": _text("base", before)}, _text("tuned", after), samples=200)
    assert not verdict.paid_off and "use base instead" not in verdict.verdict


@pytest.mark.parametrize("sharpness", [0.5, 4.0])
def test_fit_temperature_equals_guo_et_als_lbfgs_fit_of_the_cross_entropy(sharpness):
    # Guo et al.'s reference implementation: LBFGS on torch's cross-entropy of logits / T (here on log T, to keep T > 0).
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 4, 300)
    logits = rng.normal(0, 1, (300, 4))
    logits[np.arange(300), targets] += 1.0  # right about two times in three
    logits *= sharpness  # over- (4.0) or under-confident (0.5)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)
    x, y = torch.tensor(logits), torch.tensor(targets)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    assert fit_temperature(logits, targets) == pytest.approx(log_t.exp().item(), rel=1e-3)
