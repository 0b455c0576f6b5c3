"""The classify label head: a trained delta over the label tokens' rows of the output head."""

import json

import torch
from train_helpers import classify_records, records_split, tiny_config

from tunelab.data.labels import label_name_token_ids
from tunelab.models.heads import LABEL_HEAD_FILE, LabelHead, causal_lm_of, label_logits
from tunelab.runs import RunFolder
from tunelab.tasks import run_training


def test_name_initialisation_starts_each_row_at_its_names_mean_embedding(tiny_model, tiny_tokenizer):
    token_ids = [11, 12]
    names = label_name_token_ids(["card_arrival", "refund"], tiny_tokenizer)
    assert names[0] == tiny_tokenizer.encode(" card arrival", add_special_tokens=False)
    head = LabelHead.initialise(tiny_model, token_ids, names)
    lm = causal_lm_of(tiny_model)
    rows = lm.get_output_embeddings().weight[torch.tensor(token_ids)] + head.delta
    for row, ids, own in zip(rows, names, lm.get_output_embeddings().weight[torch.tensor(token_ids)], strict=True):
        mean = lm.get_input_embeddings().weight[torch.tensor(ids)].mean(0)
        # same direction as the name's mean embedding, same norm as the row it replaces
        torch.testing.assert_close(torch.nn.functional.cosine_similarity(row, mean, dim=0), torch.tensor(1.0), atol=1e-5, rtol=0)
        torch.testing.assert_close(row.norm(), own.norm(), atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(LabelHead.initialise(tiny_model, token_ids, None).delta) == 0


def test_label_logits_add_the_delta_to_the_label_rows(tiny_model):
    hidden = torch.randn(3, tiny_model.config.hidden_size)
    labels = torch.tensor([11, 4])
    delta = torch.randn(2, tiny_model.config.hidden_size)
    head = LabelHead(labels, delta)
    weight = causal_lm_of(tiny_model).get_output_embeddings().weight
    with torch.no_grad():
        torch.testing.assert_close(label_logits(tiny_model, hidden, labels, head), hidden @ (weight[labels] + delta).T)


def test_a_classify_run_trains_saves_loads_and_folds_its_label_head(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunelab.evaluation.predict import label_logits as score_prompts
    from tunelab.runs import export_folder as merge_and_save
    from tunelab.runs import load_run

    config = tiny_config(tiny_model_dir, task="classify", max_steps=3)
    run_training(config, records_split(classify_records(12), classify_records(6)), run_dir=tmp_path / "run")
    run = RunFolder(tmp_path / "run")
    # The rows travel inside the PEFT adapter (trainable tokens on the head), not in a file of tunelab's own.
    assert not (run.adapter / LABEL_HEAD_FILE).exists()
    assert json.loads((run.adapter / "adapter_config.json").read_text())["trainable_token_indices"] == {"lm_head": json.loads(run.labels.read_text())["token_ids"]}
    loaded = load_run(run.root)
    assert loaded.label_head is not None
    label_ids = json.loads(run.labels.read_text())["token_ids"]
    names = label_name_token_ids(loaded.label_map.labels, loaded.tokenizer)
    start = LabelHead.initialise(loaded.model, label_ids, names)
    assert not torch.allclose(loaded.label_head.delta, start.delta), "the label rows were not trained"

    prompts = [[5, 9, 12, 40, 7], [3, 8, 21]]
    with_head = score_prompts(loaded.model, prompts, label_ids, label_head=loaded.label_head)
    without = score_prompts(loaded.model, prompts, label_ids)
    assert not torch.allclose(torch.from_numpy(with_head), torch.from_numpy(without))

    # Merged export: the delta folded into an untied head, the input embeddings untouched.
    merge_and_save(run.root, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(torch.from_numpy(score_prompts(merged, prompts, label_ids)), torch.from_numpy(with_head), atol=1e-4, rtol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.testing.assert_close(merged.get_input_embeddings().weight, base.get_input_embeddings().weight)


def test_the_kept_checkpoint_is_the_latest_within_one_validation_example_of_the_best_accuracy(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, task="classify", max_steps=6, eval_every=1)
    result = run_training(config, records_split(classify_records(12), classify_records(6)), run_dir=tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    validations = [m for m in lines if "validation_score" in m]
    assert len(validations) == 6
    # The rule, computed independently from the log: a validation is kept when its accuracy is at most one
    # of the 6 validation examples below the highest accuracy up to then; the last one kept wins.
    kept, top = None, -1.0
    for m in validations:
        top = max(top, m["validation_score"])
        if m["validation_score"] >= top - 1 / 6 - 1e-9:
            kept = m
    assert result.best_validation_loss == kept["validation_loss"]


def test_a_higher_validation_accuracy_wins_over_a_lower_loss_and_near_ties_go_to_the_later_one():
    from tunelab.train.loop import improves

    assert improves(1.0, 0.9, best_loss=0.5, top_score=0.8)  # more right answers, though less confident
    assert not improves(0.4, 0.7, best_loss=0.5, top_score=0.8)  # lower loss, fewer right answers
    assert improves(0.6, 0.8, best_loss=0.5, top_score=0.8)  # a tie: the later, longer-trained weights
    # 7 validation rows: 6 of 7 after 7 of 7 is one example, noise; 5 of 7 is two, and loses.
    assert improves(0.6, 6 / 7, best_loss=0.5, top_score=1.0, tolerance=1 / 7)
    assert not improves(0.6, 5 / 7, best_loss=0.5, top_score=1.0, tolerance=1 / 7)
    assert improves(0.4, None, best_loss=0.5, top_score=None) and not improves(0.6, None, best_loss=0.5, top_score=None)
    assert improves(3.0, 0.1, best_loss=None, top_score=None)


def _first_logged_loss(model_dir, run_dir, train, classify=None, batch_size=4):
    """(the resolved classify section, the first loss the loop logs) of a one-step classify run on ``train``."""
    from tunelab.config import parse_config

    raw = {"task": "classify", "model": str(model_dir), "data": {"max_length": 64},
           "train": {"batch_size": batch_size, "lr": 5e-3, "max_steps": 1, "log_every": 1, "precision": "fp32", "seed": 0}}
    if classify is not None:
        raw["classify"] = classify
    config = parse_config(raw)
    run_training(config, records_split(train, classify_records(6)), run_dir=run_dir)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return config.classify, next(m["loss"] for m in lines if "loss" in m)


def test_classify_label_smoothing_reaches_the_training_loss(tiny_model_dir, tmp_path):
    """The default (0.2) is the loss the loop trains on: the same first batch, before any update, scores
    differently with and without it (a recipe that dropped the setting would log equal losses)."""

    def first_loss(smoothing, name):
        classify = None if smoothing is None else {"label_smoothing": smoothing}
        settings, loss = _first_logged_loss(tiny_model_dir, tmp_path / name, classify_records(12), classify)
        return settings.label_smoothing, loss

    default, smoothed = first_loss(None, "default")
    none, plain = first_loss(0.0, "none")
    assert default == 0.2 and none == 0.0
    assert abs(smoothed - plain) > 1e-4


def test_balanced_class_weights_are_scikit_learns():
    """n / (labels x count of the label), the weights scikit-learn's class_weight='balanced' gives the same labels."""
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    from tunelab.tasks.classify import balanced_class_weights

    labels = [0] * 6 + [1] * 3 + [2]
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.array(labels))
    weights = balanced_class_weights(labels, 3)
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)
    assert abs(float(weights[torch.tensor(labels)].mean()) - 1.0) < 1e-6  # the loss keeps its scale
    assert balanced_class_weights([0, 0, 1], 3)[2] == 0  # a label without examples weighs nothing


def test_classify_class_weights_reach_the_training_loss(tiny_model_dir, tmp_path):
    """classify.class_weights: balanced on skewed training rows changes the first logged loss (the same batch,
    before any update); none, the default, leaves it as the plain recipe's."""
    records = classify_records(12)
    skewed = [r for i, r in enumerate(records) if i % 3 == 0 or i < 6]  # 4 x billing, 2 x each other label
    assert len({r.label for r in skewed}) == 3 and len(skewed) == 8

    def first_loss(weights, name):
        classify = None if weights is None else {"class_weights": weights}
        settings, loss = _first_logged_loss(tiny_model_dir, tmp_path / name, skewed, classify, batch_size=16)
        return settings.class_weights, loss

    default, plain = first_loss(None, "default")
    balanced, weighted = first_loss("balanced", "balanced")
    assert default == "none" and balanced == "balanced"
    assert abs(weighted - plain) > 1e-4


def test_a_full_classify_run_starts_its_label_rows_at_the_names_and_saves_them_in_an_untied_head(tiny_model_dir, tmp_path):
    """train.method=full used to skip the label head, so classify.label_init (default: name) did nothing and the
    label rows started at arbitrary code tokens. With a learning rate too small to move anything, the saved
    model's label rows are the name-initialised ones, the input embeddings the base's, and scoring agrees."""
    from transformers import AutoModelForCausalLM

    from tunelab.evaluation.predict import label_logits as score_prompts
    from tunelab.runs import load_run

    config = tiny_config(tiny_model_dir, task="classify", method="full", lr=1e-12, max_steps=1)
    run_training(config, records_split(classify_records(12), classify_records(6)), run_dir=tmp_path / "run")
    run = RunFolder(tmp_path / "run")
    assert (run.model / "config.json").is_file() and not run.adapter.exists()
    label_ids = json.loads(run.labels.read_text())["token_ids"]
    saved = AutoModelForCausalLM.from_pretrained(run.model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    names = label_name_token_ids(json.loads(run.labels.read_text())["labels"], load_run(run.root).tokenizer)
    start = LabelHead.initialise(base, label_ids, names)
    expected = base.get_output_embeddings().weight[torch.tensor(label_ids)] + start.delta
    torch.testing.assert_close(saved.get_output_embeddings().weight[torch.tensor(label_ids)], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(saved.get_input_embeddings().weight, base.get_input_embeddings().weight, atol=1e-6, rtol=0)

    loaded = load_run(run.root)
    prompts = [[5, 9, 12, 40, 7], [3, 8, 21]]
    torch.testing.assert_close(torch.from_numpy(score_prompts(loaded.model, prompts, label_ids)),
                               torch.from_numpy(score_prompts(base, prompts, label_ids, label_head=start)), atol=1e-4, rtol=1e-4)
