"""A deterministic, honest train/validation/test split, saved so every evaluation uses the same test set.

- Records with the same normalized input (``keys.input_key``) form one group and always land on the
  same side, so a duplicate can never be trained on and then tested.
- Groups are ordered by a SHA-256 of (seed, group key): the same split on every run, platform and
  Python version, whatever the order of the file. For classify the order is stratified: each label's
  groups are spread evenly over the order, so every side gets each label in proportion.
- With ``data.group_field`` (records carry a ``group``: a country) the order is stratified by group instead, and by
  label within each group: each (group, label) cell's inputs are spread evenly, then each group's inputs are spread
  evenly over the order in the order of those cells. Every side then gets each group's share as nearly as whole
  records allow (a group of 40 at test_size 0.1: 4 test examples, not 0 to 9 by the luck of the hash), so a group's
  verdict says "too few" only when its data is too small; each label keeps its share within each group. An input
  written in two groups is spread under the one most of its copies have (ties: alphabetical); a group of one record
  sits mid-order, so with test and validation shares under a half together it stays in train; records without a group (out-of-scope ones,
  read without the column) are one group of their own. Rows with an empty group never get here: they are invalid
  records. Without any group the order is exactly the label-stratified one above, so the split is unchanged.
- The first ``test_size`` share of the order is the test set, the next ``validation_size`` share the
  validation set, the rest is train; for classify, a label's last group stays in train (held out, it
  could be neither learned nor validated); so does the last group of a label that occurs only on inputs also
  written with another label (a conflicting group is filed under its most common label), which is warned about.
  A user-given test (or validation) file replaces the held-out one.
- classify with ``data.out_of_scope_label``: records with that label (in train, and every record of
  ``data.out_of_scope``) are never trained on. In their own seeded order they are shared between test
  and validation in proportion to the in-scope records of each side, so both sides have the same
  out-of-scope share and the threshold is chosen on the mix it is tested on (also when a test or
  validation file is given: they are the only out-of-scope examples to choose and test it with).
- ``split.json`` keeps the record ids of each side and a fingerprint of the data, so a resumed run
  or ``tunelab eval`` reuses exactly the same test ids, and a changed data file is detected.
- The overlap warnings compare inputs look-alike characters aside (``keys.lookalike_key``: full-width letters,
  zero-width characters): the groups keep ``input_key``, so such copies can land on two sides, and are said.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import DataConfig, RunConfig
from tunelab.data.formats import RecordError
from tunelab.data.keys import input_key, lookalike_key, stable_hash
from tunelab.data.near_copies import NearCopies
from tunelab.data.read import load_result
from tunelab.data.records import ClassifyRecord, Record, TextRecord
from tunelab.errors import DataError
from tunelab.paths import atomic_write_text

SPLIT_VERSION = 1


def data_fingerprint(records: Sequence[Record]) -> str:
    """A hash of the data's content, independent of record order."""
    return stable_hash(*sorted(record.id for record in records))[:24]


