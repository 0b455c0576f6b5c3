"""The embedding baseline against an independent computation, and baselines that are skipped (never silently)."""

import json

import numpy as np
import pytest

from tunelab.config import DataConfig, EvalConfig
from tunelab.data.labels import build_label_map
from tunelab.data.records import ClassifyRecord, SFTRecord
from tunelab.evaluation import baselines as B
from tunelab.evaluation.compare import compare_with_baselines
from tunelab.evaluation.report import write_report
from tunelab.models.loader import LoadedModel
from tunelab.models.resolve import ModelSource

ROUTES = {
    "billing": ["I was charged twice for my order", "my invoice shows the wrong amount", "please refund the extra fee",
                "why did my card get billed again", "the payment went through two times", "the receipt total is wrong"],
    "shipping": ["my parcel has not arrived yet", "the courier lost my package", "where is my delivery",
                 "tracking says delivered but nothing came", "the package is a week late", "can you ship faster"],
    "technical": ["the app crashes when I open it", "I cannot log in to my account", "the website shows an error",
                  "the page never finishes loading", "the password reset link is broken", "the app freezes on start"],
}


def _train():
    return [ClassifyRecord(text, label, source=f"train.jsonl:{i}") for i, (label, texts) in enumerate(ROUTES.items()) for text in texts]


def _test():
    pairs = [("I paid two times for one thing", "billing"), ("my box is still not here", "shipping"),
             ("login keeps failing", "technical"), ("the bill is too high", "billing"), ("the site is down", "technical")]
    return [ClassifyRecord(text, label, source=f"test.jsonl:{i}") for i, (text, label) in enumerate(pairs)]


@pytest.fixture(scope="module")
def minilm():
    """all-MiniLM-L6-v2 loaded straight with sentence-transformers from the installed package's folder."""
    st = pytest.importorskip("sentence_transformers")
    from tunelab.models.embedding import resolve_embedding_model

    try:
        source = resolve_embedding_model("default")
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"the default embedding model is not installed: {error}")
    return st.SentenceTransformer(source.location, device="cpu")


def test_embedding_classifier_equals_sentence_transformers_and_sklearn_computed_directly(minilm):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    train, test = _train(), _test()
    labels = ["billing", "shipping", "technical"]
    result = B.embedding_baseline(list(reversed(train)), test, config=EvalConfig(), data_config=DataConfig(seed=4), labels=labels)

    ordered = sorted(train, key=lambda r: r.id)
    x = minilm.encode([r.text for r in ordered], normalize_embeddings=True)
    y = [r.label for r in ordered]
    search = GridSearchCV(LogisticRegression(max_iter=2000, random_state=4), {"C": list(B.CLASSICAL_C_GRID)},
                          cv=StratifiedKFold(n_splits=5, shuffle=True, random_state=4), scoring="accuracy", refit=True).fit(x, y)
    expected = search.predict_proba(minilm.encode([r.text for r in test], normalize_embeddings=True))
    assert result.settings["C"] == search.best_params_["C"] and result.settings["folds"] == 5
    assert result.settings["cv_accuracy"] == pytest.approx(search.best_score_)
    assert [row["prediction"] for row in result.rows] == [search.classes_[i] for i in expected.argmax(axis=1)]
    for row, probs in zip(result.rows, expected, strict=True):
        assert row["scores"]["confidence"] == pytest.approx(probs.max(), abs=1e-5)
        assert row["scores"]["probability_of_reference"] == pytest.approx(probs[list(search.classes_).index(row["reference"])], abs=1e-5)
    assert result.baseline_name == "embedding" and result.labels == labels and "ece" in result.metrics
    assert result.metrics["accuracy"] == pytest.approx(np.mean([row["scores"]["correct"] for row in result.rows]))
    assert result.metrics["accuracy"] >= 0.8  # paraphrases of the training requests: embeddings find them


def test_embedding_retrieval_answers_with_the_nearest_training_prompt(minilm):
    def sft(prompt, answer):
        return SFTRecord(({"role": "user", "content": prompt}, {"role": "assistant", "content": answer}))

    train = [sft(p, a) for p, a in [
        ("How do I reset my password?", "Use the reset link on the sign-in page."),
        ("When will my parcel arrive?", "Parcels arrive within three working days."),
        ("Can I pay by invoice?", "Yes, invoices are due in 30 days."),
    ]]
    test = [sft(p, a) for p, a in [
        ("I forgot my login password", "Use the reset link."), ("how long does delivery take", "Three days.")]]
    result = B.embedding_retrieval_baseline(train, test, config=EvalConfig(), data_config=DataConfig())
    ordered = sorted(train, key=lambda r: r.id)
    similarity = minilm.encode([r.prompt_messages[-1]["content"] for r in test], normalize_embeddings=True) @ \
        minilm.encode([r.prompt_messages[-1]["content"] for r in ordered], normalize_embeddings=True).T
    assert [row["prediction"] for row in result.rows] == [ordered[i].completion for i in similarity.argmax(axis=1)]
    assert result.baseline_name == "embedding" and "rougeL" in result.metrics


