"""``tunelab data check``: everything wrong with a dataset, found before any compute is spent.

One pass over the file gives: counts; every bad record (``file:line`` and why); exact duplicates,
near duplicates (same normalized input, look-alike characters aside: ``keys.lookalike_key``) and the same input
with conflicting labels (and labels that occur only there); token lengths
with the model's tokenizer and how many examples ``max_length`` would truncate; the label
distribution and the label -> token mapping; leakage between a test file and the data, and its near-copies (``data.near_copies``: a test request a word or a number away
from a training one); personal data in the texts (``data.pii``, masked); and one
example rendered exactly as it will be trained, with the trained tokens marked.

Token lengths of very large files are measured on a seeded sample (``length_sample`` records), which
the report says; everything else is exact.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab.config import DataConfig
from tunelab.data.formats import RecordError, invalid_records
from tunelab.data.keys import input_key, lookalike_key, normalize_text, stable_hash, target_text, visible_text
from tunelab.data.labels import LabelMap
from tunelab.data.near_copies import NearCopies, find_near_copies
from tunelab.data.pii import PiiReport, scan_records
from tunelab.data.read import ReadResult, read_records
from tunelab.data.records import ClassifyRecord, PreferenceRecord, Record, SFTRecord, TextRecord
from tunelab.data.split import conflict_only_label_warnings
from tunelab.data.templates import (
    appends_eos,
    classify_messages,
    render_chat,
    render_prompt_ids,
    with_system_prompt,
)
from tunelab.data.tokenize import IGNORE_INDEX, tokenize_classify, tokenize_sft, tokenize_text
from tunelab.errors import DataError

FEW_EXAMPLES = 100
LENGTH_SAMPLE = 10_000
LISTED_GROUPS = 50
RARE_LABEL = 5
IMBALANCE_WARNING = 10.0


@dataclass
class DuplicateGroup:
    """Records that are one example: ``sources`` are their ``file:line``; ``labels`` for conflicts."""

    sources: list[str]
    preview: str
    labels: list[str] = field(default_factory=list)


@dataclass
class LengthStats:
    """Tokens per training example (prompt + answer, or a text window's document)."""

    measured: int
    total: int
    min: int
    median: float
    p95: int
    max: int
    over_max_length: int  # examples longer than max_length (truncated; text: cut into windows)
    max_length: int
    untrainable: int = 0  # sft: examples whose whole answer lies beyond max_length
    untrainable_sources: list[str] = field(default_factory=list)
    prompt_cut: int = 0  # sft: examples that lose the start of their context to fit max_length, every answer token kept
    answer_cut: int = 0  # sft: examples whose trained tokens do not all fit max_length (their end is cut; the prompt
    # keeps its last token)
    answer_cut_sources: list[str] = field(default_factory=list)

    @property
    def sampled(self) -> bool:
        return self.measured < self.total


@dataclass
class RenderedExample:
    """One example as the model sees it: (text, trained) pieces in order."""

    source: str
    segments: list[tuple[str, bool]]
    note: str = ""

    def bracketed(self) -> str:
        """The text with each trained span inside ``[[ ]]``."""
        return "".join(f"[[{text}]]" if trained else text for text, trained in self.segments)


@dataclass
class TestCheck:
    path: str
    records: int
    leaked: int  # test examples whose normalized input also occurs in the data
    leaked_sources: list[str]
    unseen_labels: list[str]
    groups: dict[str, int] = field(default_factory=dict)  # test records per group (data.group_field), most first
    near_copies: NearCopies | None = None  # test requests a word or a number away from a training one (None: documents)


@dataclass
class CheckReport:
    """Everything ``tunelab data check`` reports; ``errors`` non-empty means the data is not usable as is."""

    path: str
    task: str
    files: list[str]
    records: int
    invalid: list[RecordError] = field(default_factory=list)
    skip_invalid: bool = False
    other_errors: list[RecordError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    layouts: list[str] = field(default_factory=list)  # how files in a recognised layout were read (``ReadResult.layouts``)
    exact_duplicates: int = 0  # extra copies of identical records
    exact_duplicate_groups: list[DuplicateGroup] = field(default_factory=list)
    near_duplicates: int = 0  # extra records whose normalized input and answer equal another's
    near_duplicate_groups: list[DuplicateGroup] = field(default_factory=list)
    conflicts: int = 0  # inputs that occur with different labels (classify) or answers (sft)
    conflict_groups: list[DuplicateGroup] = field(default_factory=list)
    lookalikes: int = 0  # duplicate groups whose inputs differ only by look-alike characters (the split keeps them apart)
    lookalike_groups: list[DuplicateGroup] = field(default_factory=list)
    lengths: LengthStats | None = None
    labels: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)  # records per group (data.group_field), most first; {} without one
    group_field: str | None = None  # the column the groups were read from
    imbalance: float | None = None
    label_map: list[dict[str, Any]] = field(default_factory=list)
    test: TestCheck | None = None
    example: RenderedExample | None = None
    limited: bool = False
    pii: PiiReport | None = None  # personal data found in the texts (None: data.pii is off)

    @property
    def errors(self) -> list[RecordError]:
        """What makes the data unusable: bad records (unless skipped on request) and other failures."""
        return ([] if self.skip_invalid else list(self.invalid)) + list(self.other_errors)

    @property
    def skipped(self) -> list[RecordError]:
        return list(self.invalid) if self.skip_invalid else []

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("invalid", "other_errors"):
            data.pop(key)
        data["errors"] = [asdict(error) for error in self.errors]
        data["skipped"] = [asdict(error) for error in self.skipped]
        data["ok"] = self.ok
        if self.lengths is not None:
            data["lengths"]["sampled"] = self.lengths.sampled
        if self.example is not None:
            data["example"]["bracketed"] = self.example.bracketed()
        return data


def _preview(text: str, width: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _find_duplicates(report: CheckReport, records: Sequence[Record]) -> None:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        groups[lookalike_key(record)].append(index)
    for members in groups.values():
        if len(members) < 2:
            continue
        group = [records[i] for i in members]
        if len({input_key(r) for r in group}) > 1:
            # One example to a reader, two to the split (its key keeps look-alike characters apart).
            report.lookalikes += 1
            report.lookalike_groups.append(DuplicateGroup([r.source for r in group], _preview(_input_preview(group[0]))))
        by_id: dict[str, list[Record]] = defaultdict(list)
        for record in group:
            by_id[record.id].append(record)
        preview = _preview(_input_preview(group[0]))
        for copies in by_id.values():
            if len(copies) > 1:
                report.exact_duplicates += len(copies) - 1
                report.exact_duplicate_groups.append(DuplicateGroup([r.source for r in copies], preview))
        if len(by_id) < 2:
            continue
        representatives = [copies[0] for copies in by_id.values()]
        # A label is a class as written ("Yes" and "yes" are two tokens of the label map); answers are text.
        targets = {r.label if isinstance(r, ClassifyRecord) else normalize_text(target_text(r) or "") for r in representatives}
        if len(targets) > 1 and report.task in ("classify", "sft"):
            report.conflicts += 1
            labels = sorted({r.label for r in representatives}) if report.task == "classify" else []  # type: ignore[union-attr]
            report.conflict_groups.append(DuplicateGroup([r.source for r in representatives], preview, labels))
        elif len(targets) == 1:
            report.near_duplicates += len(representatives) - 1
            report.near_duplicate_groups.append(DuplicateGroup([r.source for r in representatives], preview))
    for name in ("exact_duplicate_groups", "near_duplicate_groups", "conflict_groups", "lookalike_groups"):
        setattr(report, name, getattr(report, name)[:LISTED_GROUPS])


def _input_preview(record: Record) -> str:
    from tunelab.data.keys import input_text

    return input_text(record)


def _sample(records: Sequence[Record], size: int) -> list[Record]:
    if len(records) <= size:
        return list(records)
    # A seeded hash order (not random.sample): the same sample on every run and platform.
    ranked = sorted(range(len(records)), key=lambda i: stable_hash("length-sample", records[i].id, str(i)))
    keep = sorted(ranked[:size])
    return [records[i] for i in keep]


def _batch_lengths(tokenizer: Any, texts: list[str]) -> list[int]:
    # One call per thousand texts: the fast tokenizer encodes a batch in Rust, far faster than one by one.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    encode = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)
    lengths: list[int] = []
    for start in range(0, len(texts), 1000):
        chunk = texts[start : start + 1000]
        if encode is not None:
            # The Rust tokenizer directly: lengths need no offsets, attention masks or Python-side padding.
            lengths.extend(len(encoding.ids) for encoding in encode(chunk, add_special_tokens=False))
        else:
            lengths.extend(len(ids) for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"])
    return lengths


def _chat_text(tokenizer: Any, messages: Sequence[dict], *, add_generation_prompt: bool, tools: Sequence[dict] = ()) -> str:
    return render_chat(tokenizer, messages, tools=tools, add_generation_prompt=add_generation_prompt)


def _lengths(
    records: Sequence[Record], task: str, tokenizer: Any, data: DataConfig, label_map: LabelMap | None, sample: int
) -> LengthStats:
    """Token lengths of the training examples, as ``tokenize.py`` builds them.

    The whole conversation is rendered once and the renders are encoded in batches (the chat
    template's turn markers are special tokens, so this equals the turn-by-turn ids of
    ``tokenize_sft``); only examples longer than max_length are tokenized turn by turn, to tell
    whether any of their answer survives truncation.
    """
    measured = _sample(records, sample)
    eos_id = tokenizer.eos_token_id
    untrainable: list[str] = []
    answer_cut: list[str] = []
    prompt_cut = 0
    if task == "sft":
        conversations = [with_system_prompt(list(r.messages), data.system_prompt) for r in measured]  # type: ignore[union-attr]
        texts = [_chat_text(tokenizer, messages, add_generation_prompt=False, tools=r.tools) for r, messages in zip(measured, conversations, strict=True)]  # type: ignore[union-attr]
        eos_text = tokenizer.eos_token or ""
        # tokenize_sft appends EOS to a turn the template ends with no special token of its own (not Gemma's
        # <end_of_turn> or Llama 3's <|eot_id|>)
        eos_added = appends_eos(tokenizer)
        lengths = []
        for record, text, n in zip(measured, texts, _batch_lengths(tokenizer, texts), strict=True):
            if eos_added and (not eos_text or eos_text not in text):
                n += sum(1 for m in record.messages if m["role"] == "assistant")
            lengths.append(n)
            if n > data.max_length:
                example = tokenize_sft(record, tokenizer, data.max_length, data.system_prompt)  # type: ignore[arg-type]
                whole = tokenize_sft(record, tokenizer, 10**9, data.system_prompt)  # type: ignore[arg-type]
                if example.trained_tokens == 0:
                    untrainable.append(record.source)
                elif example.trained_tokens < whole.trained_tokens:
                    answer_cut.append(record.source)
                else:
                    prompt_cut += 1  # every trained token fits: what was cut is context before them
    elif task == "text":
        extra = 1 if eos_id is not None else 0
        lengths = [n + extra for n in _batch_lengths(tokenizer, [r.text for r in measured])]  # type: ignore[union-attr]
    elif task == "classify":
        prompts = [_chat_text(tokenizer, classify_messages(r.text, data.system_prompt), add_generation_prompt=True) for r in measured]  # type: ignore[union-attr]
        lengths = [n + 1 for n in _batch_lengths(tokenizer, prompts)]
    else:
        prompts = [_chat_text(tokenizer, with_system_prompt(list(r.prompt), data.system_prompt), add_generation_prompt=True) for r in measured]  # type: ignore[union-attr]
        chosen = _batch_lengths(tokenizer, [r.chosen for r in measured])  # type: ignore[union-attr]
        rejected = _batch_lengths(tokenizer, [r.rejected for r in measured])  # type: ignore[union-attr]
        lengths = [p + max(c, r) + 1 for p, c, r in zip(_batch_lengths(tokenizer, prompts), chosen, rejected, strict=True)]
    ordered = sorted(lengths)
    return LengthStats(
        measured=len(measured),
        total=len(records),
        min=ordered[0],
        median=float(statistics.median(ordered)),
        p95=ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        max=ordered[-1],
        over_max_length=sum(1 for n in lengths if n > data.max_length),
        max_length=data.max_length,
        untrainable=len(untrainable),
        untrainable_sources=untrainable[:20],
        prompt_cut=prompt_cut,
        answer_cut=len(answer_cut),
        answer_cut_sources=answer_cut[:20],
    )


def _segments(tokenizer: Any, input_ids: list[int], trained: list[bool]) -> list[tuple[str, bool]]:
    segments: list[tuple[str, bool]] = []
    start = 0
    for end in range(1, len(input_ids) + 1):
        if end == len(input_ids) or trained[end] != trained[start]:
            segments.append((tokenizer.decode(input_ids[start:end]), trained[start]))
            start = end
    return segments


def render_example(record: Record, tokenizer: Any, data: DataConfig, label_map: LabelMap | None = None) -> RenderedExample:
    """``record`` as token ids decoded back to text, split into trained and untrained pieces."""
    if isinstance(record, SFTRecord):
        example = tokenize_sft(record, tokenizer, data.max_length, data.system_prompt)
        trained = [label != IGNORE_INDEX for label in example.labels]
        note = "truncated at max_length" if example.truncated else ""
        return RenderedExample(record.source, _segments(tokenizer, example.input_ids, trained), note)
    if isinstance(record, TextRecord):
        windows = tokenize_text(record, tokenizer, data.max_length, data.stride)
        first = windows[0]
        trained = [label != IGNORE_INDEX for label in first.labels]
        note = f"first of {len(windows)} windows of {data.max_length} tokens" if len(windows) > 1 else ""
        return RenderedExample(record.source, _segments(tokenizer, first.input_ids, trained), note)
    if isinstance(record, ClassifyRecord):
        if label_map is None or record.label not in label_map.labels:
            ids = render_prompt_ids(tokenizer, classify_messages(record.text, data.system_prompt))
            return RenderedExample(record.source, [(tokenizer.decode(ids), False)], "label token unknown (no label map)")
        example = tokenize_classify(record, tokenizer, label_map, data.max_length, data.system_prompt)
        answer = label_map.token_strings[example.label]
        note = f"label '{record.label}' is answered with the single token {answer!r}"
        return RenderedExample(record.source, [(tokenizer.decode(example.input_ids), False), (answer, True)], note)
    assert isinstance(record, PreferenceRecord)
    prompt_ids = render_prompt_ids(tokenizer, with_system_prompt(list(record.prompt), data.system_prompt))
    return RenderedExample(
        record.source,
        [(tokenizer.decode(prompt_ids), False), (record.chosen, True)],
        f"chosen shown trained; rejected: {_preview(record.rejected, 120)}",
    )


def _labels_spelled_two_ways(counts: Counter) -> list[list[str]]:
    """Groups of labels equal but for case, spaces, '-' and '_' ("Billing" / "billing", "card_arrival" /
    "Card-Arrival"), look-alike characters ("ｃａｒｄ", "card" with a zero-width space) or how a number is written
    ("1" / "1.0"), each group sorted; labels with no letter or digit ("+", "-") are left alone: they are codes, and
    so is a number's sign ("-1" / "1" are two classes)."""
    groups: dict[str, list[str]] = {}
    for label in counts:
        visible = visible_text(label).strip()
        try:
            key = f"number {float(visible)!r}"
        except ValueError:
            key = re.sub(r"[\s_\-]+", "", visible).casefold()
        if any(ch.isalnum() for ch in key):
            groups.setdefault(key, []).append(label)
    return sorted(sorted(group) for group in groups.values() if len(group) > 1)


def _labels(
    report: CheckReport, records: Sequence[Record], tokenizer: Any, label_map: LabelMap | None, out_of_scope_label: str | None = None
) -> LabelMap | None:
    counts = Counter(r.label for r in records if isinstance(r, ClassifyRecord))
    report.labels = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    if not counts:
        return label_map
    report.imbalance = max(counts.values()) / min(counts.values())
    if len(counts) == 1:
        report.warnings.append("only one label: a classifier needs at least two")
    if report.imbalance >= IMBALANCE_WARNING:
        rarest = min(counts, key=lambda label: (counts[label], label))
        report.warnings.append(
            f"labels are imbalanced {report.imbalance:.0f}:1 (rarest: '{rarest}', {counts[rarest]} examples)"
        )
    rare = sorted(label for label, n in counts.items() if n < RARE_LABEL)
    if rare:
        report.warnings.append(f"{len(rare)} label(s) have fewer than {RARE_LABEL} examples: {', '.join(rare[:10])}")
    spelled = _labels_spelled_two_ways(counts)
    if spelled:
        shown = "; ".join(" / ".join(f"'{label}' ({counts[label]})" for label in group) for group in spelled[:5])
        report.warnings.append(
            f"{len(spelled)} label(s) look like one category spelled two ways (case, spaces, '-' or '_'): {shown}: "
            "each spelling is a class of its own; make them one in the data if they are the same category"
        )
    if label_map is None and tokenizer is not None:
        try:
            # The run's own rule (sorted labels; the out-of-scope label gets no token: its threshold answers it).
            label_map = LabelMap.for_records([r for r in records if isinstance(r, ClassifyRecord)], tokenizer, out_of_scope_label)
        except DataError as error:
            report.other_errors.append(RecordError(report.path, f"labels: {error}"))
            return None
    if label_map is not None:
        report.label_map = [
            {"label": label, "token": token, "token_id": token_id}
            for label, token, token_id in zip(label_map.labels, label_map.token_strings, label_map.token_ids, strict=True)
        ]
        missing = sorted(set(counts) - set(label_map.labels) - {out_of_scope_label})
        if missing:
            report.other_errors.append(RecordError(report.path, f"labels not in the label map: {', '.join(missing[:10])}"))
    return label_map


def _group_counts(records: Sequence[Record]) -> dict[str, int]:
    """Records per group (``data.group_field``), the largest first: how many each group's verdict will rest on.
    Empty when no group was read."""
    counts = Counter(group for record in records if (group := getattr(record, "group", None)) is not None)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _check_test(report: CheckReport, records: Sequence[Record], test_path: str, task: str, data: DataConfig) -> None:
    result = read_records(test_path, task, data.model_copy(update={"limit": None}))
    report.invalid.extend(result.errors)
    report.layouts.extend(result.layouts)  # how the test data was read (a folder per label), said as the data's is
    train_keys = {lookalike_key(r) for r in records}
    leaked = [r for r in result.records if lookalike_key(r) in train_keys]
    unseen: list[str] = []
    if task == "classify":
        train_labels = {r.label for r in records if isinstance(r, ClassifyRecord)}
        # The out-of-scope label is meant to be absent from training.
        unseen = sorted({r.label for r in result.records if isinstance(r, ClassifyRecord)} - train_labels - {data.out_of_scope_label})
    near_copies = find_near_copies(result.records, records)
    report.test = TestCheck(test_path, len(result.records), len(leaked), [r.source for r in leaked[:20]], unseen,
                            _group_counts(result.records), near_copies)
    if leaked:
        report.warnings.append(
            f"leakage: {len(leaked)} of {len(result.records)} test examples also occur in the training data "
            f"(same normalized text), e.g. {leaked[0].source}"
        )
    near_copy_warning = near_copies.warning() if near_copies is not None else None
    if near_copy_warning:
        report.warnings.append(near_copy_warning)
    if unseen:
        report.warnings.append(f"{len(unseen)} test label(s) never occur in the training data: {', '.join(unseen[:10])}")


def check_data(
    path: str,
    task: str,
    data: DataConfig,
    *,
    tokenizer: Any = None,
    test_path: str | None = None,
    label_map: LabelMap | None = None,
    length_sample: int = LENGTH_SAMPLE,
    read: ReadResult | None = None,
) -> CheckReport:
    """Check the data at ``path`` for ``task`` (see the module docstring); never raises for bad records.

    Args:
        tokenizer: the model's tokenizer; without it there are no token lengths, label tokens or rendering.
        test_path: a held-out file to check for leakage against ``path`` and for unseen labels.
        label_map: the mapping of an existing run (default: built from the labels here, sorted).
        length_sample: measure token lengths on at most this many records (a seeded sample).
        read: ``path`` as ``read_records`` already read it with ``data`` (``tunelab run`` reads it before its model loads).

    Raises:
        DataError: when the path matches nothing or a file cannot be opened at all.
    """
    result = read if read is not None else read_records(path, task, data)
    records = result.records
    report = CheckReport(
        path=path,
        task=task,
        files=result.files,
        records=len(records),
        invalid=list(result.errors),
        skip_invalid=data.skip_invalid,
        limited=result.truncated_by_limit,
        layouts=list(result.layouts),
    )
    if not records:
        report.other_errors.append(RecordError(path, f"no usable {task} records"))
        return report
    if len(records) < FEW_EXAMPLES:
        report.warnings.append(
            f"only {len(records)} examples: fine-tuning usually needs a few hundred or more to beat the base model"
        )
    report.groups = _group_counts(records)
    _find_duplicates(report, records)
    if report.exact_duplicates:
        report.warnings.append(f"{report.exact_duplicates} exact duplicate record(s)")
    if report.near_duplicates:
        report.warnings.append(f"{report.near_duplicates} near-duplicate record(s) (same text after normalization)")
    if report.lookalikes:
        shown = "; ".join(" / ".join(group.sources[:4]) for group in report.lookalike_groups[:3])
        report.warnings.append(
            f"{report.lookalikes} group(s) of inputs differ only by look-alike characters (full-width letters, "
            f"zero-width characters, a BOM): {shown}; the split counts them as different examples and may put them on "
            "both sides (its overlap warning says so): remove the copies or clean the text"
        )
    if report.conflicts:
        what = "labels" if task == "classify" else "answers"
        report.warnings.append(f"{report.conflicts} input(s) occur with conflicting {what}")
        # What the split will do with them, said here first: the split step comes after the check.
        in_scope = [r for r in records if data.out_of_scope_label is None or getattr(r, "label", None) != data.out_of_scope_label]
        report.warnings.extend(conflict_only_label_warnings(in_scope, task))
    if data.pii != "off":
        report.pii = scan_records(records)
        report.warnings.extend(report.pii.warnings())
    label_map = _labels(report, records, tokenizer, label_map, data.out_of_scope_label)
    report.group_field = data.group_field
    if tokenizer is not None:
        report.lengths = _lengths(records, task, tokenizer, data, label_map, length_sample)
        lengths = report.lengths
        if lengths.sampled:
            report.notes.append(f"token lengths measured on a seeded sample of {lengths.measured} of {lengths.total} records")
        if lengths.over_max_length:
            consequence = "cut into windows" if task == "text" else "truncated"
            if task == "sft":
                consequence = (
                    f"truncated: {lengths.prompt_cut} would lose the start of their prompt (answer kept), "
                    # The prompt goes first (``tokenize_sft``), down to one token: such an answer is trained without its question.
                    f"{lengths.answer_cut} the end of their answer and all but the last token of the prompt before it"
                    + (f" (e.g. {lengths.answer_cut_sources[0]})" if lengths.answer_cut_sources else "")
                )
            report.warnings.append(
                f"{lengths.over_max_length} of {lengths.measured} examples are longer than max_length={data.max_length} "
                f"tokens and would be {consequence}"
            )
        if lengths.untrainable:
            report.warnings.append(
                f"{lengths.untrainable} sft example(s) have their whole answer beyond max_length: nothing of them "
                f"would be trained (e.g. {lengths.untrainable_sources[0]})"
            )
        # A record that is trained: an out-of-scope one has no answer token to show.
        out_of_scope = data.out_of_scope_label
        shown = next((r for r in records if out_of_scope is None or getattr(r, "label", None) != out_of_scope), records[0])
        report.example = render_example(shown, tokenizer, data, label_map)
    else:
        report.notes.append("no tokenizer: pass --model to see token lengths, label tokens and the rendered example")
    if test_path:
        _check_test(report, records, test_path, task, data)
    if report.skipped:
        report.warnings.append(f"{invalid_records(report.skipped)} invalid record(s) skipped on request (--skip-invalid)")
    return report
