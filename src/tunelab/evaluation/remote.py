"""A remote model (any OpenAI-compatible endpoint) scored exactly like a local one.

Same test records, same seeded sample, same checks, same prompts, same scoring functions
(``score_sft``, ``classify_metrics``), so its ``EvalResult`` pairs with the tuned model's in the
bootstrap of ``compare.py``. What differs is only how an answer is obtained:

- sft: the prompt (with ``data.system_prompt``) is sent as chat messages; greedy by default.
- classify: a chat API gives text, not label-token probabilities, so the model gets the zero-shot
  prompt that lists the categories by name (the base model's prompt) and its answer is read back as a
  label (``parse_label``). An answer that names no category counts as wrong and is listed; confidence
  is 1 (there is no probability), so ECE says nothing about a remote model. With an out-of-scope label
  (``data.out_of_scope_label``) a remote baseline's prompt offers it for a text that fits no category, and
  an answer naming it is the out-of-scope answer: no threshold on a confidence of 1 could ever reject.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from typing import Any

from tunelab.config import REMOTE_TASKS, DataConfig, EndpointConfig, EvalConfig
from tunelab.data.labels import LabelMap, OutOfScope
from tunelab.data.records import ClassifyRecord, Record
from tunelab.data.templates import with_system_prompt, zero_shot_messages
from tunelab.estimate.prices import PriceTable
from tunelab.evaluation.evaluate import (
    check_test_records,
    references_of,
    rescore_classify,
    score_sft,
    select_test_records,
    unnamed_answers,
    unstopped_warning,
    with_group,
)
from tunelab.evaluation.metrics import classify_metrics, primary_metric
from tunelab.evaluation.result import EvalResult, test_fingerprint
from tunelab.remote.client import Answer, RemoteClient, RemoteError, RequestEstimate, text_tokens

Progress = Callable[[int], None]
UNPARSED = "(no category in the answer)"


def names_label_map(labels: Sequence[str]) -> LabelMap:
    """A label list whose answers are the labels' own names (a remote model has no label tokens).

    The token ids are placeholders: only ``labels`` and ``token_strings`` (= the names) shape the
    zero-shot prompt, and nothing is scored over token ids here.
    """
    return LabelMap(list(labels), list(range(len(labels))), list(labels))


def out_of_scope_option(label: str) -> str:
    """The sentence that offers a chat model the out-of-scope answer, by the label's own name (``parse_label`` reads it back)."""
    return f"If the text fits none of the categories, answer exactly: {label}"


def classify_conversation(
    text: str, labels: Sequence[str], system_prompt: str | None, out_of_scope_label: str | None = None
) -> list[dict[str, str]]:
    """The chat a remote model is asked for one text: the zero-shot prompt listing the categories by name.

    With ``out_of_scope_label`` the prompt also offers that label for a text that fits no category (after the
    instruction, before the text), as a user asking a chat model would: a chat API gives no probability a threshold
    could reject on, so without the option it could never answer out of scope. Without it the prompt is the plain
    zero-shot one, byte for byte (the request cache is keyed by it).
    """
    if out_of_scope_label is None:
        return zero_shot_messages(text, names_label_map(labels), system_prompt)
    categories = [label for label in labels if label != out_of_scope_label]  # an option, never one more category
    messages = zero_shot_messages(text, names_label_map(categories), system_prompt)
    asked = f"\n\nText: {text}"  # how zero_shot_messages ends the user turn
    instruction = messages[-1]["content"].removesuffix(asked)
    messages[-1] = {**messages[-1], "content": f"{instruction}\n{out_of_scope_option(out_of_scope_label)}{asked}"}
    return messages


def _normal(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text.strip().strip("\"'`*.:;,!()[]{}").lower()).strip()


def parse_label(answer: str | None, labels: Sequence[str]) -> str | None:
    """The category an answer names: the whole answer (case, quotes, ``_``/``-`` and end punctuation
    aside), else its first line, else the one category mentioned as whole words (the longest when one
    name contains another); None when no category, or several unrelated ones, are named."""
    if not answer or not answer.strip():
        return None
    by_normal = {_normal(label): label for label in labels}
    for candidate in (answer, answer.strip().splitlines()[0], re.sub(r"^(category|label|answer)\s*:\s*", "", answer.strip(), flags=re.I)):
        if _normal(candidate) in by_normal:
            return by_normal[_normal(candidate)]
    spoken = _normal(answer)
    found = [label for normal, label in by_normal.items() if normal and re.search(rf"(?<!\w){re.escape(normal)}(?!\w)", spoken)]
    if not found:
        return None
    longest = max(found, key=lambda label: len(_normal(label)))
    # "card arrival" and "card" both match: the longer one is meant; two unrelated names: ambiguous.
    if all(_normal(label) in _normal(longest) for label in found):
        return longest
    return None


