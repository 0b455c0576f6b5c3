"""Baselines: each checked against an independent computation, plus their cache key and the old config key."""

import numpy as np
import pytest

from tunelab.config import DataConfig, EvalConfig, parse_config, resolve_baselines
from tunelab.data.labels import build_label_map
from tunelab.data.records import ClassifyRecord, SFTRecord
from tunelab.data.templates import few_shot_chat, few_shot_messages, render_prompt_ids, zero_shot_messages
from tunelab.errors import ConfigError, DataError
from tunelab.evaluation import baselines as B
from tunelab.evaluation.evaluate import answer_prompts, evaluate
from tunelab.evaluation.predict import label_logits, prefix_label_logits, shared_prefix_length, softmax
from tunelab.models.loader import LoadedModel
from tunelab.models.resolve import ModelSource

WORDS = {
    "billing": ["invoice", "charge", "payment", "bill", "charged twice", "refund my fee"],
    "technical": ["crash", "error", "bug", "login fails", "app freezes", "cannot connect"],
    "shipping": ["parcel", "delivery", "courier", "package late", "tracking number", "shipped"],
}


def _classify_records(offset=0):
    records = []
    for label, words in WORDS.items():
        for i, word in enumerate(words):
            records.append(ClassifyRecord(f"my {word} problem number {i + offset}", label, source=f"train.jsonl:{len(records) + 1}"))
    return records


def _test_records():
    texts = [("the invoice shows a wrong charge", "billing"), ("the app has a bug and crashes", "technical"),
             ("where is my parcel delivery", "shipping"), ("payment was charged twice", "billing"),
             ("login error again", "technical"), ("the courier lost the package", "shipping"), ("hello there", "billing")]
    return [ClassifyRecord(t, label, source=f"test.jsonl:{i + 1}") for i, (t, label) in enumerate(texts)]


@pytest.fixture
def loaded(tiny_model, tiny_tokenizer):
    return LoadedModel(tiny_model, tiny_tokenizer, ModelSource("folder", "/tiny", "tiny"))


# ----------------------------------------------------------------------------------------- classical


def test_classical_equals_a_hand_built_sklearn_pipeline():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline, make_union

    train, test = _classify_records(), _test_records()
    labels = ["billing", "shipping", "technical"]
    result = B.classical_baseline(train, test, data_config=DataConfig(seed=3), labels=labels)

    reordered = B.classical_baseline(list(reversed(train)), test, data_config=DataConfig(seed=3), labels=labels)
    assert reordered.rows == result.rows  # the file's order changes nothing (the cache key ignores it too)
    train = sorted(train, key=lambda r: r.id)  # the order the baseline fits in
    texts, y = [r.text for r in train], [r.label for r in train]

    def built(c):
        union = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True))
        return make_pipeline(union, LogisticRegression(C=c, max_iter=2000, random_state=3))

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=3)
    scores = [cross_val_score(built(c), texts, y, cv=folds, scoring="accuracy").mean() for c in B.CLASSICAL_C_GRID]
    best_c = B.CLASSICAL_C_GRID[int(np.argmax(scores))]  # first best: the strongest regularisation among ties
    assert result.settings["C"] == best_c and result.settings["folds"] == 5
    assert result.settings["cv_accuracy"] == pytest.approx(max(scores))
    model = built(best_c).fit(texts, y)
    expected = model.predict_proba([r.text for r in test])
    assert [row["prediction"] for row in result.rows] == list(model.predict([r.text for r in test]))
    for row, probs in zip(result.rows, expected, strict=True):
        assert row["scores"]["confidence"] == pytest.approx(probs.max())
        assert row["scores"]["probability_of_reference"] == pytest.approx(probs[list(model.classes_).index(row["reference"])])
    assert result.baseline_name == "classical" and result.labels == labels and "ece" in result.metrics
    assert result.metrics["accuracy"] == pytest.approx(np.mean([row["scores"]["correct"] for row in result.rows]))


def test_classical_with_a_single_example_label_falls_back_without_cv():
    train = [*_classify_records(), ClassifyRecord("a lonely refund", "refund")]
    result = B.classical_baseline(train, _test_records(), data_config=DataConfig())
    assert result.settings["folds"] == 0 and result.settings["C"] == B.CLASSICAL_FALLBACK_C
    assert any("single training example" in w for w in result.warnings)
    with pytest.raises(DataError, match="learns from training data"):
        B.classical_baseline([], _test_records(), data_config=DataConfig())


