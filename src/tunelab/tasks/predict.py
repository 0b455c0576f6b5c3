"""``tunelab predict``: a whole file of new requests answered by the judged model, offline, a file in and a file out.

A classify run answers through ``inference.Classifier`` (its prompt, label head, calibrated probability and
out-of-scope rule: what its evaluation scored and what ``tunelab serve`` answers); an sft run, or a plain model,
through evaluation's own generation (``evaluation.evaluate.answer_prompts``: ``inference.chat_prompt`` and
``models.generate``) with the decoding it was judged with (``runs.Run.decoding``). A text run answers no requests:
it is refused (``tunelab generate`` continues a text).

Crash safety: the answers go batch by batch to a partial file beside the output (``.OUT.partial``), flushed and
synced, its first line saying what job it belongs to (the model, the input's hash, the options that change an
answer). Run again after a kill, it continues from there; another model, input or option starts over. The output
itself appears only complete (an atomic rename), and the partial file goes once it is there.

``--label-next N`` (classify): every request is answered as without it (the same partial file, continued either way),
then only the N the model is least sure of are written, by the margin between its two most probable labels
(uncertainty sampling, Lewis & Gale 1994; margin sampling, Scheffer et al. 2001), near-duplicates once
(``data.keys.input_key``, the key the split uses): the requests worth labelling first.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import DataConfig
from tunelab.data.formats import content_hash
from tunelab.errors import ConfigError, DataError
from tunelab.faults import kill_point
from tunelab.paths import atomic_write_bytes

EventFn = Callable[[str, dict[str, Any]], None]

FORMATS = (".jsonl", ".csv")
PARTIAL_FORMAT = 2  # the partial file's layout; another one (an older tunelab's) starts over
CLASSIFY_COLUMNS = ("label", "probability", "out_of_scope")
RANK_COLUMNS = ("runner_up", "margin")  # classify: kept beside each answer in the partial file, written with --label-next
SFT_COLUMNS = ("answer",)


def partial_path(out: Path) -> Path:
    """Where the answers of an unfinished job are kept: a hidden file beside ``out``."""
    return out.with_name(f".{out.name}.partial")


@dataclass
class Ranking:
    """``--label-next``: ``chosen``, the indices of the requests to label first (most uncertain first) and their
    ``margins``; ``ranked`` requests were ranked, ``duplicates`` of them near-copies of an earlier one, left out."""

    chosen: list[int]
    margins: list[float]
    ranked: int
    duplicates: int


def least_sure(ranks: Sequence[dict[str, Any]], keys: Sequence[str], n: int) -> Ranking:
    """The ``n`` requests with the smallest ``margin`` (``ranks[i]``: its ``margin`` and top ``probability``), ties to the
    lower top probability, then to the earlier request; of requests with the same ``keys`` only the first is ranked
    (labelling a near-copy teaches the model nothing more)."""
    seen: set[str] = set()
    first = []
    for index, key in enumerate(keys):
        if key not in seen:
            seen.add(key)
            first.append(index)
    chosen = sorted(first, key=lambda i: (ranks[i]["margin"], ranks[i]["probability"], i))[:n]
    return Ranking(chosen, [ranks[i]["margin"] for i in chosen], len(keys), len(keys) - len(first))


@dataclass
class PredictOutcome:
    """What ``predict_file`` wrote: ``rows`` answers in ``out``, ``resumed`` of them from an earlier, killed run,
    ``skipped`` the invalid rows left out (``--skip-invalid``), ``started_over``: why an earlier partial file was
    not continued (None when there was none, or it was), ``replaced``: input columns an answer column replaced,
    ``ranking``: with ``label_next``, which requests ``out`` holds (``rows`` were answered)."""

    out: Path
    task: str
    rows: int
    resumed: int = 0
    skipped: list[Any] = field(default_factory=list)
    started_over: str | None = None
    replaced: list[str] = field(default_factory=list)
    ranking: Ranking | None = None


def output_format(out: Path) -> str:
    """``jsonl`` or ``csv``, by ``out``'s extension.

    Raises:
        ConfigError: for any other extension.
    """
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"--out {out}: the answers are written as .jsonl or .csv, not '{suffix or 'no extension'}'",
                          f"e.g. --out {out.with_suffix('.jsonl')}")
    return suffix[1:]


def model_task(source: Any) -> tuple[str, str]:
    """(task, identity) of the model ``source`` (``runs.resolve_model``) names, before any weight loads: a run's own task
    and its registry id (else its folder), a plain model's ``sft`` and where it is.

    Raises:
        ConfigError: for a text run, which continues text and answers no requests.
        ModelError: for a folder that is no readable run.
    """
    from tunelab.runs import Run

    if source.kind != "run":
        return "sft", f"{source.kind}:{source.location}"
    run = Run.open(source.location)
    if run.task not in ("classify", "sft"):
        raise ConfigError(f"{source.location} is a {run.task} run: it continues text and answers no requests",
                          f"`tunelab generate --model {source.location} TEXT` continues one text")
    return run.task, f"run:{run.registry_id or source.location}"


def read_inputs(path: str, task: str, data: DataConfig) -> tuple[list[Any], list[Any]]:
    """The inputs to answer (``data.read.Unlabeled``: no label or answer column needed) and the invalid rows left out.

    Raises:
        DataError: listing the invalid rows (``file:line: reason``) unless ``data.skip_invalid``; when none is left.
    """
    from tunelab.data.formats import invalid_records
    from tunelab.data.read import error_summary, read_unlabeled

    inputs, errors = read_unlabeled(path, task, data)
    if errors and not data.skip_invalid:
        raise DataError(f"{invalid_records(errors)} invalid row(s) in {path}:\n  {error_summary(errors)}",
                        "fix them, or drop them with --skip-invalid (each dropped one is listed)")
    if not inputs:
        # Every row dropped (--skip-invalid): why they were is the only thing that helps.
        why = f": every row is invalid:\n  {error_summary(errors)}" if errors else ""
        raise DataError(f"no {'prompt' if task == 'sft' else 'text'} to answer in {path}{why}")
    return inputs, errors


def _read_partial(partial: Path, job: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """The answered requests of ``partial`` when it is ``job``'s, else none and why it is not continued. A torn last
    line (killed while writing) is dropped: its batch is answered again. Each is ``{"row": the output row, "rank":
    its RANK_COLUMNS}`` (classify; kept apart so that an input column of the same name stays in a plain output)."""
    if not partial.is_file():
        return [], None
    lines = partial.read_bytes().split(b"\n")
    try:
        header = json.loads(lines[0])
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("job") != job:
        old = header.get("job") if isinstance(header, dict) and isinstance(header.get("job"), dict) else {}
        changed = [name for name in ("model", "input", "options", "format") if old.get(name) != job.get(name)]
        what = {"model": "another model", "input": "another input (its content changed)", "options": "other options",
                "format": "an older tunelab"}
        if "options" in changed and isinstance(old.get("options"), dict):  # which of them: a user retries with another
            before, now = old["options"], job["options"]
            keys = [key for key in now if before.get(key) != now[key]]
            if keys:
                what["options"] += " (" + ", ".join(f"{key} {before.get(key)}, now {now[key]}" for key in keys) + ")"
        because = ", ".join(what[name] for name in changed) or "an unreadable job line"
        return [], f"the unfinished answers in {partial} were for {because}: starting over"
    rows = []
    for line in lines[1:]:
        try:
            rows.append(json.loads(line))
        except ValueError:
            break  # the torn end of a killed write, or the file's last newline
    return rows, None


def _append(handle: Any, rows: Sequence[dict[str, Any]]) -> None:
    """One batch's answers, on disk before the next batch starts: a kill after this loses none of them."""
    handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    handle.flush()
    os.fsync(handle.fileno())