def raise_for_failures(answers: Sequence[Answer], client: RemoteClient) -> None:
    """Refuse to score with holes: a failed request would count as a wrong answer the model never gave.

    Raises:
        RemoteError: naming how many failed and the first error (answered ones are cached: a rerun asks only the rest).
    """
    failed = [a for a in answers if a.error is not None]
    if failed:
        raise RemoteError(
            f"{len(failed)} of {len(answers)} requests to {client.display_name} failed after retries (first: {failed[0].error})",
            "rerun when the endpoint answers: the answers already received are cached and cost nothing again",
        )


def classify_rows(
    records: Sequence[ClassifyRecord], answers: Sequence[str | None], labels: Sequence[str], out_of_scope_label: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Rows, metrics and warnings of classify answers given as text (a remote model, a teacher).

    With ``out_of_scope_label`` (offered in the prompt: ``classify_conversation``) an answer naming it is the
    out-of-scope answer, scored by ``evaluate.rescore_classify`` as a local model's rejection is (a threshold of 0:
    every answer has confidence 1, so only the answer itself can say out of scope).
    """
    labels = [label for label in labels if label != out_of_scope_label]
    answerable = [*labels, out_of_scope_label] if out_of_scope_label is not None else labels
    predictions = [parse_label(answer, answerable) or UNPARSED for answer in answers]
    rows = []
    for record, answer, prediction in zip(records, answers, predictions, strict=True):
        rows.append(with_group({
            "id": record.id, "source": record.source, "prompt": record.text, "reference": record.label, "prediction": prediction,
            "answer": answer,
            "scores": {"correct": float(prediction == record.label), "confidence": 1.0,
                       "probability_of_reference": float(prediction == record.label), "known_label": record.label in labels},
        }, record))
    warnings = ["a chat API gives no probabilities: confidence is 1 for every answer, so ECE is not meaningful here"]
    if out_of_scope_label is not None:
        rows, metrics, more = rescore_classify(rows, labels, OutOfScope(out_of_scope_label, 0.0))
        return rows, metrics, warnings + more
    # An answer naming no category is its own (always wrong) class in the confusion matrix (classify_metrics adds it).
    metrics = classify_metrics([r.label for r in records], predictions, [1.0] * len(records), labels)
    return rows, metrics, warnings + unnamed_answers(rows, labels, metrics)


def evaluate_remote(
    client: RemoteClient,
    records: Sequence[Record],
    task: str,
    *,
    config: EvalConfig,
    data_config: DataConfig,
    labels: Sequence[str] | None = None,
    train_ids: Collection[str] | None = None,
    baseline_name: str | None = None,
    progress: Progress | None = None,
    out_of_scope_label: str | None = None,
) -> EvalResult:
    """Evaluate the remote model of ``client`` on ``records`` (classify: over ``labels``, default the test labels).

    classify with ``out_of_scope_label``: the prompt offers that label for a request that fits no category, and an
    answer naming it is the out-of-scope answer (``classify_conversation``, ``classify_rows``).

    Raises:
        ConfigError: for a task a chat API cannot be scored on (text, preference).
        DataError: for an empty test set, records of the wrong task, or an sft example without reference.
        RemoteError: when requests still fail after the retries.
    """
    _check_task(task)
    warnings = check_test_records(records, task, train_ids)
    out_of_scope_label = out_of_scope_label if task == "classify" else None
    chosen, conversations, ask, labels = _requests(records, task, config, data_config, labels, out_of_scope_label)
    if len(chosen) < len(records):
        warnings.append(f"evaluated a seeded sample of {len(chosen)} of {len(records)} test examples (max_test_examples)")
    if task == "classify":
        answers = client.chat_many(conversations, **ask, progress=progress)
        raise_for_failures(answers, client)
        rows, metrics, more = classify_rows(chosen, [a.text for a in answers], labels, out_of_scope_label)
    else:
        references = [references_of(r) for r in chosen]
        answers = client.chat_many(conversations, **ask, progress=progress)
        raise_for_failures(answers, client)
        # Stripped, as the local generation path strips its answers: the same answer scores the same.
        rows, metrics = score_sft(chosen, [(a.text or "").strip() for a in answers], references)
        more = unstopped_warning(sum(a.finish_reason == "length" for a in answers), len(answers), config)
    for row, answer in zip(rows, answers, strict=True):
        row["remote"] = {"latency_s": answer.latency_s, "input_tokens": answer.input_tokens, "output_tokens": answer.output_tokens,
                         "cached": answer.cached, "cost_usd": answer.cost_usd}
    usage = client.usage(answers)
    if usage.cost_usd is None:
        more.append(f"no price for {client.endpoint.name} in the price table: its cost is unknown (not 0)")
    settings = {
        "endpoint": {"base_url": client.endpoint.base_url, "name": client.endpoint.name},
        "prompt": "zero_shot_names" if task == "classify" else "chat", "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature, "usage": usage.to_dict(),
    }
    if out_of_scope_label is not None:
        settings["out_of_scope_option"] = out_of_scope_option(out_of_scope_label)
    if baseline_name:
        settings["baseline"] = baseline_name
    return EvalResult(
        task=task, model=client.display_name, n=len(rows), metrics={"primary": primary_metric(task, metrics, config.metric), **metrics}, rows=rows,
        settings=settings, test_fingerprint=test_fingerprint(task, (r.id for r in chosen)), baseline=baseline_name is not None,
        labels=list(labels) if task == "classify" else None, baseline_name=baseline_name, warnings=warnings + more,
    )


def _check_task(task: str) -> None:
    """Raises: ConfigError for a task a chat API cannot be scored on."""
    from tunelab.errors import ConfigError

    if task not in REMOTE_TASKS:
        raise ConfigError(f"a remote model can be evaluated on classify and sft, not {task}",
                          "a chat API returns answers, not the token log-likelihoods perplexity and preference need")


def _requests(
    records: Sequence[Record], task: str, config: EvalConfig, data_config: DataConfig, labels: Sequence[str] | None,
    out_of_scope_label: str | None = None,
) -> tuple[list[Record], list[list[dict[str, str]]], dict[str, Any], list[str] | None]:
    """The test records asked (the seeded sample), their chats, the decoding ``chat_many`` gets, and the classify labels:
    one place, so the estimate prices exactly the requests ``evaluate_remote`` sends (and finds the cached ones)."""
    chosen = select_test_records(records, data_config.max_test_examples, data_config.seed)
    system = data_config.system_prompt
    ask: dict[str, Any] = {"max_tokens": config.max_new_tokens, "temperature": config.temperature, "top_p": config.top_p, "seed": config.seed}
    if task == "classify":
        listed = labels if labels is not None else sorted({r.label for r in chosen})
        labels = [label for label in listed if label != out_of_scope_label]
        conversations = [classify_conversation(r.text, labels, system, out_of_scope_label) for r in chosen]
        return chosen, conversations, {**ask, "max_tokens": min(config.max_new_tokens, 32)}, labels
    return chosen, [with_system_prompt(r.prompt_messages, system) for r in chosen], ask, None


def estimate_remote(
    client: RemoteClient, records: Sequence[Record], task: str, *, config: EvalConfig, data_config: DataConfig,
    labels: Sequence[str] | None = None, out_of_scope_label: str | None = None,
) -> RequestEstimate:
    """What ``evaluate_remote`` with the same arguments would cost, before any request: a typical answer is the
    reference's length (sft) or the category's name (classify)."""
    _check_task(task)
    check_test_records(records, task, None)  # the records evaluate_remote refuses are refused here first, the same way
    out_of_scope_label = out_of_scope_label if task == "classify" else None
    chosen, conversations, ask, _ = _requests(records, task, config, data_config, labels, out_of_scope_label)
    return client.estimate(conversations, **ask, expected_output_tokens=[typical_answer_tokens(r, task) for r in chosen])


def typical_answer_tokens(record: Record, task: str) -> int | None:
    """The tokens a model's answer to ``record`` is expected to have: its category's name (classify), its first
    reference (sft); None when it has none (the estimate then counts the mean of the others)."""
    from tunelab.errors import DataError

    if task == "classify":
        return text_tokens(record.label)
    try:
        return text_tokens(references_of(record)[0])
    except DataError:
        return None


def remote_client(
    endpoint: EndpointConfig, *, concurrency: int | None = None, cache: bool = True, prices: PriceTable | None = None
) -> RemoteClient:
    """The client evaluation uses: the shared request cache under the user cache (``TUNELAB_CACHE``), the bundled prices
    (or ``prices``).

    Raises:
        ConfigError: when the endpoint's API key variable is empty.
    """
    from tunelab.remote.cache import RequestCache

    return RemoteClient(endpoint, cache=RequestCache() if cache else None, concurrency=concurrency, prices=prices)