def test_an_unavailable_embedding_model_is_skipped_with_its_reason_and_shown_in_verdict_and_report(tmp_path):
    train, test = _train(), [*_test(), *_test()]
    events = []
    config = EvalConfig(embedding_model=str(tmp_path / "no-such-model"))
    results = B.evaluate_baselines(["classical", "embedding"], None, test, "classify", train=train, config=config,
                                   data_config=DataConfig(), on_event=lambda *event: events.append(event))
    assert list(results) == ["classical"]
    assert "embedding" in results.skipped and "no-such-model" in results.skipped["embedding"]
    assert ("embedding", "skipped", {"reason": results.skipped["embedding"]}) in events
    assert any(status == "progress" and name == "classical" for name, status, _ in events)

    verdict = compare_with_baselines(results, results["classical"], samples=200)
    assert verdict.skipped == results.skipped and "embedding" in verdict.summary
    assert verdict.to_dict()["skipped"] == results.skipped
    (tmp_path / "run" / "eval").mkdir(parents=True)
    files = write_report(tmp_path / "run", dict(results), results["classical"], verdict)
    assert "baseline embedding: **skipped**" in files.markdown.read_text() and "skipped" in files.html.read_text()


@pytest.fixture
def loaded(tiny_model, tiny_tokenizer):
    return LoadedModel(tiny_model, tiny_tokenizer, ModelSource("folder", "/tiny", "tiny"))


def test_a_few_shot_prompt_that_cannot_show_every_label_is_skipped_before_it_runs(loaded, tiny_tokenizer):
    train = _train()
    label_map = build_label_map(["billing", "shipping", "technical"], tiny_tokenizer)
    results = B.evaluate_baselines(["few_shot"], loaded, _test(), "classify", train=train, config=EvalConfig(few_shot_tokens=20),
                                   data_config=DataConfig(max_length=64), label_map=label_map)
    assert not results and "not one for each of the 3 labels" in results.skipped["few_shot"]
    _, _, round_tokens = B.few_shot_round(train, label_map, tiny_tokenizer)
    assert f"one round needs {round_tokens} tokens" in results.skipped["few_shot"] and round_tokens > 20


def test_a_model_baseline_below_a_cheap_opponent_on_validation_rows_is_not_scored_on_the_test(loaded, tiny_tokenizer):
    train, validation = _train(), _test()
    label_map = build_label_map(["billing", "shipping", "technical"], tiny_tokenizer)
    common = {"train": train, "config": EvalConfig(), "data_config": DataConfig(max_length=64), "label_map": label_map}
    scored = B.evaluate_baseline("base", loaded, validation, "classify", **common)
    right = int(sum(row["scores"]["correct"] for row in scored.rows))
    from tunelab.evaluation.review import wilson_interval

    high = wilson_interval(right, len(validation))[1]
    reason = B.model_baseline_cannot_win("base", loaded, validation, cross_validated={"classical": min(1.0, high + 0.01)}, **common)
    assert reason is not None and f"{right} of {len(validation)} validation requests right" in reason and "classical" in reason
    assert B.model_baseline_cannot_win("base", loaded, validation, cross_validated={"classical": high}, **common) is None
    assert B.model_baseline_cannot_win("base", loaded, [], cross_validated={"classical": 1.0}, **common) is None

    # In evaluate_baselines the cheap opponent runs first, whatever the listed order, and the skip is shown.
    events = []
    results = B.evaluate_baselines(["base", "classical"], loaded, validation * 2, "classify", validation=validation,
                                   on_event=lambda *event: events.append(event), **common)
    starts = [name for name, status, _ in events if status == "start"]
    assert starts == ["classical", "base"]
    if results["classical"].settings["cv_accuracy"] > high:
        assert "base" in results.skipped and list(results) == ["classical"]
    else:
        assert list(results) == ["base", "classical"]  # the listed order
    assert json.dumps(results.skipped)  # reasons are plain strings


def test_embedding_is_a_default_baseline_of_classify_and_sft():
    from tunelab.config import TASK_BASELINES

    assert "embedding" in TASK_BASELINES["classify"] and "embedding" in TASK_BASELINES["sft"]
    settings = B.baseline_settings("embedding", "classify", EvalConfig(), DataConfig(), None, _train())
    other = B.baseline_settings("embedding", "classify", EvalConfig(embedding_model="/elsewhere"), DataConfig(), None, _train())
    assert settings["embedding_model"] != other["embedding_model"] and "train_fingerprint" in settings