def _encoded(rows: Sequence[dict[str, Any]], kind: str) -> bytes:
    """The output file's bytes: JSON Lines, or CSV with every column any row has (the answer's last), a value that is
    no string (a chat, a number) as JSON."""
    if kind == "jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: value if isinstance(value, str) else json.dumps(value, ensure_ascii=False) for key, value in row.items()})
    return buffer.getvalue().encode("utf-8")


Answers = list[tuple[dict[str, Any], dict[str, Any]]]


def _answerer(loaded: Any, task: str, batch_size: int, default_new_tokens: int) -> Callable[[Sequence[Any]], Answers]:
    """(answer columns, RANK_COLUMNS) of each of a batch of inputs, from the one inference of each task (sft: no rank)."""
    if task == "classify":
        from tunelab.inference import Classifier

        classifier = Classifier.for_model(loaded)

        def classify(batch: Sequence[Any]) -> Answers:
            answers = classifier.classify(loaded.model, [item.text for item in batch], batch_size=batch_size)
            return [({"label": a.label, "probability": a.confidence, "out_of_scope": a.out_of_scope},
                     {"runner_up": a.runner_up, "margin": a.margin}) for a in answers]

        return classify

    from tunelab.config import EvalConfig
    from tunelab.data.templates import with_system_prompt
    from tunelab.evaluation.evaluate import answer_prompts
    from tunelab.models.generate import Decoding, configured_decoding, context_length

    run = loaded.run
    if run is not None:
        # Decoded and cut as the run's evaluation judged it (Run.decoding reads the same eval section).
        config, max_length = run.config.eval.model_copy(update={"batch_size": batch_size}), run.max_length
    else:
        # A plain model (a merged export) as its own generation_config says, as `tunelab generate` answers it.
        decoding = configured_decoding(loaded.model, Decoding(max_new_tokens=default_new_tokens))
        config = EvalConfig(max_new_tokens=decoding.max_new_tokens or default_new_tokens, temperature=decoding.temperature,
                            top_p=decoding.top_p, batch_size=batch_size)
        max_length = context_length(loaded.model)

    def answer(batch: Sequence[Any]) -> Answers:
        conversations = [with_system_prompt([dict(m) for m in item.messages], loaded.system_prompt) for item in batch]
        texts, _, _ = answer_prompts(loaded, conversations, config, max_length)
        return [({"answer": text}, {}) for text in texts]

    return answer


