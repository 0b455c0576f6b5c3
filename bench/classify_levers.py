"""One classify-recipe lever at a time: train the real recipe with config overrides, score held-out rows.

The rows come from a shared dataset's training file: ``--labels`` intents drawn with the seed,
``--per-label`` training rows each (10% of them kept for validation, as ``tunelab run`` does) and
``--test-per-label`` other rows each for scoring. These are the rows the defaults were chosen on;
bench/quality.py reports on other seeds and all labels.

    PYTHONPATH=src python bench/classify_levers.py --dataset banking77 --labels 20 --per-label 10 train.lr=1e-3
    PYTHONPATH=src python bench/classify_levers.py --dataset banking77 --labels 20 classify.label_head=false
    PYTHONPATH=src python bench/classify_levers.py --dataset quickstart-train --per-label 30 --test-per-label 10 --seed 1

Each run appends one JSON line to bench/results/classify_levers.jsonl and rewrites classify_levers.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import time
from collections import defaultdict
from pathlib import Path

from common import RESULTS_DIR, SHARED_DATA, append_row, markdown_table

DATASETS = {"banking77": "banking77", "hwu64": "hwu64/trainset", "snips": "snips"}
# The quickstart's own training file (its test file is never read here: it is what bench/quality.py reports on).
QUICKSTART_TRAIN = Path(__file__).resolve().parents[1] / "examples" / "support-routing" / "train.jsonl"
RESULTS = RESULTS_DIR / "classify_levers.jsonl"


def subsample(records, per_label: int, test_per_label: int, seed: int, labels: int | None, skew: float = 1.0):
    """Training, validation and test rows per label; ``skew`` R > 1 draws skewed training data: the labels' counts
    fall geometrically from ``per_label`` to ``per_label / R`` (at least 2) in a seeded order; test stays balanced."""
    by_label = defaultdict(list)
    for record in records:
        by_label[record.label].append(record)
    rng = random.Random(seed)
    chosen = sorted(by_label)
    if labels:
        chosen = sorted(rng.sample(chosen, labels))
    counts = {label: per_label for label in chosen}
    if skew > 1.0:
        order = rng.sample(chosen, len(chosen))
        steps = max(1, len(order) - 1)
        counts = {label: max(2, round(per_label * skew ** (-i / steps))) for i, label in enumerate(order)}
    train, validation, test = [], [], []
    for label in chosen:
        rows = list(by_label[label])
        rng.shuffle(rows)
        kept = rows[: counts[label]]
        held = max(1, round(len(kept) * 0.1))
        validation += kept[:held]
        train += kept[held:]
        test += rows[per_label : per_label + test_per_label]
    return train, validation, test


def dataset_records(dataset: str) -> list:
    """The classify records of a shared dataset (its preset), or of the quickstart's training file."""
    from tunelab.config import DataConfig
    from tunelab.data.read import load_records

    if dataset == "quickstart-train":
        return load_records(str(QUICKSTART_TRAIN), "classify", DataConfig())
    return load_records(str(SHARED_DATA / DATASETS[dataset]), "classify", DataConfig(preset=dataset))


def _start_lora_from(path: Path) -> None:
    """Make the classify recipe start its LoRA from ``path``'s weights (a prototype hook for a lever; not in tunelab)."""
    from safetensors.torch import load_file

    import tunelab.tasks.classify as recipe

    weights = load_file(str(path))
    plain = recipe.apply_method

    def apply_then_load(model, config):
        model = plain(model, config)
        own = dict(model.named_parameters())
        missing = [name for name in weights if name not in own]
        if missing:
            raise SystemExit(f"--init-lora: {len(missing)} weights match nothing in the model, e.g. {missing[0]}")
        import torch

        with torch.no_grad():
            for name, tensor in weights.items():
                own[name].copy_(tensor.to(own[name].dtype))
        print(json.dumps({"init_lora": str(path), "tensors": len(weights)}), flush=True)
        return model

    recipe.apply_method = apply_then_load