# ------------------------------------------------------------------------------------------ few-shot


def test_prefix_reuse_equals_the_full_prompts(loaded, tiny_tokenizer):
    train, test = _classify_records(), _test_records()
    label_map = build_label_map(sorted(WORDS), tiny_tokenizer)
    examples, _ = B.few_shot_classify_examples(train, label_map, tiny_tokenizer, 400)
    prompts = [render_prompt_ids(tiny_tokenizer, few_shot_messages(r.text, label_map, examples)) for r in test]
    prefix = shared_prefix_length(prompts)
    assert prefix > 100 and all(len(p) > prefix for p in prompts)
    full = label_logits(loaded.model, prompts, label_map.token_ids, batch_size=3)
    reused = prefix_label_logits(loaded.model, prompts, label_map.token_ids, batch_size=3)
    np.testing.assert_allclose(reused, full, rtol=1e-4, atol=1e-5)
    # A batch that is one prompt, prompts that are each other's prefix, and one too short for a prefix.
    ragged = [prompts[0], prompts[0][:-3], prompts[1]]
    np.testing.assert_allclose(prefix_label_logits(loaded.model, ragged, label_map.token_ids, batch_size=1),
                               label_logits(loaded.model, ragged, label_map.token_ids), rtol=1e-4, atol=1e-5)
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2 and shared_prefix_length([[1, 2], [3]]) == 0


def test_few_shot_examples_are_whole_rounds_within_the_budget(tiny_tokenizer):
    train = _classify_records()
    label_map = build_label_map(sorted(WORDS), tiny_tokenizer)
    empty = len(render_prompt_ids(tiny_tokenizer, zero_shot_messages("", label_map)))
    previous = 0
    for budget in (10, 150, 400, 100_000):
        examples, k = B.few_shot_classify_examples(train, label_map, tiny_tokenizer, budget, seed=1)
        used = len(render_prompt_ids(tiny_tokenizer, few_shot_messages("", label_map, examples))) - empty
        assert used <= budget and len(examples) >= previous
        per_label = {label: sum(1 for _, shown in examples if shown == label) for label in WORDS}
        if k:
            assert min(per_label.values()) == k  # every label shown k times
        previous = len(examples)
    assert k == 6 and len(examples) == len(train)  # an unbounded budget shows every training example
    again, _ = B.few_shot_classify_examples(train, label_map, tiny_tokenizer, 400, seed=1)
    assert again == B.few_shot_classify_examples(train, label_map, tiny_tokenizer, 400, seed=1)[0]
    assert again != B.few_shot_classify_examples(train, label_map, tiny_tokenizer, 400, seed=2)[0]


def test_few_shot_classify_scores_the_full_few_shot_prompt(loaded, tiny_tokenizer):
    train, test = _classify_records(), _test_records()
    label_map = build_label_map(sorted(WORDS), tiny_tokenizer)
    config = EvalConfig(few_shot_tokens=300, batch_size=4)
    result = B.few_shot_classify(loaded, train, test, config=config, data_config=DataConfig(), label_map=label_map)
    examples, k = B.few_shot_classify_examples(train, label_map, tiny_tokenizer, 300)
    prompts = [render_prompt_ids(tiny_tokenizer, few_shot_messages(r.text, label_map, examples)) for r in test]
    expected = softmax(label_logits(loaded.model, prompts, label_map.token_ids))
    assert [row["prediction"] for row in result.rows] == [label_map.labels[i] for i in expected.argmax(axis=1)]
    assert [row["scores"]["confidence"] for row in result.rows] == pytest.approx(list(expected.max(axis=1)), abs=1e-5)
    assert result.settings["examples_per_label"] == k >= 1 and result.baseline_name == "few_shot"
    zero = evaluate(loaded, test, "classify", config=config, data_config=DataConfig(), label_map=label_map, baseline=True)
    assert zero.test_fingerprint == result.test_fingerprint