@dataclass
class Split:
    """Train/validation/test records of one run and how they were chosen."""

    task: str
    train: list[Record]
    validation: list[Record]
    test: list[Record]
    seed: int = 0
    test_size: float = 0.0
    validation_size: float = 0.0
    test_from: str = "held out"  # or the test file's path
    validation_from: str = "held out"
    warnings: list[str] = field(default_factory=list)
    skipped: list[RecordError] = field(default_factory=list)  # bad records dropped with skip_invalid
    out_of_scope_label: str | None = None  # classify: never trained; in validation and test only
    # Test requests a word or a number away from a training or validation one (``data.near_copies``), found by the split
    # step and kept in split.json so the report and ``tunelab show`` say it; None: not looked for, or documents.
    near_copies: NearCopies | None = None

    @property
    def data_fingerprint(self) -> str:
        return data_fingerprint([*self.train, *self.validation, *self.test])

    @property
    def fingerprint(self) -> str:
        """A hash of the data and of which records went where: equal fingerprints, equal splits."""
        return stable_hash(
            self.data_fingerprint,
            self.task,
            "test",
            *sorted(r.id for r in self.test),
            "validation",
            *sorted(r.id for r in self.validation),
        )[:24]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}

    def sample_test(self, limit: int | None, seed: int = 0) -> list[Record]:
        """At most ``limit`` test records, chosen by a seeded hash order (stable like the split itself)."""
        if limit is None or limit >= len(self.test):
            return list(self.test)
        ranked = sorted(range(len(self.test)), key=lambda i: stable_hash(str(seed), self.test[i].id, str(i)))
        keep = set(ranked[:limit])
        return [record for i, record in enumerate(self.test) if i in keep]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SPLIT_VERSION,
            "task": self.task,
            "seed": self.seed,
            "test_size": self.test_size,
            "validation_size": self.validation_size,
            "test_from": self.test_from,
            "validation_from": self.validation_from,
            "out_of_scope_label": self.out_of_scope_label,
            "data_fingerprint": self.data_fingerprint,
            "fingerprint": self.fingerprint,
            "sizes": self.sizes(),
            "warnings": list(self.warnings),
            "skipped": [str(error) for error in self.skipped],
            "near_copies": self.near_copies.to_dict() if self.near_copies is not None else None,
            "train": [r.id for r in self.train],
            "validation": [r.id for r in self.validation],
            "test": [r.id for r in self.test],
        }

    def save(self, path: str | Path) -> None:
        """Write ``split.json`` atomically."""
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path, records: Sequence[Record]) -> Split:
        """Rebuild a saved split from ``records`` (all of them: train data plus any test/validation file).

        Raises:
            DataError: when the file is unreadable, or the data no longer holds every saved record.
        """
        path = Path(path)
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            sides = {name: saved[name] for name in ("train", "validation", "test")}
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise DataError(f"{path}: not a readable split file ({error})") from None
        # An id may repeat (exact duplicates, or a record in both the train and the test file): hand
        # each occurrence the next side it was saved on, in the order train, validation, test.
        queue: dict[str, list[str]] = defaultdict(list)
        for name, ids in sides.items():
            for record_id in ids:
                queue[record_id].append(name)
        by_side: dict[str, list[Record]] = {"train": [], "validation": [], "test": []}
        for record in records:
            pending = queue.get(record.id)
            if pending:
                by_side[pending.pop(0)].append(record)
        missing = [record_id for record_id, pending in queue.items() if pending]
        if missing:
            raise DataError(
                f"{path}: {len(missing)} record(s) of the saved split are no longer in the data "
                f"(e.g. id {missing[0]}); the data changed since the split was made",
                "restore the original data, or start a new run to make a new split",
            )
        extra = len(records) - sum(len(v) for v in by_side.values())
        split = cls(
            task=saved.get("task", ""),
            train=by_side["train"],
            validation=by_side["validation"],
            test=by_side["test"],
            seed=saved.get("seed", 0),
            test_size=saved.get("test_size", 0.0),
            validation_size=saved.get("validation_size", 0.0),
            test_from=saved.get("test_from", "held out"),
            validation_from=saved.get("validation_from", "held out"),
            warnings=list(saved.get("warnings", [])),
            out_of_scope_label=saved.get("out_of_scope_label"),
            near_copies=read_saved_near_copies(saved),
        )
        if extra:
            split.warnings.append(f"{extra} record(s) in the data are not in the saved split and are not used")
        return split


def read_saved_near_copies(saved: Any) -> NearCopies | None:
    """split.json's near-copy finding; None in a split saved before it was kept, or one that cannot be read."""
    found = saved.get("near_copies") if isinstance(saved, dict) else None
    if not isinstance(found, dict):
        return None
    try:
        return NearCopies.from_dict(found)
    except (KeyError, TypeError, ValueError):
        return None


