"""The suspect labels of a run come from the embedding baseline's own cross-validation: its out-of-fold
probabilities are sklearn's, and a cached baseline gives the same list as a scored one."""

import numpy as np
import pytest

from tunelab.config import DataConfig, EvalConfig
from tunelab.data.records import ClassifyRecord
from tunelab.evaluation import baselines as B

WORDS = {"billing": ["invoice", "charge", "refund", "card"], "shipping": ["parcel", "courier", "delivery", "tracking"],
         "account": ["password", "login", "email", "profile"]}


def _features(texts):
    """A fake sentence embedding: how many words of each label a text has, and a little per-text noise (seeded)."""
    rows = []
    for text in texts:
        words = text.split()
        counts = [sum(word in WORDS[label] for word in words) for label in sorted(WORDS)]
        noise = np.random.default_rng(sum(map(ord, text))).normal(scale=0.1, size=3)
        rows.append(np.concatenate([counts, noise]))
    vectors = np.asarray(rows, dtype=float)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def fake_embedder(monkeypatch):
    from tunelab.models import embedding

    monkeypatch.setattr(B, "load_embedder", lambda config, allow_network: (None, type("Source", (), {"display_name": "fake"})()))
    monkeypatch.setattr(embedding, "embed_texts", lambda model, texts, progress=None: _features(texts))


def _records(flipped=frozenset()):
    records = []
    for label, words in WORDS.items():
        for i in range(8):
            written = "shipping" if (label, i) in flipped else label
            records.append(ClassifyRecord(f"{words[i % 4]} {words[(i + 1) % 4]} request {i}", written, source=f"train.jsonl:{len(records) + 1}"))
    return records


def test_out_of_fold_probabilities_are_sklearns_cross_val_predict_at_the_chosen_c():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict

    rng = np.random.default_rng(0)
    labels = np.array(["a"] * 9 + ["b"] * 7 + ["c"] * 6)
    x = rng.normal(size=(len(labels), 5)) + np.array([{"a": 0.0, "b": 1.0, "c": -1.0}[label] for label in labels])[:, None]
    validated = B.cross_validate(lambda c: B.embedding_classifier(c, 3), x, labels, seed=3, out_of_fold=True)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=3)
    search = GridSearchCV(LogisticRegression(max_iter=2000, random_state=3), {"C": list(B.CLASSICAL_C_GRID)}, cv=folds, scoring="accuracy").fit(x, labels)
    assert validated.chosen["C"] == search.best_params_["C"] and validated.chosen["folds"] == 5
    assert validated.chosen["cv_accuracy"] == pytest.approx(search.best_score_)
    expected = cross_val_predict(LogisticRegression(C=validated.chosen["C"], max_iter=2000, random_state=3), x, labels, cv=folds,
                                 method="predict_proba")
    assert validated.classes == ["a", "b", "c"]
    np.testing.assert_allclose(validated.out_of_fold, expected, atol=1e-10)
    # fit_with_cv (classical's, the embedding baseline's scores and cache) chooses the same as before: nothing kept.
    fitted, chosen = B.fit_with_cv(lambda c: B.embedding_classifier(c, 3), x, labels, seed=3)
    assert chosen == validated.chosen and np.allclose(fitted.coef_, validated.fitted.coef_)
    single = B.cross_validate(lambda c: B.embedding_classifier(c, 3), x[:4], ["a", "a", "b", "c"], seed=3, out_of_fold=True)
    assert single.out_of_fold is None and single.chosen["folds"] == 0


def test_the_embedding_baseline_keeps_the_suspects_of_the_rows_it_learned_from(fake_embedder):
    from tunelab.evaluation.suspects import SuspectReport

    train = _records(flipped={("billing", 2)})
    test = [ClassifyRecord("invoice charge", "billing"), ClassifyRecord("parcel courier", "shipping"), ClassifyRecord("login email", "account")]
    result = B.embedding_baseline(train, test, config=EvalConfig(), data_config=DataConfig(seed=0))
    report = SuspectReport.from_dict(result.suspect_labels)
    assert report.records == report.checked == 24 and report.skipped is None and report.weak is None
    flipped = train[2]  # billing's third request, filed under shipping
    top = report.suspects[0]
    assert (top.source, top.given, top.suggested) == (flipped.source, "shipping", "billing")
    # The same rule and the same folds as `tunelab data check --suspect-labels` on these rows.
    assert B.find_suspect_labels(train).to_dict(100) == report.to_dict(100)


def test_a_cached_embedding_baseline_gives_the_same_suspects(tmp_path, fake_embedder):
    from tunelab.registry.store import Registry

    registry = Registry(tmp_path / "registry.db")
    test = [ClassifyRecord("invoice charge", "billing"), ClassifyRecord("parcel courier", "shipping"), ClassifyRecord("login email", "account")]
    events = []

    def run():
        return B.evaluate_baselines(
            ["embedding"], None, test, "classify", train=_records(flipped={("billing", 2), ("account", 5)}), config=EvalConfig(),
            data_config=DataConfig(), registry=registry, cache_dir=tmp_path / "cache", model_key="tiny",
            on_event=lambda name, status, details: events.append((name, status)) if status != "progress" else None,
        )

    scored = run()["embedding"]
    cached = run()["embedding"]
    assert events[-1] == ("embedding", "skip")
    assert scored.suspect_labels["count"] >= 2 and cached.suspect_labels == scored.suspect_labels