def test_few_shot_sft_puts_training_pairs_before_the_prompt(loaded, tiny_tokenizer):
    train = [SFTRecord(({"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"It is {2 * i}."})) for i in range(8)]
    test = [SFTRecord(({"role": "user", "content": q}, {"role": "assistant", "content": a})) for q, a in (("What is two plus two?", "four"), ("capital of France?", "Paris"))]
    config = EvalConfig(few_shot_tokens=90, max_new_tokens=5)
    examples = B.few_shot_sft_examples(train, tiny_tokenizer, 90)
    assert 1 <= len(examples) < len(train)
    assert len(render_prompt_ids(tiny_tokenizer, few_shot_chat([], examples))) <= 90
    result = B.few_shot_sft(loaded, train, test, config=config, data_config=DataConfig())
    answers, _, _ = answer_prompts(loaded, [few_shot_chat(r.prompt_messages, examples) for r in test], config, 10_000)
    assert [row["prediction"] for row in result.rows] == answers
    assert result.settings["examples"] == len(examples) and "rougeL" in result.metrics
    chat = few_shot_chat([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}], examples[:1])
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"] and chat[-1]["content"] == "Q"


# ----------------------------------------------------------------------------------------- retrieval


def test_retrieval_equals_brute_force_cosine():
    from sklearn.feature_extraction.text import TfidfVectorizer

    prompts = ["how do I reset my password", "what is the refund policy", "where is my parcel", "password reset link expired",
               "can I pay by card", "the parcel arrived broken"]
    train = [SFTRecord(({"role": "user", "content": p}, {"role": "assistant", "content": f"answer {i}"})) for i, p in enumerate(prompts)]
    questions = ["my password reset link has expired", "refund policy please", "parcel broken on arrival", "pay with a card?"]
    test = [SFTRecord(({"role": "user", "content": q}, {"role": "assistant", "content": "ref"})) for q in questions]
    result = B.retrieval_baseline(train, test, data_config=DataConfig())
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(prompts)
    a, b = vectorizer.transform(questions).toarray(), vectorizer.transform(prompts).toarray()
    expected = []
    for row in a:  # brute force: every pair's cosine
        cosines = [float(row @ col) / (np.linalg.norm(row) * np.linalg.norm(col)) for col in b]
        expected.append(f"answer {int(np.argmax(cosines))}")
    assert [row["prediction"] for row in result.rows] == expected == ["answer 3", "answer 1", "answer 5", "answer 4"]
    assert result.baseline_name == "retrieval" and result.metrics["primary"] == "rougeL"


# --------------------------------------------------------------------------------- config and cache


def test_eval_baselines_default_to_all_that_apply_and_the_old_key_still_works():
    resolved = parse_config({"task": "classify"})
    assert resolved.eval.baselines == ["base", "classical", "embedding", "few_shot"]
    assert parse_config({"task": "sft"}).eval.baselines == ["base", "embedding", "few_shot", "retrieval"]
    assert parse_config({"task": "text"}).eval.baselines == ["base"]
    old = parse_config({"task": "classify", "eval": {"baseline": False}})
    assert old.eval.baselines == ["classical", "embedding", "few_shot"] and old.eval.baseline is None
    assert parse_config({"task": "text", "eval": {"baseline": True}}).eval.baselines == ["base"]
    assert parse_config({"task": "sft", "eval": {"baselines": []}}).eval.baselines == []
    with pytest.raises(ConfigError, match="contradicts eval.baselines"):
        parse_config({"task": "classify", "eval": {"baseline": False, "baselines": ["base"]}})
    with pytest.raises(ConfigError, match="retrieval does not apply to the task classify"):
        resolve_baselines("classify", EvalConfig(baselines=["retrieval"]))
    with pytest.raises(ConfigError, match="retrieval does not apply to the task classify"):
        parse_config({"task": "classify", "eval": {"baselines": ["base", "retrieval"]}})  # refused on load
    with pytest.raises(ConfigError, match="eval.baselines"):
        parse_config({"task": "classify", "eval": {"baselines": ["nearest"]}})


def test_cache_key_includes_the_training_fingerprint_where_the_baseline_learns():
    label_map = None
    train = _classify_records()
    other = _classify_records(offset=1)

    def key(name, records, model="m1", **eval_settings):
        settings = B.baseline_settings(name, "classify", EvalConfig(**eval_settings), DataConfig(), label_map, records)
        return B.baseline_cache_key(name, model, "test-fp", settings).key

    assert key("classical", train) != key("classical", other)
    assert key("few_shot", train) != key("few_shot", other)
    assert key("base", train) == key("base", other)  # the zero-shot base model learns nothing
    assert key("classical", train, model="m1") == key("classical", train, model="m2")  # no model involved
    assert key("few_shot", train, model="m1") != key("few_shot", train, model="m2")
    assert key("few_shot", train, few_shot_tokens=512) != key("few_shot", train)
    assert key("base", train, baselines=["base"]) == key("base", train, baselines=["base", "classical"])
    assert key("classical", list(reversed(train))) == key("classical", train)


def test_a_changed_base_model_prompt_changes_the_cache_key(monkeypatch):
    """Answers cached with one instruction are never reused for another (base and few-shot run tunelab's prompt)."""
    from tunelab.data.labels import LabelMap

    label_map = LabelMap(["a", "b"], [5, 6], ["A", "B"])

    def key(name):
        return B.baseline_cache_key(name, "m", "test-fp", B.baseline_settings(name, "classify", EvalConfig(), DataConfig(), label_map, [])).key

    before = {name: key(name) for name in ("base", "few_shot", "classical")}
    plain = B.few_shot_messages
    monkeypatch.setattr(B, "few_shot_messages", lambda text, *args, **kwargs: [{"role": "user", "content": "Sort this."}, *plain(text, *args, **kwargs)])
    after = {name: key(name) for name in before}
    assert after["base"] != before["base"] and after["few_shot"] != before["few_shot"]
    assert after["classical"] == before["classical"]  # no prompt involved


def test_evaluate_baselines_caches_and_recomputes_when_training_data_changes(tmp_path, loaded, tiny_tokenizer):
    from tunelab.registry.store import Registry

    registry = Registry(tmp_path / "registry.db")
    label_map = build_label_map(sorted(WORDS), tiny_tokenizer)
    events = []

    def run(train):
        return B.evaluate_baselines(
            ["base", "classical"], loaded, _test_records(), "classify", train=train, config=EvalConfig(), data_config=DataConfig(),
            label_map=label_map, registry=registry, cache_dir=tmp_path / "cache", model_key="tiny",
            on_event=lambda name, status, details: events.append((name, status)) if status != "progress" else None,
        )

    first = run(_classify_records())
    assert list(first) == ["base", "classical"] and first["base"].baseline_name == "base"  # the listed order
    again = run(_classify_records())
    assert events[-2:] == [("classical", "skip"), ("base", "skip")]  # the cheap opponent runs first
    assert again["classical"].rows == first["classical"].rows
    run(_classify_records(offset=1))
    assert events[-3:] == [("classical", "start"), ("classical", "done"), ("base", "skip")]
    with pytest.raises(ConfigError, match="does not apply"):
        B.evaluate_baseline("retrieval", loaded, _test_records(), "classify", train=_classify_records(), config=EvalConfig(), data_config=DataConfig())


# The cache keys of every baseline as they were before the catalogue (computed on main at 93ed97a): a cached
# evaluation stays valid across the change. A baseline whose scores change must change its key on purpose: the text
# base model's did (eval.text_samples, the continuation samples it writes beside its perplexity, is in its key).
PINNED_CACHE_KEYS = {
 "None-classify-base": [
  "model-key",
  "f4b83adee8aaa01b"
 ],
 "None-classify-classical": [
  "classical",
  "39eed3d4196f99f9"
 ],
 "None-classify-few_shot": [
  "model-key",
  "42ba0bf14cc8e0e0"
 ],
 "None-classify-openai:gpt-x": [
  "openai:gpt-x",
  "072ab413af165fad"
 ],
 "None-classify-remote:big": [
  "remote:big",
  "84c980cd155311c9"
 ],
 "None-sft-base": [
  "model-key",
  "66c428f355fe4606"
 ],
 "None-sft-few_shot": [
  "model-key",
  "d67dfe87ca6019e3"
 ],
 "None-sft-openai:gpt-x": [
  "openai:gpt-x",
  "63816847454cefe1"
 ],
 "None-sft-retrieval": [
  "retrieval",
  "1ed60df2459d6804"
 ],
 "None-text-base": [
  "model-key",
  "839a006cf6bbdee2"
 ],
 "other-classify-base": [
  "model-key",
  "185a36bc532a6099"
 ],
 "other-classify-classical": [
  "classical",
  "692f8c9cca97410f"
 ],
 "other-classify-few_shot": [
  "model-key",
  "9eee779ab03054cf"
 ],
 "other-classify-openai:gpt-x": [
  "openai:gpt-x",
  "5a844e27de3ce805"
 ],
 "other-classify-remote:big": [
  "remote:big",
  "f1dea5e86bd833d8"
 ],
 "other-sft-base": [
  "model-key",
  "66c428f355fe4606"
 ],
 "other-sft-few_shot": [
  "model-key",
  "d67dfe87ca6019e3"
 ],
 "other-sft-openai:gpt-x": [
  "openai:gpt-x",
  "63816847454cefe1"
 ],
 "other-sft-retrieval": [
  "retrieval",
  "1ed60df2459d6804"
 ],
 "other-text-base": [
  "model-key",
  "839a006cf6bbdee2"
 ]
}


def test_the_catalogue_and_its_scorers_agree_and_cache_keys_stay_stable():
    from tunelab.config import BASELINES, TASK_BASELINES, EndpointConfig
    from tunelab.data.labels import LabelMap
    from tunelab.data.records import ClassifyRecord, SFTRecord
    from tunelab.evaluation.baselines import SCORERS, baseline_cache_key, baseline_settings

    assert set(SCORERS) == set(BASELINES)
    assert TASK_BASELINES == {"classify": ("base", "classical", "embedding", "few_shot"), "sft": ("base", "embedding", "few_shot", "retrieval"),
                              "text": ("base",), "preference": ("base",)}
    lm = LabelMap(["a", "b"], [5, 6], ["A", "B"])
    train_c = [ClassifyRecord("x", "a"), ClassifyRecord("y", "b")]
    train_s = [SFTRecord(({"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}))]
    ev = EvalConfig(endpoints={"big": EndpointConfig(base_url="http://x/v1", name="m")})
    out = {}
    for oos in (None, "other"):
        dc = DataConfig(out_of_scope_label=oos, system_prompt="S")
        for task, names, train, label_map in (("classify", ["base", "classical", "few_shot", "openai:gpt-x", "remote:big"], train_c, lm),
                                              ("sft", ["base", "few_shot", "retrieval", "openai:gpt-x"], train_s, None),
                                              ("text", ["base"], [], None)):
            for name in names:
                s = baseline_settings(name, task, ev, dc, label_map, train, train_c[:1])
                k = baseline_cache_key(name, "model-key", "testfp", s)
                out[f"{oos}-{task}-{name}"] = [k.model, k.settings_hash]
    assert out == PINNED_CACHE_KEYS


def test_a_cached_baseline_scored_by_other_code_is_rescored_and_said_once(tmp_path, loaded, tiny_tokenizer, monkeypatch):
    """An upgrade that changes how baselines prompt or score never reuses scores cached by the old code."""
    from tunelab.registry.store import Registry

    registry = Registry(tmp_path / "registry.db")
    label_map = build_label_map(sorted(WORDS), tiny_tokenizer)
    events = []

    def run():
        B.evaluate_baselines(
            ["classical"], loaded, _test_records(), "classify", train=_classify_records(), config=EvalConfig(), data_config=DataConfig(),
            label_map=label_map, registry=registry, cache_dir=tmp_path / "cache", model_key="tiny",
            on_event=lambda name, status, details: events.append((status, details)) if status != "progress" else None,
        )
        statuses = [status for status, _ in events]
        events.clear()
        return statuses

    assert run() == ["start", "done"]
    assert run() == ["skip"]  # nothing changed: reused
    monkeypatch.setattr(B, "scoring_code_fingerprint", lambda: "an upgraded tunelab")
    run_events = []
    statuses = B.evaluate_baselines(
        ["classical"], loaded, _test_records(), "classify", train=_classify_records(), config=EvalConfig(), data_config=DataConfig(),
        label_map=label_map, registry=registry, cache_dir=tmp_path / "cache", model_key="tiny",
        on_event=lambda name, status, details: run_events.append((status, details)) if status != "progress" else None,
    )
    assert statuses["classical"].settings["code"] == "an upgraded tunelab"
    assert [status for status, _ in run_events] == ["rescore", "start", "done"]
    assert "tunelab" in run_events[0][1]["reason"] and run_events[0][1]["cached_from"]
    assert run() == ["skip"]  # rescored once, then reused


def test_the_scoring_code_fingerprint_covers_the_prompt_code_and_existing_modules(monkeypatch):
    import importlib.util
    from pathlib import Path

    from tunelab.data import tokenize

    for module in B.SCORING_MODULES:
        assert Path(importlib.util.find_spec(module).origin).is_file(), module
    before = B.scoring_code_fingerprint.__wrapped__()
    monkeypatch.setattr(tokenize, "code_fingerprint", lambda: "other templates")
    assert B.scoring_code_fingerprint.__wrapped__() != before
