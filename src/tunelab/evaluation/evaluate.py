"""``evaluate``: one model on one test set, the same code before (baseline) and after training.

- classify: one forward pass per batch, scored over the label tokens only; the tuned model gets
  its training prompt, the base model (``baseline=True``) a zero-shot prompt listing the labels,
  scored over the same label tokens. Never generation.
- sft: batched greedy generation on the prompts, in the model's chat template, scored against
  every reference of the example.
- text: sliding-window negative log-likelihood of each held-out document, token-weighted; beside it, continuation
  samples of a few documents' openings (``eval.text_samples``) for people and a judge to read (``review``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from tunelab.config import VERDICT_METRICS, DataConfig, EvalConfig
from tunelab.data.labels import LabelMap, OutOfScope
from tunelab.data.records import ClassifyRecord, PreferenceRecord, Record, SFTRecord, TextRecord, message_text
from tunelab.data.templates import (
    with_system_prompt,
    zero_shot_messages,
)
from tunelab.data.tokenize import perplexity_stride, tokenize_text
from tunelab.errors import ConfigError, DataError
from tunelab.evaluation.metrics import (
    PRIMARY_METRIC,
    STRUCTURED_METRICS,
    TASK_METRICS,
    TEXT_SCORING,
    answer_kind,
    choose_threshold,
    classify_metrics,
    corpus_statistics,
    metric_values,
    primary_metric,
    sft_example_scores,
    text_metrics,
)
from tunelab.evaluation.predict import window_nll
from tunelab.evaluation.result import EvalResult, test_fingerprint
from tunelab.inference import (
    TEXT_OPENING_TOKENS,
    Classifier,
    chat_prompt,
    completion_prompt,
    seeded_subset,
    text_openings,
    zero_shot_extra_tokens,
)
from tunelab.models.generate import context_length, generate_answers
from tunelab.models.loader import on_inference_device
from tunelab.runtime import is_out_of_memory

RECORD_TYPES = {"text": TextRecord, "sft": SFTRecord, "classify": ClassifyRecord, "preference": PreferenceRecord}
Progress = Callable[[int], None]


def references_of(record: SFTRecord) -> list[str]:
    """An sft record's reference answers: its ``references`` when it has any, else its completion.

    Raises:
        DataError: when the record has no reference answer at all.
    """
    extra = [r for r in (getattr(record, "references", None) or ()) if isinstance(r, str) and r.strip()]
    if extra:
        return extra
    try:
        completion = record.completion
    except (ValueError, IndexError):
        completion = ""
    if not completion.strip():
        raise DataError(f"{record.source or record.id}: no reference answer (no non-empty assistant turn)", "give every test example a completion")
    return [completion]


def prompt_text(messages: Sequence[dict[str, str]]) -> str:
    """An sft prompt as one string (for reports, and what the retrieval baseline matches on)."""
    if len(messages) == 1:
        return message_text(messages[0])
    return "\n".join(f"{m['role']}: {message_text(m)}" for m in messages)


def select_test_records(records: Sequence[Record], limit: int | None, seed: int) -> list[Record]:
    """At most ``limit`` records, a seeded sample chosen by id (so before and after see the same ones)."""
    return seeded_subset(records, limit, seed)


def check_verdict_metric(task: str, records: Sequence[Record], data_config: DataConfig, metric: str | None) -> None:
    """Refuse, before anything is trained, an ``eval.metric`` the test set cannot measure: the sft metrics of answers
    that are data need references of that kind (``metrics.answer_kind``), which are read only with the data. The
    examples ``evaluate`` would score are the ones checked; other tasks' metrics are checked with the config.

    Raises:
        ConfigError: as ``metrics.primary_metric``, one line naming the metrics this test set has.
    """
    if metric is None:
        return
    if task != "sft":
        primary_metric(task, dict.fromkeys(VERDICT_METRICS.get(task, ())), metric)  # an unknown name (`tunelab eval --metric`)
        return
    chosen = select_test_records(records, data_config.max_test_examples, data_config.seed)
    kind = answer_kind([references_of(record) for record in chosen if isinstance(record, SFTRecord)])
    measured = [spec.name for spec in TASK_METRICS["sft"]] + list(STRUCTURED_METRICS.get(kind, ()) if kind else ())
    primary_metric(task, dict.fromkeys(measured), metric)


def check_test_records(records: Sequence[Record], task: str, train_ids: Collection[str] | None) -> list[str]:
    """Warnings about the test set (overlap with training, duplicates).

    Raises:
        ConfigError: for a task evaluation does not support.
        DataError: for an empty test set or records of the wrong task.
    """
    if task not in RECORD_TYPES:
        raise ConfigError(f"evaluation supports the tasks text, sft, classify and preference, not '{task}'")
    if not records:
        raise DataError("the test set is empty", "give a test file with examples, or a larger test_size")
    expected = RECORD_TYPES[task]
    wrong = [r.source or r.id for r in records if not isinstance(r, expected)]
    if wrong:
        raise DataError(f"{len(wrong)} test records are not {task} records (first: {wrong[0]})", f"read the file with task '{task}'")
    warnings = []
    if train_ids:
        overlap = [r.source or r.id for r in records if r.id in set(train_ids)]
        if overlap:
            warnings.append(
                f"{len(overlap)} of {len(records)} test examples also appear in the training data "
                f"(first: {', '.join(overlap[:3])}); the scores overstate how well the model generalises"
            )
    duplicates = [record_id for record_id, count in Counter(r.id for r in records).items() if count > 1]
    if duplicates:
        warnings.append(f"{len(duplicates)} test examples appear more than once; each copy is scored")
    return warnings


def _model_name(loaded: Any) -> str:
    name = loaded.source.display_name
    if loaded.base_source is not None:
        name += f" (adapter on {loaded.base_source.display_name})"
    return name


def evaluate(
    loaded: Any,
    records: Sequence[Record],
    task: str,
    *,
    config: EvalConfig,
    data_config: DataConfig,
    label_map: LabelMap | None = None,
    baseline: bool = False,
    train_ids: Collection[str] | None = None,
    progress: Progress | None = None,
    out_of_scope: OutOfScope | None = None,
) -> EvalResult:
    """Evaluate ``loaded`` (a ``tunelab.models.LoadedModel``) on ``records``.

    Args:
        loaded: the model and tokenizer (a base model, or a run with its adapter).
        records: the test records, all of ``task``'s type.
        task: text, sft or classify.
        config: generation and batching settings.
        data_config: max_length, stride, system_prompt, max_test_examples, seed.
        label_map: classify: label -> token (default: the run's labels.json, else built from the test labels).
        baseline: classify: ask the zero-shot prompt that lists the labels (for a model not trained on them);
            preference: rank pairs by the model's own per-token likelihood (the reference, before DPO).
        train_ids: ids of the training records; overlap with the test set is reported as a warning.
        progress: called with the number of examples just finished.
        out_of_scope: classify: the out-of-scope label and threshold (default: the run's out_of_scope.json,
            else ``data_config.out_of_scope_label`` with threshold 0: recognised, never answered).

    Raises:
        DataError: for an empty test set, records of the wrong task, or an sft example without reference.
        ConfigError: for a task evaluation does not support.
    """
    warnings = check_test_records(records, task, train_ids)
    chosen = select_test_records(records, data_config.max_test_examples, data_config.seed)
    if len(chosen) < len(records):
        warnings.append(f"evaluated a seeded sample of {len(chosen)} of {len(records)} test examples (max_test_examples)")
    settings: dict[str, Any] = {"batch_size": config.batch_size, "max_length": data_config.max_length}
    samples = None
    # Loaded on the CPU; on a GPU machine the answers are computed there (and the model given back after).
    with on_inference_device(loaded.model):
        try:
            if task == "classify":
                out_of_scope = resolve_out_of_scope(loaded, data_config, out_of_scope, baseline, warnings)
                label_map = _resolve_label_map(loaded, chosen, label_map, out_of_scope)
                rows, metrics, more = _evaluate_classify(loaded, chosen, config, data_config, label_map, baseline, settings, progress, out_of_scope)
            elif task == "sft":
                rows, metrics, more = _evaluate_sft(loaded, chosen, config, data_config, settings, progress)
            elif task == "preference":
                from tunelab.evaluation.preference import evaluate_preference

                rows, metrics, more = evaluate_preference(loaded, chosen, config, data_config, baseline, settings, progress)
            else:
                rows, metrics, more = _evaluate_text(loaded, chosen, config, data_config, settings, progress)
                samples = continuation_samples(loaded, chosen, config, data_config, settings, more)
        except RuntimeError as error:
            if is_out_of_memory(error):
                # As training's: one line naming what to lower, not torch's traceback.
                raise ConfigError(
                    f"out of memory evaluating with eval.batch_size={config.batch_size} and data.max_length={data_config.max_length}",
                    "lower eval.batch_size, or data.max_length",
                ) from None
            raise
    warnings += more
    return EvalResult(
        task=task,
        model=_model_name(loaded),
        n=len(rows),
        metrics={"primary": primary_metric(task, metrics, config.metric), **metrics},
        rows=rows,
        settings=settings,
        test_fingerprint=test_fingerprint(task, (r.id for r in chosen)),
        baseline=baseline,
        labels=list(label_map.labels) if task == "classify" and label_map else None,
        warnings=warnings,
        samples=samples,
    )


def _resolve_label_map(loaded: Any, records: Sequence[ClassifyRecord], label_map: LabelMap | None, out_of_scope: OutOfScope | None = None) -> LabelMap:
    if label_map is not None:
        return label_map
    if loaded.label_map is not None:
        return loaded.label_map
    # A model never trained on these labels: the test set's own labels, in a stable order.
    return LabelMap.for_records(records, loaded.tokenizer, out_of_scope.label if out_of_scope else None)


def resolve_out_of_scope(
    loaded: Any, data_config: DataConfig, given: OutOfScope | None, baseline: bool, warnings: list[str]
) -> OutOfScope | None:
    """Which out-of-scope rule a classify evaluation applies (see ``evaluate``'s ``out_of_scope``).

    A zero-shot prompt (``baseline``) never uses the tuned run's threshold: it was chosen for other scores.
    """
    if given is not None:
        return given
    saved = loaded.out_of_scope
    if saved is not None and not baseline:
        return saved
    if data_config.out_of_scope_label is not None:
        if not baseline:
            warnings.append(
                f"no out-of-scope threshold is saved with this model: '{data_config.out_of_scope_label}' queries are "
                "scored, but never answered (threshold 0)"
            )
        return OutOfScope(data_config.out_of_scope_label, 0.0)
    return None


def score_classify(
    records: Sequence[ClassifyRecord], probabilities: np.ndarray, labels: Sequence[str], out_of_scope: OutOfScope | None = None,
    out_of_scope_scores: Sequence[float] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Rows, metrics and warnings of classify predictions: ``probabilities[i, j]`` is P(labels[j] | records[i]).

    Shared by the model's evaluation and the baselines, so every opponent is scored the same way.
    With ``out_of_scope``, a query whose out-of-scope score (``out_of_scope_scores``, from
    ``Classifier.scored``; default: the top probability) is below its threshold is answered with its label.
    """
    labels = list(labels)
    position = {label: index for index, label in enumerate(labels)}
    rows = []
    for index, (record, probs) in enumerate(zip(records, probabilities, strict=True)):
        best = int(np.argmax(probs))
        known = record.label in position
        rows.append(
            {
                "id": record.id,
                "source": record.source,
                "prompt": record.text,
                "reference": record.label,
                "prediction": labels[best],
                "scores": {
                    "correct": float(known and labels[best] == record.label),
                    "confidence": float(probs[best]),
                    "probability_of_reference": float(probs[position[record.label]]) if known else 0.0,
                    "known_label": known,
                },
            }
        )
        with_group(rows[-1], record)
        if out_of_scope_scores is not None:
            rows[-1]["scores"]["out_of_scope_score"] = float(out_of_scope_scores[index])
    if out_of_scope is not None:
        return rescore_classify(rows, labels, out_of_scope)
    metrics = classify_metrics([r.label for r in records], [row["prediction"] for row in rows], [row["scores"]["confidence"] for row in rows], labels)
    return rows, metrics, _unknown_labels(rows, position, metrics)


def _unknown_labels(rows: Sequence[dict[str, Any]], known: Collection[str], metrics: dict[str, Any]) -> list[str]:
    unknown = Counter(row["reference"] for row in rows if row["reference"] not in known)
    if not unknown:
        return []
    metrics["unknown_labels"] = dict(unknown)
    metrics["unknown_label_examples"] = [row["source"] or row["id"] for row in rows if row["reference"] not in known]
    return [
        f"{sum(unknown.values())} test examples have labels the model was never trained on "
        f"({', '.join(sorted(unknown))}); they count as wrong"
    ]


def rescore_classify(
    rows: Sequence[dict[str, Any]], labels: Sequence[str], out_of_scope: OutOfScope
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Classify rows answered under ``out_of_scope`` (from each row's top label and its out-of-scope score), with metrics.

    ``label_prediction`` keeps the top label; ``prediction`` is the answer (the out-of-scope label when
    rejected). Any out-of-scope rule can be applied to an evaluation afterwards this way (the baselines'
    thresholds are chosen on their own validation scores).
    """
    result = []
    for row in rows:
        top = row.get("label_prediction", row["prediction"])
        scores = dict(row["scores"])
        # The score the rule's threshold applies to: the top probability, or one the evaluation stored with the row.
        answer = out_of_scope.answer(top, scores["out_of_scope_score"] if out_of_scope.needs_features else scores["confidence"])
        outside = row["reference"] == out_of_scope.label
        scores.update(
            label_correct=float(not outside and top == row["reference"]),
            correct=float(answer == row["reference"]),
            out_of_scope=float(outside),
            rejected=float(answer == out_of_scope.label),
            known_label=bool(scores.get("known_label")) or outside,
        )
        result.append({**row, "prediction": answer, "label_prediction": top, "scores": scores})
    metrics = classify_metrics(
        [row["reference"] for row in result], [row["prediction"] for row in result], [row["scores"]["confidence"] for row in result],
        list(labels), out_of_scope_label=out_of_scope.label, label_correct=[row["scores"]["label_correct"] for row in result],
    )
    metrics["out_of_scope_threshold"] = out_of_scope.threshold
    return result, metrics, _unknown_labels(result, {*labels, out_of_scope.label}, metrics) + unnamed_answers(result, {*labels, out_of_scope.label}, metrics)


UNNAMED_ANSWERS = "answers named no category"


def unnamed_answers(rows: Sequence[dict[str, Any]], labels: Collection[str], metrics: dict[str, Any]) -> list[str]:
    """The warning on answers whose top label is none of ``labels`` (a remote model's answer that names no category,
    ``remote.UNPARSED``): each counts as wrong, their number is ``metrics["unparsed_answers"]``; none when every answer names one."""
    unnamed = [row["source"] or row["id"] for row in rows if row.get("label_prediction", row["prediction"]) not in labels]
    if not unnamed:
        return []
    metrics["unparsed_answers"] = len(unnamed)
    return [f"{len(unnamed)} {UNNAMED_ANSWERS} (counted wrong; first: {', '.join(unnamed[:3])})"]


def classify_texts(loaded: Any, texts: Sequence[str], *, batch_size: int = 16) -> list[dict[str, Any]]:
    """A classify run's answers to ``texts``, as serving gives them (``tunelab.inference.Classifier``): the label
    (the out-of-scope label below the run's threshold), the top label, its probability and every label's probability.

    Raises:
        ConfigError: when ``loaded`` is no classify run (it has no label map).
    """
    if loaded.label_map is None:
        raise ConfigError("this model has no label map: it is not a classify run", "pass a classify run folder")
    return [answer.to_dict() for answer in Classifier.for_model(loaded).classify(loaded.model, texts, batch_size=batch_size)]


def calibrate_out_of_scope(validation: EvalResult, label: str) -> OutOfScope:
    """The out-of-scope threshold of a model chosen on its evaluation of the validation queries.

    The one home of the rule for the tuned model and every baseline (``metrics.choose_threshold``).
    """
    rows = validation.rows
    confidence = [row["scores"]["confidence"] for row in rows]
    top = [row.get("label_prediction", row["prediction"]) for row in rows]
    outside = [row["reference"] == label for row in rows]
    correct = [not out and t == row["reference"] for t, out, row in zip(top, outside, rows, strict=True)]
    # A model that answers the label itself (a remote one offered it in its prompt) is counted as its rejection is.
    answered_out = [t == label for t in top]
    threshold, accuracy = choose_threshold(confidence, correct, outside, answered_out)
    without = float(np.mean([c or (out and a) for c, out, a in zip(correct, outside, answered_out, strict=True)])) if rows else 0.0
    details = {"queries": len(rows), "out_of_scope": int(sum(outside)), "accuracy": accuracy, "accuracy_without_threshold": without}
    return OutOfScope(label, threshold, validation=details)


def apply_out_of_scope(result: EvalResult, out_of_scope: OutOfScope) -> EvalResult:
    """``result`` (classify) answered under ``out_of_scope``: rows, metrics and settings updated."""
    labels = result.labels or []
    rows, metrics, warnings = rescore_classify(result.rows, labels, out_of_scope)
    # Said again by rescore_classify, counted on these rows (a calibrated baseline's were scored with the validation rows).
    kept = [w for w in result.warnings if "never trained on" not in w and UNNAMED_ANSWERS not in w]
    return dataclasses.replace(
        result, rows=rows, metrics={"primary": result.metrics.get("primary", PRIMARY_METRIC["classify"]), **metrics},
        settings={**result.settings, "out_of_scope": out_of_scope.to_dict()}, warnings=kept + warnings,
    )


def _evaluate_classify(loaded, records, config, data_config, label_map, baseline, settings, progress, out_of_scope=None):
    tokenizer = loaded.tokenizer
    system = data_config.system_prompt
    limit = data_config.max_length
    if baseline:
        # The zero-shot instruction carries the whole label list (hundreds of tokens for 77 labels): the
        # text gets as many tokens as in the trained prompt, and the list is never cut to fit max_length.
        limit += zero_shot_extra_tokens(tokenizer, label_map, system)
    # The one classify inference (as served): the prompt, the text shortened to max_length and to the model's
    # context, the shared prefix computed once, the label rows. The run's trained label rows apply only to the labels
    # it was trained on, never to a zero-shot prompt.
    context = context_length(loaded.model)
    classifier = Classifier(
        tokenizer, label_map, limit, system, label_head=None if baseline else loaded.label_head, out_of_scope=out_of_scope,
        messages=(lambda text: zero_shot_messages(text, label_map, system)) if baseline else None, context=context,
    )  # fmt: skip
    cut_to_context = classifier.limit < limit
    # The prompt does not depend on the label; an unknown label is scored (as wrong), not refused.
    built = [classifier.prompt(record.text) for record in records]
    truncated = sum(cut for _, cut in built)
    probabilities, scores = classifier.scored(loaded.model, [ids for ids, _ in built], batch_size=config.batch_size, progress=progress)
    rows, metrics, warnings = score_classify(records, probabilities, label_map.labels, out_of_scope, scores)
    if truncated:
        bound = f"the model's context of {context} tokens" if cut_to_context else "max_length"
        warnings.append(f"{truncated} classify prompts were longer than {bound} and had their text shortened")
    settings.update(prompt="zero_shot" if baseline else "trained", labels=label_map.to_dict())
    if out_of_scope is not None:
        settings["out_of_scope"] = out_of_scope.to_dict()
    return rows, metrics, warnings


def with_group(row: dict[str, Any], record: Record) -> dict[str, Any]:
    """``row`` with its record's group (``data.group_field``) as ``group``, which the verdict reports by; a record without
    one adds nothing, so evaluations without groups keep their rows as they were."""
    group = getattr(record, "group", None)
    if group is not None:
        row["group"] = group
    return row


def score_sft(
    records: Sequence[SFTRecord], answers: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Rows and metrics of sft answers against every reference (shared by the model and the baselines)."""
    statistics = corpus_statistics(list(answers), references)
    kind = answer_kind(references)  # decided by the whole test set: every opponent scored on it gets the same metrics
    rows = []
    for index, (record, answer, refs) in enumerate(zip(records, answers, references, strict=True)):
        scores = sft_example_scores(answer, refs, kind)
        scores["bleu_stats"] = statistics["bleu"][index]
        scores["chrf_stats"] = statistics["chrf"][index]
        row = with_group({"id": record.id, "source": record.source, "prompt": prompt_text(record.prompt_messages), "reference": refs[0],
                          "prediction": answer, "scores": scores}, record)
        if len(refs) > 1:
            row["references"] = refs
        if len(record.prompt_messages) > 1:
            # ``prompt`` is one string to read; a preference pair made from this row needs the conversation itself.
            row["messages"] = record.prompt_messages
        rows.append(row)
    return rows, metric_values("sft", rows)


def prompt_room(loaded: Any, config: EvalConfig, max_length: int) -> int:
    """The most tokens an evaluated prompt keeps: ``max_length``, less when the model's context
    (``models.generate.context_length``, as ``tunelab generate`` and the server read it) leaves less beside
    ``eval.max_new_tokens``. The answer keeps its whole budget: cutting it per batch would make an answer's length
    depend on its neighbours; a GPT-2-style model fails with an IndexError past its positions.

    Raises:
        ConfigError: when ``eval.max_new_tokens`` alone fills the model's context.
    """
    context = context_length(loaded.model)
    if config.max_new_tokens >= context:
        raise ConfigError(
            f"eval.max_new_tokens ({config.max_new_tokens}) leaves no room for a prompt in the model's context of {context} "
            f"tokens: set eval.max_new_tokens (--max-new-tokens) below {context}"
        )
    return min(max_length, context - config.max_new_tokens)


def answer_prompts(
    loaded: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    config: EvalConfig,
    max_length: int,
    progress: Progress | None = None,
    tools: Sequence[Sequence[dict[str, Any]]] | None = None,
) -> tuple[list[str], int, int]:
    """The model's answers to chat prompts (the one generation path), how many prompts were cut, and how many answers
    reached ``eval.max_new_tokens`` before any end of turn (cut there: ``unstopped_warning``).

    A prompt longer than ``max_length`` (or than ``prompt_room``) keeps its end: the opened assistant turn is where
    the answer starts.
    ``tools``: each conversation's tool schemas (tool-calling records), handed to the chat template.
    """
    limit = prompt_room(loaded, config, max_length)
    prompts, truncated = [], 0
    for index, messages in enumerate(conversations):
        # The one chat preparation (as served); the system prompt is already in the messages here.
        prompt = chat_prompt(loaded.tokenizer, messages, max_length=limit, tools=tools[index] if tools else ())
        prompts.append(prompt.ids)
        truncated += prompt.truncated
    answers = generate_answers(
        loaded.model,
        loaded.tokenizer,
        prompts,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=config.seed,
        progress=progress,
    )
    return [a.text for a in answers], truncated, sum(not a.stopped for a in answers)


def unstopped_warning(unstopped: int, answers: int, config: EvalConfig) -> list[str]:
    """The warning for answers cut at ``eval.max_new_tokens`` (none when every answer ended): scored as cut, mid-sentence,
    they read as wrong answers when the model never learned to stop or the budget is short of the references."""
    if not unstopped:
        return []
    return [f"{unstopped} of {answers} answers reached eval.max_new_tokens={config.max_new_tokens} before an end of turn "
            "and were scored as cut there"]


def _evaluate_sft(loaded, records, config, data_config, settings, progress):
    references = [references_of(record) for record in records]
    conversations = [with_system_prompt(r.prompt_messages, data_config.system_prompt) for r in records]
    answers, truncated, unstopped = answer_prompts(loaded, conversations, config, data_config.max_length, progress, tools=[r.tools for r in records])
    rows, metrics = score_sft(records, answers, references)
    limit = prompt_room(loaded, config, data_config.max_length)
    bound = "max_length" if limit == data_config.max_length else (
        f"{limit} tokens (the model's context of {context_length(loaded.model)} less eval.max_new_tokens={config.max_new_tokens}; "
        f"data.max_length is {data_config.max_length})"
    )
    warnings = [f"{truncated} sft prompts were longer than {bound} and kept only their last tokens"] if truncated else []
    warnings += unstopped_warning(unstopped, len(answers), config)
    settings.update(max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p, seed=config.seed)
    return rows, metrics, warnings


def _evaluate_text(loaded, records, config, data_config, settings, progress):
    # A window reads at most the model's context (the one context_length): a GPT-2-style model fails with an
    # IndexError past its positions. The stride follows the window, so every token after a document's first has context.
    context = context_length(loaded.model)
    warnings = []
    if data_config.max_length > context:
        warnings.append(f"perplexity windows are the model's context of {context} tokens, not data.max_length={data_config.max_length}")
        data_config = data_config.model_copy(update={"max_length": context})
    stride = perplexity_stride(data_config)
    windows, owner = [], []
    for index, record in enumerate(records):
        for window in tokenize_text(record, loaded.tokenizer, data_config.max_length, stride, scoring=True):
            windows.append((window.input_ids, window.labels))
            owner.append(index)
    per_window = window_nll(loaded.model, windows, batch_size=config.batch_size)
    nll = [0.0] * len(records)
    tokens = [0] * len(records)
    for index, (total, count) in zip(owner, per_window, strict=True):
        nll[index] += total
        tokens[index] += count
    if progress:
        progress(len(records))
    rows = []
    for record, total, count in zip(records, nll, tokens, strict=True):
        byte_count = len(record.text.encode("utf-8"))
        per_doc = text_metrics(total, count, byte_count)
        excerpt = record.text[:300] + ("…" if len(record.text) > 300 else "")
        rows.append(
            {
                "id": record.id,
                "source": record.source,
                "prompt": "",
                "reference": excerpt,
                "prediction": "",
                "scores": {"nll": total, "tokens": count, "bytes": byte_count, "perplexity": per_doc["perplexity"]},
            }
        )
    metrics = text_metrics(sum(nll), sum(tokens), sum(len(r.text.encode("utf-8")) for r in records))
    empty = [r.source or r.id for r, count in zip(records, tokens, strict=True) if count == 0]
    if empty:
        warnings.append(f"{len(empty)} documents have no token to predict (first: {empty[0]})")
    settings.update(stride=stride, windows=len(windows), text_scoring=TEXT_SCORING)
    return rows, metrics, warnings


def continuation_samples(
    loaded: Any, records: Sequence[TextRecord], config: EvalConfig, data_config: DataConfig, settings: dict[str, Any],
    warnings: list[str],
) -> list[dict[str, Any]]:
    """A text evaluation's continuation samples (``inference.text_openings``): each opening continued as raw text
    (``inference.completion_prompt``, as ``tunelab generate`` continues a text run's prompt) through the one generation
    path, with ``config``'s decoding, answer length and seed, beside the author's own continuation (``reference``).

    Rows as an sft evaluation's (``id``, ``source``, ``prompt``, ``reference``, ``prediction``): the blind sheet, the
    Review page and the judge read them as they read answers. None are written with ``eval.text_samples`` 0, nor
    (said in ``warnings`` and ``settings["samples"]["why"]``) when ``eval.max_new_tokens`` fills the model's context:
    the samples are for reading, and perplexity, the verdict, never needed that room.
    """
    if not config.text_samples:
        return []
    try:
        limit = prompt_room(loaded, config, data_config.max_length)
    except ConfigError as error:
        why = f"no continuation samples: {error}"
        settings["samples"] = {"count": 0, "why": why}
        warnings.append(why)
        return []
    openings = text_openings(records, loaded.tokenizer, config.text_samples, data_config.seed, config.max_new_tokens)
    prompts = [completion_prompt(loaded.tokenizer, opening.opening, max_length=limit).ids for opening in openings]
    answers = generate_answers(
        loaded.model, loaded.tokenizer, prompts, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
        temperature=config.temperature, top_p=config.top_p, seed=config.seed,
    )  # fmt: skip
    settings["samples"] = {
        "count": len(openings), "opening_tokens": TEXT_OPENING_TOKENS, "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature, "top_p": config.top_p, "seed": config.seed,
    }  # fmt: skip
    return [
        {"id": o.record_id, "source": o.source, "prompt": o.opening, "reference": o.reference, "prediction": answer.text}
        for o, answer in zip(openings, answers, strict=True)
    ]