def predict_file(
    model: str,
    path: str,
    out: Path,
    *,
    data: DataConfig | None = None,
    batch_size: int = 16,
    allow_network: bool = False,
    default_new_tokens: int = 256,
    on_event: EventFn | None = None,
    progress: Callable[[int], None] | None = None,
    label_next: int | None = None,
) -> PredictOutcome:
    """Answer every input at ``path`` with ``model`` (a run folder or any model name) and write ``out`` (.jsonl or .csv):
    each row's columns as read, then ``label``, ``probability``, ``out_of_scope`` (classify) or ``answer`` (sft).

    ``data``: the fields, format and ``skip_invalid`` of the input. ``batch_size``: inputs per forward pass and per
    write of the partial file. ``default_new_tokens``: a plain model's answer length when its generation_config has
    none. ``on_event(name, details)``: ``started_over`` (why an earlier partial file is not continued), ``start``
    (``total``, ``resumed``, ``model``) before the first batch; ``progress(n)``: n more inputs answered.
    ``label_next`` (classify): every input is answered alike, then ``out`` holds only the ``label_next`` the model is
    least sure of (``least_sure``: smallest margin first, near-duplicates once, out-of-scope ones ranked like the
    others), each with ``runner_up`` and ``margin`` after its answer.

    Invalid rows, a text run, ``label_next`` for an sft model and a bad ``out`` are refused before the model loads.

    Raises:
        ConfigError: for a text run, ``label_next`` below 1 or for an sft model, or an ``out`` that is neither .jsonl nor .csv.
        DataError: for invalid rows (unless ``data.skip_invalid``), or an input with none to answer.
        ModelError: for a model that cannot be found or loaded.
    """
    from tunelab.runs import resolve_model

    emit = on_event or (lambda name, details: None)
    data = data or DataConfig()
    kind = output_format(out)
    source = resolve_model(model)
    task, identity = model_task(source)
    if label_next is not None and label_next < 1:
        raise ConfigError(f"--label-next {label_next}: the number of requests to choose is at least 1")
    if label_next is not None and task != "classify":
        raise ConfigError(f"--label-next ranks a classify run's requests by the margin between its two most probable labels: "
                          f"{model} answers as an sft model, with no margin", "answer them without --label-next")
    inputs, skipped = read_inputs(path, task, data)
    fields = {name: getattr(data, name) for name in ("text_field", "prompt_field", "messages_field", "format")}
    job = {"format": PARTIAL_FORMAT, "model": identity, "input": content_hash(path),
           "options": {"task": task, "fields": fields, "skip_invalid": data.skip_invalid, "batch_size": batch_size, "out": kind}}
    partial = partial_path(out)
    done, started_over = _read_partial(partial, job)
    if started_over:
        emit("started_over", {"reason": started_over})
    if len(done) < len(inputs):
        # Batches start at multiples of batch_size: a batch a kill cut short is answered again whole, as it was the first time.
        done = done[: len(done) - len(done) % batch_size]
    done = done[: len(inputs)]
    columns = (CLASSIFY_COLUMNS + (RANK_COLUMNS if label_next else ()) if task == "classify" else SFT_COLUMNS)
    replaced = sorted({column for item in inputs for column in columns if column in item.row})
    outcome = PredictOutcome(out, task, len(inputs), len(done), skipped, started_over, replaced)
    if len(done) < len(inputs):
        _answer_rest(source, task, inputs, done, partial, job, batch_size=batch_size, allow_network=allow_network,
                     default_new_tokens=default_new_tokens, emit=emit, progress=progress)
    if label_next:
        from tunelab.data.keys import input_key
        from tunelab.data.records import ClassifyRecord

        ranked = [{**entry["row"], **entry["rank"]} for entry in done]
        outcome.ranking = least_sure(ranked, [input_key(ClassifyRecord(item.text, "")) for item in inputs], label_next)
        rows = [ranked[index] for index in outcome.ranking.chosen]
    else:
        rows = [entry["row"] for entry in done]
    atomic_write_bytes(out, _encoded(rows, kind))
    partial.unlink(missing_ok=True)
    return outcome