def _head_lr_times(factor: float) -> None:
    """Train the label head's rows at ``factor`` x the learning rate of the rest (a prototype hook for a lever; not in tunelab)."""
    import tunelab.train.loop as loop

    plain = loop.make_optimizer

    def make(model, config):
        optimizer = plain(model, config)
        head = [p for n, p in model.named_parameters() if n.endswith("label_head.delta") and p.requires_grad]
        if len(head) != 1:
            raise SystemExit("--head-lr-times: the run has no label head")
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if p is not head[0]]
        optimizer.param_groups = [g for g in optimizer.param_groups if g["params"]]
        optimizer.add_param_group({"params": head, "weight_decay": 0.0, "lr": config.lr * factor})
        return optimizer

    loop.make_optimizer = make


def _truncate_layers(layers: int) -> None:
    """Load the model cut to its first ``layers`` decoder layers, for training and scoring (a prototype hook; not in tunelab)."""
    import tunelab.models.loader as loader

    plain = loader._from_pretrained

    def cut(*args, **kwargs):
        model, tokenizer = plain(*args, **kwargs)
        if len(model.model.layers) > layers:
            model.model.layers = model.model.layers[:layers]
            model.config.num_hidden_layers = layers
            if getattr(model.config, "layer_types", None):
                model.config.layer_types = model.config.layer_types[:layers]
        return model, tokenizer

    loader._from_pretrained = cut


def _prompt_suffix(suffix: str) -> None:
    """Put ``suffix`` after the text in the classify prompt, for training and scoring (a prototype hook; not in tunelab).

    ``{text}`` in the suffix is the request again: an "echo" prompt, whose second copy's tokens attend to the whole
    request, which a causal model's single pass never lets its early tokens do."""
    import tunelab.data.check
    import tunelab.data.templates as templates
    import tunelab.data.tokenize
    import tunelab.evaluation.evaluate
    import tunelab.inference

    def classify_messages(text, system_prompt=None):
        content = f"{templates.CLASSIFY_INSTRUCTION}\n\nText: {text}{suffix.replace('{text}', text)}"
        return templates.with_system_prompt([{"role": "user", "content": content}], system_prompt)

    for module in (templates, tunelab.data.check, tunelab.data.tokenize, tunelab.evaluation.evaluate, tunelab.inference):
        module.classify_messages = classify_messages


def _targets_by_prompt(by_text: dict) -> tuple[dict, dict]:
    """Make the classify recipe's tokenization record, for each training text in ``by_text``, its value keyed by the
    example's prompt ids (what a collate sees), and each label's index; returns the two dicts it fills."""
    import tunelab.tasks.classify as recipe

    targets: dict[tuple, object] = {}
    order: dict[str, int] = {}
    plain_tokenize = recipe.tokenize_records

    def tokenize(batch_records, task, tokenizer, **kwargs):
        examples, stats = plain_tokenize(batch_records, task, tokenizer, **kwargs)
        if len(examples) == len(batch_records):
            for record, example in zip(batch_records, examples, strict=True):
                order[record.label] = example.label
                if record.text in by_text:
                    targets[tuple(example.input_ids)] = by_text[record.text]
        return examples, stats

    recipe.tokenize_records = tokenize
    return targets, order


