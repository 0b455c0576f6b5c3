"""The answers of the system a user has now, read from a file and matched to the test requests.

The file is read by the data readers in the task's own layout (classify: the request's text and the label the
system answered; sft: the prompt and its answer), so every format, field option and ``file:line`` error of
training data holds for it. An answer is matched to a test record by the record's input key
(``keys.input_key``): the key the split and the leakage check use, so "Where is my card?" finds "where is my card".
"""

from __future__ import annotations

import json
import math
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunelab.config import DataConfig, PredictionsConfig
from tunelab.data.formats import RecordError, content_hash, iter_rows, resolve_files
from tunelab.data.keys import input_key
from tunelab.data.records import ClassifyRecord, Record, SFTRecord
from tunelab.errors import DataError

SHOWN = 5  # test requests named in the error of the missing ones


@dataclass(frozen=True)
class Prediction:
    """One answer of the current system: the label (classify) or the text (sft), its ``file:line`` and, where the file
    gives one, the probability the system put on it."""

    answer: str
    source: str
    probability: float | None = None


@dataclass
class Predictions:
    """A predictions file read: its answers by input key, and a hash of its content (the cache key's part)."""

    path: str
    by_key: dict[str, Prediction] = field(default_factory=dict)
    content_hash: str = ""


def reading_config(entry: PredictionsConfig, data: DataConfig) -> DataConfig:
    """The run's data settings with the predictions file's own format and fields (each one left out: the run's)."""
    fields = ("text_field", "label_field", "prompt_field", "completion_field", "messages_field")
    update: dict[str, Any] = {name: getattr(entry, name) for name in fields if getattr(entry, name) is not None}
    # Every answer is read (no cap, no preset's layout): a missing one is refused, never sampled away. A run's group
    # column (data.group_field) is the test records' own: an export of answers need not repeat it.
    update.update(format=entry.format, preset=None, limit=None, group_field=None)
    return data.model_copy(update=update)


def _answer(record: Record) -> str:
    if isinstance(record, ClassifyRecord):
        return record.label
    if isinstance(record, SFTRecord):
        return record.completion
    raise DataError(f"a predictions file answers classify or sft requests, not {type(record).__name__}s")


def _probabilities(entry: PredictionsConfig, data: DataConfig) -> tuple[dict[str, float], list[RecordError]]:
    """The optional probability column by ``file:line``; a value that is no probability is an error of its row."""
    column = entry.probability_field.strip().casefold()
    found: dict[str, float] = {}
    errors: list[RecordError] = []
    for file in resolve_files(entry.path):
        for source, row in iter_rows(file, data.format, data.max_record_bytes):
            if isinstance(row, RecordError):
                continue  # the record reader reports it
            names = [key for key in row if str(key).strip().casefold() == column]
            value = row[names[0]] if names else None
            if value is None or value == "":
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if isinstance(value, bool) or not 0.0 <= number <= 1.0:
                errors.append(RecordError(source, f"{entry.probability_field} '{value}' is no probability (a number from 0 to 1)"))
                continue
            found[source] = number
    return found, errors


def read_predictions(entry: PredictionsConfig, task: str, data: DataConfig) -> Predictions:
    """The answers of ``entry``'s file by input key.

    Raises:
        DataError: for rows the readers refuse (each ``file:line``, as for data) and for two different answers to one
            request (naming both lines).
    """
    from tunelab.data.read import read_records

    config = reading_config(entry, data)
    # The file is named in a config entry or on tunelab eval's command line: a missing column's hint names both.
    named_in = "the file's eval.baselines entry or with tunelab eval's --predictions-field NAME.FIELD=VALUE"
    read = read_records(entry.path, task, config, named_in=named_in)
    probabilities, errors = _probabilities(entry, config) if task == "classify" else ({}, [])
    errors = [*read.errors, *errors]
    if errors:
        listed = "; ".join(str(error) for error in errors[:10])
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise DataError(f"{len(errors)} unreadable prediction(s) in {entry.path}: {listed}{more}",
                        "fix them: every test request needs the answer the current system gave")
    result = Predictions(entry.path, content_hash=content_hash(entry.path))
    for record in read.records:
        prediction = Prediction(_answer(record), record.source, probabilities.get(record.source))
        key = input_key(record)
        earlier = result.by_key.get(key)
        if earlier is None:
            result.by_key[key] = prediction
        elif earlier.answer != prediction.answer:
            raise DataError(
                f"{entry.path}: two different predictions for one request: {earlier.source} answers {earlier.answer!r}, "
                f"{prediction.source} answers {prediction.answer!r}",
                "keep the one the current system gives (requests are matched by their text, case and punctuation aside)",
            )
    return result


def read_once(
    entry: PredictionsConfig, task: str, data: DataConfig, read: MutableMapping[str, Predictions] | None = None
) -> Predictions:
    """:func:`read_predictions`, parsed once per file content and reading settings kept in ``read`` (one run's: a
    ``tunelab run`` checks the file before the base model loads, matches it at the split and scores it as a baseline);
    None reads it afresh. Keyed by the file's content hash, so a file edited between two uses is read again.

    Raises:
        DataError: as :func:`read_predictions`.
    """
    if read is None:
        return read_predictions(entry, task, data)
    key = json.dumps([content_hash(entry.path), task, entry.model_dump(mode="json"), reading_config(entry, data).model_dump(mode="json")],
                     sort_keys=True, default=str)
    if key not in read:
        read[key] = read_predictions(entry, task, data)
    return read[key]


def match_predictions(
    predictions: Predictions, records: Sequence[Record], test_set: Sequence[Record] | None = None
) -> tuple[list[Prediction], list[str]]:
    """The answer to each of ``records`` (in order), and the notes to show (answers to requests outside ``test_set``,
    the whole test set ``records`` were sampled from by ``data.max_test_examples``; default ``records``: an answer to
    a test request left out of the sample answers a request of the test set all the same).

    Raises:
        DataError: when some record has no answer: how many, and the first few ``file:line``s.
    """
    keys = [input_key(record) for record in records]
    missing = [record.source or record.id for record, key in zip(records, keys, strict=True) if key not in predictions.by_key]
    if missing:
        shown = ", ".join(missing[:SHOWN]) + (", ..." if len(missing) > SHOWN else "")
        raise DataError(
            f"{len(missing)} of {len(records)} test requests have no prediction in {predictions.path} (first: {shown})",
            "export the current system's answer to every test request (matched by the request's text)",
        )
    wanted = set(keys) if test_set is None else {input_key(record) for record in test_set}
    outside = sum(1 for key in predictions.by_key if key not in wanted)
    notes = [f"{outside} predictions in {predictions.path} answer requests not in the test set: ignored"] if outside else []
    return [predictions.by_key[key] for key in keys], notes