def _answer_rest(source: Any, task: str, inputs: Sequence[Any], done: list[dict[str, Any]], partial: Path, job: dict[str, Any], *,
                 batch_size: int, allow_network: bool, default_new_tokens: int, emit: EventFn, progress: Callable[[int], None] | None) -> None:
    """Answer the inputs after ``done`` batch by batch, each batch appended to ``partial`` (and to ``done``) as it is answered.
    Batches start at multiples of ``batch_size`` (the partial file only ever ends at one): a resumed job answers the same
    batches as an uninterrupted one."""
    from tunelab.models.loader import on_inference_device
    from tunelab.runs import load_model

    loaded = load_model(source, allow_network=allow_network)
    emit("start", {"model": source.display_name, "total": len(inputs), "resumed": len(done)})
    partial.parent.mkdir(parents=True, exist_ok=True)
    with on_inference_device(loaded.model):
        answer = _answerer(loaded, task, batch_size, default_new_tokens)
        # Rewritten whole (atomically) from what was read: a torn last line or a cut batch must not stay before the next one.
        atomic_write_bytes(partial, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in [{"job": job}, *done]).encode("utf-8"))
        with partial.open("a", encoding="utf-8") as handle:
            for start in range(len(done), len(inputs), batch_size):
                batch = inputs[start : start + batch_size]
                entries = [{"row": {**item.row, **columns}, **({"rank": rank} if rank else {})}
                           for item, (columns, rank) in zip(batch, answer(batch), strict=True)]
                _append(handle, entries)
                done.extend(entries)
                kill_point("predict.batch-written")
                if progress is not None:
                    progress(len(batch))