def _stratified_order(records: Sequence[Record], task: str, seed: int) -> list[list[int]]:
    """Groups of record indexes (same normalized input) in split order (see the module docstring)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        groups[input_key(record)].append(index)
    rank = {key: stable_hash(str(seed), key) for key in groups}
    if all(getattr(records[i], "group", None) is None for members in groups.values() for i in members):
        position = _spread({key: _stratum(records, members, task) for key, members in groups.items()}, rank.__getitem__)
    else:
        # data.group_field: each (group, label) cell spread evenly first, then each group's inputs spread evenly in
        # the order of those cells, so a group gets its share of every side and, within it, each label its share.
        cell = _spread({key: (_group(records, members), _stratum(records, members, task)) for key, members in groups.items()},
                       rank.__getitem__)
        position = _spread({key: _group(records, members) for key, members in groups.items()}, lambda key: (cell[key], rank[key]))
    ordered = sorted(groups, key=lambda key: (position[key], rank[key]))
    return [groups[key] for key in ordered]


def _spread(stratum_of: dict[str, Any], order_key: Callable[[str], Any]) -> dict[str, float]:
    """Each key's position in [0, 1): the keys of one stratum, sorted by ``order_key``, spread evenly over it."""
    strata: dict[Any, list[str]] = defaultdict(list)
    for key, stratum in stratum_of.items():
        strata[stratum].append(key)
    position: dict[str, float] = {}
    for keys in strata.values():
        keys.sort(key=order_key)
        for i, key in enumerate(keys):
            position[key] = (i + 0.5) / len(keys)
    return position


def _group(records: Sequence[Record], members: Sequence[int]) -> str | None:
    """The group (``data.group_field``) an input is spread under: the one most of its copies have (ties: alphabetical;
    records without a group count as a group of their own, named None)."""
    groups = Counter(getattr(records[i], "group", None) for i in members)
    return min(groups, key=lambda group: (-groups[group], group or ""))


def _stratum(records: Sequence[Record], members: Sequence[int], task: str) -> str:
    """The label a group is stratified under (classify; other tasks have one stratum)."""
    if task != "classify":
        return ""
    labels = Counter(records[i].label for i in members)  # type: ignore[union-attr]
    # A group with conflicting labels is filed under its most common label (ties: alphabetical).
    return min(labels, key=lambda label: (-labels[label], label))


def _labels_of(records: Sequence[Record], members: Sequence[int], task: str) -> set[str]:
    """Every label of a group (classify; other tasks have none)."""
    return {records[i].label for i in members} if task == "classify" else set()  # type: ignore[union-attr]


def _labels_only_in_conflicts(records: Sequence[Record], order: Sequence[Sequence[int]], task: str) -> set[str]:
    """Labels that occur only in groups filed under another label (an input written with two labels): the
    last-group rule, which counts the groups filed under a label, cannot keep them in train."""
    if task != "classify":
        return set()
    filed = {_stratum(records, members, task) for members in order}
    return {label for members in order for label in _labels_of(records, members, task)} - filed