def _distill_embeddings(weight: float, records: list, eval_config, mode: str = "relational") -> None:
    """Add a relational distillation term to the classify loss (a prototype hook for a lever; not in tunelab).

    Within each training batch, the cosine similarities between the examples' final last-token states (centred on the
    batch mean) are pulled towards those of the same requests' sentence embeddings (the embedding baseline's model):
    ``weight`` x the summed squared difference per example. ``mode="direct"``: a linear map of the state (trained
    with the LoRA, dropped after training) is pulled towards the sentence embedding itself, ``weight`` x (1 - cosine)
    per example. Predictions still come from the tuned model alone; the
    embedding model is a teacher during training only, on the training rows only.
    """
    import numpy as np
    import torch

    import tunelab.tasks.classify as recipe
    import tunelab.train.batching as batching
    import tunelab.train.losses as losses
    from tunelab.models.embedding import embed_texts, load_embedding_model, resolve_embedding_model

    embedder = load_embedding_model(resolve_embedding_model(eval_config.embedding_model))
    texts = sorted({r.text for r in records})
    by_text = dict(zip(texts, embed_texts(embedder, texts), strict=True))
    targets, _ = _targets_by_prompt(by_text)
    plain_call = batching.ClassifyCollate.__call__

    def call(self, examples):
        batch = plain_call(self, examples)
        keys = [tuple(e.input_ids) for e in examples]
        if len(keys) > 2 and all(k in targets for k in keys):
            batch["distill_targets"] = torch.tensor(np.stack([targets[k] for k in keys]), dtype=torch.float32)
        return batch

    batching.ClassifyCollate.__call__ = call
    stash = {}
    plain_label_logits = losses.label_logits

    def label_logits(model, flat, *args, **kwargs):
        stash["states"] = flat
        return plain_label_logits(model, flat, *args, **kwargs)

    losses.label_logits = label_logits
    plain_loss = recipe.classify_loss_sum

    def relational(states: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s = states.float()
        s = torch.nn.functional.normalize(s - s.mean(0, keepdim=True), dim=-1)
        t = torch.nn.functional.normalize(teacher - teacher.mean(0, keepdim=True), dim=-1)
        return ((s @ s.T - t @ t.T) ** 2).mean(1).sum()

    import tunelab.train.loop as loop

    projection: list[torch.nn.Linear] = []
    plain_optimizer = loop.make_optimizer

    def make_optimizer(model, config):
        optimizer = plain_optimizer(model, config)
        if mode == "direct":
            hidden = model.get_input_embeddings().weight.shape[1]
            projection.append(torch.nn.Linear(hidden, len(next(iter(by_text.values())))))
            optimizer.add_param_group({"params": list(projection[0].parameters()), "weight_decay": 0.0, "lr": config.lr})
        return optimizer

    loop.make_optimizer = make_optimizer

    def direct(states: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        mapped = projection[0](states.float())
        return (1 - torch.nn.functional.cosine_similarity(mapped, teacher, dim=-1)).sum()

    def loss(model, batch, *args, **kwargs):
        value = plain_loss(model, batch, *args, **kwargs)
        if torch.is_grad_enabled() and "distill_targets" in batch:
            term = direct if mode == "direct" else relational
            value = value + weight * term(stash["states"], batch["distill_targets"].to(stash["states"].device))
        return value

    recipe.classify_loss_sum = loss


def _mixup(alpha: float) -> None:
    """Mix the last-token states of each training micro-batch (manifold mixup at the label head's input; a
    prototype hook for a lever, not in tunelab).

    Each training micro-batch draws lam ~ Beta(alpha, alpha) (the larger of lam and 1 - lam, so each mix stays
    nearer one of its two examples) and a permutation of its examples; the head scores lam x state + (1 - lam) x
    the permuted state, and the loss is lam x the cross-entropy against the example's label plus (1 - lam) x
    against the permuted one's, with the recipe's label smoothing. Gradients reach the LoRA through both states.
    Validation, calibration and every prediction score plain states: the saved model is an ordinary run.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    import tunelab.tasks.classify as recipe
    import tunelab.train.losses as losses

    plain = recipe.classify_loss_sum
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)

    def loss(model, batch, label_token_ids, label_head=None, label_smoothing=0.0, class_weights=None):
        if not torch.is_grad_enabled() or class_weights is not None or len(batch["class_labels"]) < 2:
            return plain(model, batch, label_token_ids, label_head, label_smoothing, class_weights)
        if "prefix_ids" in batch:
            hidden = losses.prefix_hidden_states(model, batch)
        else:
            hidden = losses.hidden_states(model, batch["input_ids"], batch["position_ids"])
        flat = hidden.reshape(-1, hidden.shape[-1])[batch["last_positions"]]
        lam = float(rng.beta(alpha, alpha))
        lam = max(lam, 1.0 - lam)
        order = torch.randperm(flat.shape[0], generator=generator).to(flat.device)
        logits = losses.label_logits(model, lam * flat + (1.0 - lam) * flat[order], label_token_ids, label_head).float()
        labels = batch["class_labels"]
        return lam * F.cross_entropy(logits, labels, reduction="sum", label_smoothing=label_smoothing) + (1.0 - lam) * F.cross_entropy(
            logits, labels[order], reduction="sum", label_smoothing=label_smoothing
        )

    recipe.classify_loss_sum = loss


def _probe_head(mix: float, c: float) -> None:
    """Start the label head from a linear probe (LP-FT, Kumar et al. 2022; a prototype hook for a lever, not in tunelab).

    Before any training step, the untrained model's final last-token states of the training prompts are fitted
    by a logistic regression without intercept (the head has no bias); its coefficients, rescaled to the mean norm
    of the output head's label rows, become the label rows (``mix`` = 1), or are mixed with the name-initialised
    rows (``mix`` between 0 and 1). The rest of the recipe is unchanged: fine-tuning starts from a head that already
    separates the training rows, so its first gradients move the representation less (the LP-FT argument).
    """
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    import tunelab.tasks.classify as recipe
    import tunelab.train.losses as losses
    from tunelab.models.heads import LabelHead

    captured: list = []
    plain_tokenize = recipe.tokenize_records

    def tokenize(batch_records, task, tokenizer, **kwargs):
        examples, stats = plain_tokenize(batch_records, task, tokenizer, **kwargs)
        captured.append(examples)
        return examples, stats

    recipe.tokenize_records = tokenize

    class ProbeHead(LabelHead):
        @classmethod
        def initialise(cls, model, token_ids, name_token_ids):
            head = LabelHead.initialise(model, token_ids, name_token_ids)
            examples = captured[0]
            states = []
            with torch.no_grad():
                for example in examples:
                    ids = torch.tensor([example.input_ids])
                    positions = torch.arange(ids.shape[1]).unsqueeze(0)
                    states.append(losses.hidden_states(model, ids, positions)[0, -1].float().numpy())
            x = np.stack(states)
            y = np.array([e.label for e in examples])
            probe = LogisticRegression(C=c, fit_intercept=False, max_iter=2000).fit(x, y)
            coef = np.zeros((len(token_ids), x.shape[1]), dtype=np.float32)
            if len(probe.classes_) == 2:
                coef[probe.classes_[1]] = probe.coef_[0] / 2
                coef[probe.classes_[0]] = -probe.coef_[0] / 2
            else:
                coef[probe.classes_] = probe.coef_
            from tunelab.models.heads import causal_lm_of

            rows = causal_lm_of(model).get_output_embeddings().weight.detach()[torch.tensor(token_ids)].float()
            coef_t = torch.tensor(coef)
            coef_t = coef_t * (rows.norm(dim=-1).mean() / coef_t.norm(dim=-1).mean().clamp(min=1e-6))
            start = rows + head.delta.detach()
            target = mix * coef_t + (1.0 - mix) * start
            print(json.dumps({"probe_head": {"rows": len(examples), "train_accuracy": float(probe.score(x, y)), "mix": mix, "C": c}}), flush=True)
            return cls(token_ids, target - rows)

    recipe.LabelHead = ProbeHead


def _word_dropout(rate: float, seed: int = 0) -> None:
    """Drop each of a training prompt's own tokens with probability ``rate``, anew at every step (a prototype hook).

    Word dropout (Iyyer et al. 2015) as augmentation: each epoch shows every request with a different tenth of its
    tokens missing, so the label head cannot lean on one token of ten examples. The template's tail (the tokens
    every prompt ends with, which the label head reads from) and the shared prefix are never dropped; validation
    batches (built under ``torch.no_grad``) are left whole.
    """
    import dataclasses

    import torch

    import tunelab.tasks.classify as recipe

    rng = random.Random(seed)
    plain = recipe.ClassifyCollate

    class Dropping(plain):
        def __call__(self, examples):
            if not torch.is_grad_enabled() or len(examples) < 2:
                return super().__call__(examples)
            prefix = len(self.prefix_ids or ())
            own = [e.input_ids[prefix:] for e in examples]
            tail = 0
            while all(len(x) > tail + 1 for x in own) and len({x[-1 - tail] for x in own}) == 1:
                tail += 1
            changed = []
            for example, ids in zip(examples, own, strict=True):
                body, end = ids[: len(ids) - tail], ids[len(ids) - tail :]
                kept = [t for t in body if rng.random() >= rate] or body[:1]
                changed.append(dataclasses.replace(example, input_ids=[*example.input_ids[:prefix], *kept, *end]))
            return super().__call__(changed)

    recipe.ClassifyCollate = Dropping


def _embedding_noise(alpha: float, seed: int = 0) -> None:
    """Add uniform noise to the input embeddings of every training forward (NEFTune, Jain et al. 2023; a prototype
    hook for a lever, not in tunelab).

    Each training step's token embeddings get noise drawn from U(-1, 1) x alpha / sqrt(width x hidden), anew at every
    step: a continuous cousin of word dropout that perturbs every token a little instead of removing a few. Validation,
    calibration and every prediction (run without gradients) see the plain embeddings.
    """
    import torch

    import tunelab.tasks.classify as recipe
    from tunelab.models.heads import causal_lm_of

    plain = recipe.apply_method
    generator = torch.Generator().manual_seed(seed)

    def noisy(module, inputs, output):
        if not torch.is_grad_enabled():
            return output
        scale = alpha / (output.shape[-2] * output.shape[-1]) ** 0.5
        noise = (torch.rand(output.shape, generator=generator) * 2 - 1) * scale
        return output + noise.to(output.dtype).to(output.device)

    def apply_then_hook(model, config):
        model = plain(model, config)
        causal_lm_of(model).get_input_embeddings().register_forward_hook(noisy)
        return model

    recipe.apply_method = apply_then_hook


def _teacher_smoothing(share: float, records: list, eval_config, seed: int = 0) -> None:
    """Spread the label smoothing's share by a stronger teacher's out-of-fold probabilities instead of uniformly
    (knowledge distillation at the output; a prototype hook for a lever, not in tunelab).

    The teacher is the embedding baseline's model (sentence embeddings + logistic regression, C=10): each training
    row's probabilities come from a classifier fitted on the other folds (5-fold, stratified), so they say which
    *other* intents the request resembles, which a classifier fitted on the row itself would not. The training
    target is (1 - share) x the one-hot label + share x those probabilities; the recipe's uniform label smoothing is
    replaced (set to 0 here). Validation, checkpoint choice, calibration and every prediction are the recipe's own:
    the teacher is used on the training rows, during training only.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    import tunelab.tasks.classify as recipe
    import tunelab.train.batching as batching
    from tunelab.models.embedding import embed_texts, load_embedding_model, resolve_embedding_model

    embedder = load_embedding_model(resolve_embedding_model(eval_config.embedding_model))
    rows = sorted(records, key=lambda r: r.id)
    x = embed_texts(embedder, [r.text for r in rows])
    y = np.array([r.label for r in rows])
    classes = sorted(set(y))
    oof = np.zeros((len(rows), len(classes)))
    folds = StratifiedKFold(n_splits=min(5, min(np.bincount(np.unique(y, return_inverse=True)[1]))), shuffle=True, random_state=seed)
    for fit, held in folds.split(x, y):
        model = LogisticRegression(C=10.0, max_iter=2000).fit(x[fit], y[fit])
        columns = [classes.index(c) for c in model.classes_]
        oof[np.ix_(held, columns)] = model.predict_proba(x[held])
    by_text = {r.text: oof[i] for i, r in enumerate(rows)}
    accuracy = float(np.mean(np.array(classes)[oof.argmax(1)] == y))
    print(json.dumps({"teacher_smoothing": {"share": share, "rows": len(rows), "out_of_fold_accuracy": round(accuracy, 4)}}), flush=True)
    targets, order = _targets_by_prompt(by_text)
    plain_call = batching.ClassifyCollate.__call__

    def call(self, examples):
        batch = plain_call(self, examples)
        keys = [tuple(e.input_ids) for e in examples]
        if all(k in targets for k in keys):
            width = max(order.values()) + 1
            soft = np.zeros((len(keys), width), dtype=np.float32)
            index = [order[c] for c in classes]
            for row, key in enumerate(keys):
                soft[row, index] = targets[key]
            batch["teacher_targets"] = torch.tensor(soft)
        return batch

    batching.ClassifyCollate.__call__ = call
    plain_loss = recipe.classify_loss_sum
    import tunelab.train.losses as losses

    def loss(model, batch, label_token_ids, label_head=None, label_smoothing=0.0, class_weights=None, prompt_lm_weight=0.0):
        if not torch.is_grad_enabled() or "teacher_targets" not in batch:
            return plain_loss(model, batch, label_token_ids, label_head, label_smoothing, class_weights, prompt_lm_weight)
        states = losses._classify_states(model, batch)
        logits = losses.label_logits(model, states[batch["last_positions"]], label_token_ids, label_head).float()
        labels = batch["class_labels"]
        teacher = batch["teacher_targets"].to(logits.device)[:, : logits.shape[1]]
        target = (1.0 - share) * F.one_hot(labels, logits.shape[1]).float() + share * teacher
        total = -(target * F.log_softmax(logits, dim=-1)).sum()
        if prompt_lm_weight:
            total = total + prompt_lm_weight * labels.numel() * losses.prompt_lm_loss_mean(model, batch, states)
        return total

    recipe.classify_loss_sum = loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="banking77", choices=[*sorted(DATASETS), "quickstart-train"])
    parser.add_argument("--per-label", type=int, default=10)
    parser.add_argument("--labels", type=int, default=None, help="intents drawn (default: all)")
    parser.add_argument("--test-per-label", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="")
    parser.add_argument("--skew", type=float, default=1.0,
                        help="skewed training data: label counts fall geometrically from --per-label to --per-label / SKEW")
    parser.add_argument("--init-lora", type=Path, default=None,
                        help="start the recipe's LoRA from these weights (bench/classify_contrastive.py --save) instead of a fresh one")
    parser.add_argument("--head-lr-times", type=float, default=None, help="prototype: the label head at this multiple of train.lr")
    parser.add_argument("--truncate-layers", type=int, default=None, help="prototype: the model cut to its first N decoder layers")
    parser.add_argument("--prompt-suffix", default=None, help="prototype: text put after the request in the classify prompt")
    parser.add_argument("--distill-embeddings", type=float, default=None,
                        help="prototype: weight of a relational distillation term towards the embedding model's similarities")
    parser.add_argument("--distill-mode", choices=["relational", "direct"], default="relational")
    parser.add_argument("--mixup", type=float, default=None, help="prototype: manifold mixup of the last-token states, Beta(ALPHA, ALPHA)")
    parser.add_argument("--probe-head", type=float, default=None, help="prototype: start the label head from a linear probe, mixed at this share with the name rows")
    parser.add_argument("--probe-c", type=float, default=1.0, help="prototype: the probe's inverse regularisation")
    parser.add_argument("--word-dropout", type=float, default=None, help="prototype: drop each training prompt token with this probability, anew each step")
    parser.add_argument("--embedding-noise", type=float, default=None, help="prototype: NEFTune noise of this alpha on the training steps' input embeddings")
    parser.add_argument("--teacher-smoothing", type=float, default=None,
                        help="prototype: spread this share of each target by the embedding teacher's out-of-fold probabilities (replaces label smoothing)")
    parser.add_argument("--train-on-validation", action="store_true",
                        help="prototype: train on the validation rows too (the rows the baselines learn from); checkpoint choice then sees trained rows")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.lr=1e-3")
    args = parser.parse_args()

    from tunelab.config import apply_overrides, parse_config
    from tunelab.data.split import Split
    from tunelab.evaluation.baselines import classical_baseline
    from tunelab.evaluation.evaluate import evaluate
    from tunelab.runs import load_run
    from tunelab.tasks import run_training

    train, validation, test = subsample(dataset_records(args.dataset), args.per_label, args.test_per_label, args.seed, args.labels, args.skew)
    if args.train_on_validation:
        train = [*train, *validation]
    if args.word_dropout is not None:
        _word_dropout(args.word_dropout)
    if args.teacher_smoothing is not None:
        from tunelab.config import EvalConfig

        _teacher_smoothing(args.teacher_smoothing, train, EvalConfig())
        args.overrides = [*args.overrides, "classify.label_smoothing=0"]
    if args.embedding_noise is not None:
        _embedding_noise(args.embedding_noise)
    if args.init_lora is not None:
        _start_lora_from(args.init_lora)
    if args.head_lr_times is not None:
        _head_lr_times(args.head_lr_times)
    if args.truncate_layers is not None:
        _truncate_layers(args.truncate_layers)
    if args.prompt_suffix is not None:
        _prompt_suffix(args.prompt_suffix.encode().decode("unicode_escape"))
    if args.distill_embeddings is not None:
        from tunelab.config import EvalConfig

        _distill_embeddings(args.distill_embeddings, train, EvalConfig(), args.distill_mode)
    if args.mixup is not None:
        _mixup(args.mixup)
    if args.probe_head is not None:
        _probe_head(args.probe_head, args.probe_c)
    name = f"levers-{args.dataset}-{args.tag or 'defaults'}-{int(time.time())}"
    output = RESULTS_DIR / "tmp" / "levers"
    raw = apply_overrides({"task": "classify", "model": "default", "name": name, "data": {"max_length": 128},
                           "train": {"output_dir": str(output)}}, args.overrides)
    config = parse_config(raw, source="overrides")
    started = time.perf_counter()
    result = run_training(config, Split("classify", train, validation, test), run_dir=output / name)
    train_seconds = time.perf_counter() - started
    # Peak resident memory of the process up to the end of training (Linux reports KiB), before the
    # evaluation and the baselines load anything else.
    peak_train_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tuned = load_run(result.run_dir)
    scored = evaluate(tuned, test, "classify", config=config.eval, data_config=config.data)
    # The opponent on the same rows, trained on what the tuned model saw (as tunelab run does).
    learned = train if args.train_on_validation else [*train, *validation]
    classical = classical_baseline(learned, test, data_config=config.data)
    from tunelab.evaluation.baselines import BaselineSkipped, embedding_baseline

    try:
        embedding = embedding_baseline(learned, test, config=config.eval, data_config=config.data).metrics["accuracy"]
    except BaselineSkipped:
        embedding = None
    # On skewed training data the held-out rows stay balanced, so accuracy is the mean per-label recall; weighted
    # by each label's share of the training rows it is the accuracy expected on a test split drawn like them.
    shares = defaultdict(float)
    for record in learned:
        shares[record.label] += 1 / len(learned)
    recall = {label: values["recall"] for label, values in scored.metrics["per_class"].items()}
    rare = sorted(shares, key=shares.get)[: max(1, len(shares) // 4)]
    row = {
        "skew": args.skew,
        "accuracy_as_trained": round(sum(shares[label] * recall.get(label, 0.0) for label in shares), 4),
        "rare_quarter_recall": round(sum(recall.get(label, 0.0) for label in rare) / len(rare), 4),
        "dataset": args.dataset, "labels": len({r.label for r in train}), "per_label": args.per_label, "seed": args.seed,
        "tag": args.tag, "overrides": args.overrides, "init_lora": str(args.init_lora) if args.init_lora else None, "train": len(train), "validation": len(validation), "test": len(test),
        "steps": result.steps, "final_loss": result.final_loss, "best_validation_loss": result.best_validation_loss,
        "best_validation_accuracy": result.best_validation_score,
        "accuracy": scored.metrics["accuracy"], "macro_f1": scored.metrics["macro_f1"],
        "classical_accuracy": classical.metrics["accuracy"], "embedding_accuracy": embedding,
        "ece": scored.metrics.get("ece"),
        "train_seconds": round(train_seconds, 1), "peak_train_mb": round(peak_train_mb), "tokens_per_second": round(result.tokens_per_second, 1),
        "load": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(row))
    append_row(RESULTS, row)
    rows = [json.loads(line) for line in RESULTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    table = markdown_table(
        ["dataset", "labels", "per label", "seed", "variant", "steps", "final loss", "best validation accuracy", "held-out accuracy",
         "macro-F1", "classical", "embedding", "train s", "peak MB", "load"],
        [[r["dataset"], r["labels"], r["per_label"], r["seed"], r.get("tag") or " ".join(r["overrides"]) or "defaults", r["steps"],
          r["final_loss"], r.get("best_validation_accuracy"), r["accuracy"], r["macro_f1"], r.get("classical_accuracy"), r.get("embedding_accuracy"), r["train_seconds"], r.get("peak_train_mb"), r["load"]] for r in rows],
    )
    (RESULTS_DIR / "classify_levers.md").write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