def conflict_only_label_warnings(records: Sequence[Record], task: str) -> list[str]:
    """One line per label that occurs only on inputs also written with another label (``data check`` says it too)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        groups[input_key(record)].append(index)
    order = list(groups.values())
    return _hidden_label_warnings(records, order, _labels_only_in_conflicts(records, order, task))


def _hidden_label_warnings(records: Sequence[Record], order: Sequence[Sequence[int]], hidden: set[str]) -> list[str]:
    """One line per label of ``_labels_only_in_conflicts``, with the rows that carry it and those they conflict with."""
    warnings = []
    for label in sorted(hidden):
        groups = [members for members in order if any(records[i].label == label for i in members)]  # type: ignore[union-attr]
        own = [records[i].source or records[i].id for members in groups for i in members if records[i].label == label]  # type: ignore[union-attr]
        others = [f"{records[i].source or records[i].id} ({records[i].label})" for members in groups for i in members if records[i].label != label]  # type: ignore[union-attr]
        warnings.append(
            f"label '{label}' occurs only on inputs that also have another label ({', '.join(own[:5])}; beside "
            f"{', '.join(others[:5])}): one such input stays in train so the label can be learned, from rows that "
            "contradict each other; give it examples of its own, or relabel those rows"
        )
    return warnings


def _count(total: int, share: float) -> int:
    if share <= 0:
        return 0
    return max(1, int(total * share + 0.5))


def split_records(
    records: Sequence[Record],
    task: str,
    *,
    test_size: float = 0.1,
    validation_size: float = 0.1,
    seed: int = 0,
    test_records: Sequence[Record] | None = None,
    validation_records: Sequence[Record] | None = None,
    out_of_scope_label: str | None = None,
    out_of_scope_records: Sequence[Record] = (),
) -> Split:
    """Split ``records`` (see the module docstring); given test/validation records replace held-out ones.

    Within each side, records keep their order in the data; out-of-scope records come after the others.

    Raises:
        DataError: when there are too few records to hold out the requested shares.
    """
    outside: list[Record] = []
    if out_of_scope_label is not None:
        outside = [r for r in records if r.label == out_of_scope_label] + list(out_of_scope_records)  # type: ignore[union-attr]
        records = [r for r in records if r.label != out_of_scope_label]  # type: ignore[union-attr]
    hold_test = 0.0 if test_records is not None else test_size
    hold_validation = 0.0 if validation_records is not None else validation_size
    total = len(records)
    wanted_test, wanted_validation = _count(total, hold_test), _count(total, hold_validation)
    if total - wanted_test - wanted_validation < 1:
        raise DataError(
            f"{total} record(s) are too few to hold out {wanted_test} for test and {wanted_validation} for validation",
            "add data, lower data.test_size / data.validation_size, or give a test file (data.test)",
        )
    side, order, hidden = _sides(records, task, seed, wanted_test, wanted_validation)
    train = [r for r, s in zip(records, side, strict=True) if s == "train"]
    validation = list(validation_records) if validation_records is not None else [r for r, s in zip(records, side, strict=True) if s == "validation"]
    test = list(test_records) if test_records is not None else [r for r, s in zip(records, side, strict=True) if s == "test"]
    out_test, out_validation = _share_out_of_scope(outside, task, seed, len(test), len(validation))
    split = Split(
        task, train, validation + out_validation, test + out_test, seed=seed, test_size=test_size,
        validation_size=validation_size, out_of_scope_label=out_of_scope_label,
    )
    split.warnings.extend(_hidden_label_warnings(records, order, hidden))
    split.warnings.extend(overlap_warnings(split))
    if out_of_scope_label is not None:
        if not out_validation:
            split.warnings.append(
                f"no out-of-scope record ('{out_of_scope_label}') in validation: the confidence threshold stays 0 "
                "(nothing is answered out of scope)"
            )
        if not out_test:
            split.warnings.append(f"no out-of-scope record ('{out_of_scope_label}') in test: out-of-scope recall is not measured")
    return split


def _sides(records: Sequence[Record], task: str, seed: int, wanted_test: int, wanted_validation: int) -> tuple[list[str], list[list[int]], set[str]]:
    """(each record's side: "train", "validation" or "test"; the order it was cut from; the labels that occur only on
    conflicting inputs): about ``wanted_test`` and ``wanted_validation`` records held out (see the module docstring)."""
    side = ["train"] * len(records)
    counts = {"test": 0, "validation": 0}
    order = _stratified_order(records, task, seed)
    groups_in_train = Counter(_stratum(records, members, task) for members in order)
    hidden = _labels_only_in_conflicts(records, order, task)
    hidden_in_train = Counter(label for members in order for label in _labels_of(records, members, task) if label in hidden)
    for members in order:
        if counts["test"] < wanted_test:
            name = "test"
        elif counts["validation"] < wanted_validation:
            name = "validation"
        else:
            break
        stratum = _stratum(records, members, task)
        if task == "classify" and groups_in_train[stratum] == 1:
            # A label's last group stays in train: held out, it could be neither learned nor validated.
            continue
        mine = [label for label in _labels_of(records, members, task) if label in hidden]
        if any(hidden_in_train[label] == 1 for label in mine):
            # The same for a label no group is filed under (it occurs only beside another label on one input). Only
            # data with such a label is split differently: for all other data this never holds.
            continue
        hidden_in_train.subtract(mine)
        groups_in_train[stratum] -= 1
        for index in members:
            side[index] = name
        counts[name] += len(members)
    return side, order, hidden


def split_shares(
    records: Sequence[Record], task: str, *, test_size: float, validation_size: float = 0.0, seed: int = 0
) -> tuple[list[Record], list[Record], list[Record]]:
    """(train, validation, test) of records held in memory, cut by the rule of ``split_records``: the same seeded
    order, stratified by label and by ``group``, near copies (``keys.input_key``) on one side, a label's last input
    kept in train. Each side keeps the records' order.

    For a caller that splits records it made itself (``tunelab retrain``'s new ones): no ``Split``, no warnings, and no
    minimum size: too few records give short or empty held-out sides (for classify, train keeps every label).
    """
    total = len(records)
    side, _, _ = _sides(records, task, seed, _count(total, test_size), _count(total, validation_size))
    held = {name: [r for r, s in zip(records, side, strict=True) if s == name] for name in ("train", "validation", "test")}
    return held["train"], held["validation"], held["test"]


def _share_out_of_scope(outside: Sequence[Record], task: str, seed: int, in_test: int, in_validation: int) -> tuple[list[Record], list[Record]]:
    """Out-of-scope records shared between test and validation as in_test : in_validation, in a seeded order.

    Each side with in-scope records gets at least one when there are two or more.
    """
    if not outside:
        return [], []
    total = len(outside)
    wanted_test = int(total * in_test / (in_test + in_validation) + 0.5) if in_test + in_validation else (total + 1) // 2
    if total > 1:
        wanted_test = min(max(wanted_test, 1 if in_test else 0), total - 1 if in_validation else total)
    side = ["validation"] * len(outside)
    placed = 0
    for members in _stratified_order(outside, task, seed):
        if placed >= wanted_test:
            break
        for index in members:
            side[index] = "test"
        placed += len(members)
    test = [r for r, s in zip(outside, side, strict=True) if s == "test"]
    validation = [r for r, s in zip(outside, side, strict=True) if s == "validation"]
    return test, validation


def nested_subsets(records: Sequence[Record], sizes: Sequence[int], *, task: str, seed: int = 0) -> list[list[Record]]:
    """Seeded subsets of ``records`` of about each of ``sizes`` examples, each inside the next larger one.

    What a learning curve trains on: the same seeded order is cut at every size, so a larger subset
    only adds examples (the points differ by the data added, not by a new draw). classify keeps each
    label's share: every label's records have their own seeded order and a subset takes the first
    ``round(share x size)`` of each, at least one, so no label goes missing at a small size (a subset's
    size can therefore differ from the size asked by a few examples). Within a subset records keep
    their order in ``records``.
    """
    order = sorted(range(len(records)), key=lambda i: stable_hash(str(seed), "nested", records[i].id, str(i)))
    total = len(records)
    subsets: list[list[Record]] = []
    for size in sizes:
        size = max(0, min(int(size), total))
        if task == "classify":
            by_label: dict[str, list[int]] = defaultdict(list)
            for index in order:
                by_label[records[index].label].append(index)  # type: ignore[union-attr]
            chosen = {i for members in by_label.values() for i in members[: max(1, round(len(members) * size / total))]} if size else set()
        else:
            chosen = set(order[:size])
        subsets.append([record for i, record in enumerate(records) if i in chosen])
    return subsets


def text_windows(records: Sequence[TextRecord], tokenizer: Any, max_length: int, stride: int) -> int:
    """How many training windows ``records`` become: what a text run learns from (``data.tokenize.tokenize_text``)."""
    from tunelab.data.tokenize import tokenize_text

    return sum(len(tokenize_text(record, tokenizer, max_length, stride)) for record in records)


def nested_text_subsets(
    records: Sequence[TextRecord], sizes: Sequence[int], *, tokenizer: Any, max_length: int, stride: int, seed: int = 0
) -> list[list[TextRecord]]:
    """Nested subsets of text documents of about each of ``sizes`` training *windows* (not documents).

    A text run learns from windows of ``max_length`` tokens, so a few long documents are thousands of tokens
    of training: counting documents left a user with 7 speeches no learning curve. Each document longer than
    one window keeps its first ``round(share x its windows)`` windows (at least one): the windows the real
    run trains on, cut where a window ends, and every document (each topic, each register) is at every size,
    so the curve measures the amount of text, not which few documents a draw happened to keep. Documents of
    one window cannot be cut: a seeded order keeps the first ``round(share x their count)``, as
    ``nested_subsets`` does. A smaller subset is inside every larger one (a shorter prefix, a shorter run of
    the same order). Only training documents are given here: held-out documents stay whole.
    """
    from tunelab.data.tokenize import tokenize_text, window_step

    pieces = [tokenize_text(record, tokenizer, max_length, stride) for record in records]
    step = window_step(max_length, stride)  # where each window starts after the one before
    total = sum(len(windows) for windows in pieces)
    short = [i for i, windows in enumerate(pieces) if len(windows) == 1]
    order = sorted(short, key=lambda i: stable_hash(str(seed), "nested", records[i].id, str(i)))
    subsets: list[list[TextRecord]] = []
    for size in sizes:
        share = max(0, min(int(size), total)) / total if total else 0.0
        kept = set(order[: round(share * len(order))])
        subset: list[TextRecord] = []
        for i, (record, windows) in enumerate(zip(records, pieces, strict=True)):
            if len(windows) == 1:
                if i in kept:
                    subset.append(record)
                continue
            keep = max(1, round(share * len(windows)))
            if keep >= len(windows):
                subset.append(record)
                continue
            # The ids the first ``keep`` windows cover, less one: tokenizing the prefix adds the document's EOS again.
            ids = [token for window in windows[: keep - 1] for token in window.input_ids[:step]] + windows[keep - 1].input_ids
            text = tokenizer.decode(ids[:-1], skip_special_tokens=True)
            subset.append(dataclasses.replace(record, text=text, source=f"{record.source}#windows0-{keep - 1}", id=""))
        subsets.append(subset)
    return subsets


def check_classify_labels(split: Split, out_of_scope_label: str | None = None) -> list[str]:
    """The labels classify trains on (sorted); every in-scope validation label must be one of them.

    Raises:
        DataError: when training has fewer than two labels, or validation has a label training lacks
            (the best checkpoint is chosen on validation, which must be answerable).
    """
    labels = sorted({record.label for record in split.train} - {out_of_scope_label})
    if len(labels) < 2:
        raise DataError(f"classify needs at least two labels in the training split, found {labels}")
    unseen = [r for r in split.validation if r.label != out_of_scope_label and r.label not in set(labels)]
    if unseen:
        raise DataError(
            f"{unseen[0].source or 'a validation record'}: label {unseen[0].label!r} does not occur in the training split "
            f"({len(unseen)} validation records like it)",
            "give every label a few training examples, or drop the rare labels",
        )
    return labels


def overlap_warnings(split: Split) -> list[str]:
    """Warnings for test/validation examples whose normalized input also occurs in train, test examples that also
    occur in validation (the best checkpoint is chosen there), and unseen labels."""
    warnings = []
    # Look-alike characters aside: the split keeps such inputs apart (its key cannot change), so they can straddle it.
    train_keys = {lookalike_key(r) for r in split.train}
    validation_keys = {lookalike_key(r) for r in split.validation}
    for name, records, other, keys in (
        ("test", split.test, "train", train_keys),
        ("validation", split.validation, "train", train_keys),
        ("test", split.test, "validation", validation_keys),
    ):
        leaked = [r for r in records if lookalike_key(r) in keys]
        if leaked:
            examples = ", ".join(r.source or r.id for r in leaked[:5])
            warnings.append(f"{len(leaked)} {name} example(s) also occur in {other} (same normalized text): {examples}")
    if split.task == "classify":
        train_labels = {r.label for r in split.train if isinstance(r, ClassifyRecord)}
        test_labels = {r.label for r in split.test if isinstance(r, ClassifyRecord)} - {split.out_of_scope_label}
        unseen = sorted(test_labels - train_labels)
        if unseen:
            warnings.append(f"{len(unseen)} test label(s) never occur in train: {', '.join(unseen[:10])}")
    return warnings


def _load_with_errors(path: str, task: str, data: DataConfig, limit: bool) -> tuple[list[Record], list[RecordError]]:
    # data.limit is for quick trials on train; a test file is always read whole.
    config = data if limit else data.model_copy(update={"limit": None})
    result = load_result(path, task, config)
    return result.records, result.errors


def make_split(config: RunConfig) -> Split:
    """Read ``config.data`` and split it (see the module docstring).

    Raises:
        DataError: when data.train is not set, a file is bad (unless data.skip_invalid), or too small.
    """
    data = config.data
    if not data.train:
        raise DataError("no training data: data.train is not set", "set data.train in the config (a file, folder or glob)")
    records, skipped = _load_with_errors(data.train, config.task, data, limit=True)
    test_records = validation_records = None
    if data.test:
        test_records, errors = _load_with_errors(data.test, config.task, data, limit=False)
        skipped += errors
    if data.validation:
        validation_records, errors = _load_with_errors(data.validation, config.task, data, limit=False)
        skipped += errors
    out_of_scope: list[Record] = []
    if data.out_of_scope:
        out_of_scope, errors = _load_with_errors(data.out_of_scope, config.task, _without_group(data), limit=False)
        skipped += errors
        _check_out_of_scope_file(out_of_scope, data)
    split = split_records(
        records,
        config.task,
        test_size=data.test_size,
        validation_size=data.validation_size,
        seed=data.seed,
        test_records=test_records,
        validation_records=validation_records,
        out_of_scope_label=data.out_of_scope_label,
        out_of_scope_records=out_of_scope,
    )
    split.test_from = data.test or "held out"
    split.validation_from = data.validation or "held out"
    split.skipped = skipped
    return split


def _without_group(data: DataConfig) -> DataConfig:
    """How the out-of-scope file is read: without ``data.group_field``. Its requests belong to no category, and
    usually to no group either (spam, jokes, another company's questions): asking each for a country would refuse the
    file; they count in the verdict over the whole test set, in no group's."""
    return data.model_copy(update={"group_field": None})


def _check_out_of_scope_file(records: Sequence[Record], data: DataConfig) -> None:
    wrong = [r for r in records if getattr(r, "label", None) != data.out_of_scope_label]
    if wrong:
        raise DataError(
            f"{wrong[0].source or data.out_of_scope}: label {getattr(wrong[0], 'label', None)!r} in data.out_of_scope "
            f"is not data.out_of_scope_label {data.out_of_scope_label!r} ({len(wrong)} record(s) like it)",
            "label every record of the out-of-scope file with data.out_of_scope_label, or move in-scope ones to data.train",
        )


def load_split(path: str | Path, config: RunConfig) -> Split:
    """Re-read the data named by ``config`` and rebuild the split saved at ``path`` (resume, eval).

    Raises:
        DataError: when the data changed since the split was saved, or cannot be read.
    """
    data = config.data.model_copy(update={"skip_invalid": True})
    records: list[Record] = []
    for source, limit in ((data.train, True), (data.test, False), (data.validation, False)):
        if source:
            records += _load_with_errors(source, config.task, data, limit)[0]
    if data.out_of_scope:
        records += _load_with_errors(data.out_of_scope, config.task, _without_group(data), False)[0]
    return Split.load(path, records)


def learning_records(split: Any) -> list[Record]:
    """What a baseline learns from: the split's training and validation records (what the tuned model saw).

    With an out-of-scope label, the training records only: the validation queries choose each
    opponent's threshold, so none may have learned from them (the tuned model never trains on them).
    """
    if getattr(split, "out_of_scope_label", None) is not None:
        return list(split.train)
    return [*split.train, *split.validation]
