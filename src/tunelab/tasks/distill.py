"""Distillation: a teacher answers, a small student learns its answers, and the two are compared on held-out data.

    split the user's data -> the teacher answers the inputs (distill.jsonl) -> the student trains on the
    answers with the normal recipe (the pipeline's steps) -> teacher and student on the same test set

1. The user's data (``data.train``, with answers where it has them) is split as for any run. The
   test split is held out: neither teacher answers on it nor reference answers reach the student.
2. The teacher — a remote endpoint (``openai:NAME``, ``{base_url, name}``) or a local model/run —
   answers every input of the training and validation splits plus ``distill.unlabeled``: sft
   prompts get its answer, classify texts its label. Each answer is one line of
   ``<run>/distill.jsonl`` with its tokens, latency and cost, written as it arrives, so a crash loses
   nothing: a rerun asks only what has no line yet. An empty answer, one the provider's content filter
   stopped, or a classify answer that names no category is kept in the file as ``rejected`` with its
   reason, listed, and left out of the student's
   data (never silently). A failed request (after the client's retries) is kept as ``rejected`` too, and
   stops the run before the student trains: a resume asks only the failed ones again.
3. The student (``model``, default the bundled model) trains on the accepted answers through the
   pipeline's steps (check, split, estimate, baselines, train, evaluate, report, register), with the
   held-out test records (and their references) as its test set.
4. The teacher is evaluated on the same test records with the same prompts and metrics; the student
   is compared with it by the paired bootstrap: agreement with the teacher (classify), ROUGE/BLEU
   against the teacher's answers (sft), both against the references, the non-inferiority statement
   (the lower end of the 95% interval of student - teacher above -``distill.margin``), cost per 1,000
   requests and latency of each. Written to ``<run>/distill_report.json`` and ``.md``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.config import EndpointConfig, ResolvedConfig, parse_config, require_resolved
from tunelab.errors import ConfigError, DataError
from tunelab.paths import atomic_write_text
from tunelab.runs import RunFolder

LATENCY_PROBES = 8  # requests timed one at a time for a local model's latency

if TYPE_CHECKING:
    from tunelab.estimate.prices import PriceTable
    from tunelab.evaluation.answering import AnsweringModel
    from tunelab.remote.client import RequestEstimate

EventFn = Callable[[str, str, dict[str, Any]], None]


# ------------------------------------------------------------------------------------------ teacher


def teacher_endpoint(config: ResolvedConfig) -> EndpointConfig | None:
    """The teacher as an endpoint (``openai:NAME`` or a mapping), None for a local model or run."""
    teacher = config.distill.teacher
    if isinstance(teacher, EndpointConfig):
        return teacher.model_copy(update={"concurrency": config.distill.concurrency})
    parsed = EndpointConfig.parse_name(teacher or "")
    return parsed.model_copy(update={"concurrency": config.distill.concurrency}) if parsed else None


def check_teacher(config: ResolvedConfig) -> None:
    """Refuse a missing teacher, or the untuned student as its own teacher, before the data is split or the run
    folder written (``run_distill``) or the teacher opened (``open_teacher``).

    Raises:
        ConfigError: without a teacher, or when the teacher is the untuned student itself.
    """
    teacher = config.distill.teacher
    if teacher is None:
        raise ConfigError("distill.teacher is required: the model whose answers the student learns",
                          "a run folder, a model name, openai:NAME, or {base_url, name, api_key_env}")
    if teacher_endpoint(config) is None and teacher == config.model.name:
        raise ConfigError(f"distill.teacher is the student's own model ({teacher}): the student would learn nothing new",
                          "name a tuned run, a larger model, or an endpoint as the teacher")


def open_teacher(config: ResolvedConfig) -> AnsweringModel:
    """Connect to (or load) ``distill.teacher``: a model that answers through the one model interface.

    Raises:
        ConfigError: without a teacher, or when the teacher is the untuned student itself.
        RemoteError: when a remote teacher cannot be reached.
        ModelError: when a local teacher cannot be loaded.
    """
    from tunelab.evaluation.answering import open_model

    check_teacher(config)
    teacher = config.distill.teacher
    endpoint = teacher_endpoint(config)
    return open_model(endpoint or teacher, allow_network=config.model.allow_network, concurrency=config.distill.concurrency)


# ------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class TeacherInput:
    """One thing the teacher is asked: an sft prompt (chat messages) or a classify text."""

    id: str
    source: str
    messages: tuple[dict[str, str], ...] = ()
    text: str = ""


def _input_of(record: Any, task: str) -> TeacherInput:
    from tunelab.data.records import content_id

    if task == "sft":
        messages = tuple(dict(m) for m in record.prompt_messages)
        return TeacherInput(content_id("distill-sft", list(messages)), record.source, messages=messages)
    return TeacherInput(content_id("distill-classify", record.text), record.source, text=record.text)


def read_unlabeled(path: str, config: ResolvedConfig) -> list[TeacherInput]:
    """The inputs of ``distill.unlabeled``: sft prompts (``data.prompt_field``, or chat ``messages``, ShareGPT
    ``conversations`` or Alpaca ``instruction``/``input`` without the assistant turns they end with; a .txt file, or
    Markdown and other markup read as .txt: one prompt per non-empty line), classify texts (``data.text_field``).

    Raises:
        DataError: listing the rows without a usable input (unless ``data.skip_invalid``).
    """
    from tunelab.data.read import read_unlabeled as read_inputs

    data = config.data
    found, errors = read_inputs(path, config.task, data)
    inputs = [_unlabeled(config.task, item) for item in found]
    bad = [str(error) for error in errors]
    if bad and not data.skip_invalid:
        raise DataError(f"{len(bad)} unusable row(s) in {path}: {'; '.join(bad[:5])}", "fix them, or set data.skip_invalid: true (each is listed)")
    if not inputs:
        raise DataError(f"distill.unlabeled {path} holds no input")
    return inputs


def _unlabeled(task: str, item: Any) -> TeacherInput:
    """The teacher's input of one ``data.read.Unlabeled``."""
    from tunelab.data.records import content_id

    if task == "sft":
        messages = tuple(dict(m) for m in item.messages)
        return TeacherInput(content_id("distill-sft", list(messages)), item.source, messages=messages)
    return TeacherInput(content_id("distill-classify", item.text), item.source, text=item.text)


# --------------------------------------------------------------------------------- the distillation file


@dataclass
class DistillLine:
    """One line of distill.jsonl: the input, the teacher's answer, what it cost, and whether it is used."""

    id: str
    source: str
    input: Any
    answer: str | None
    status: str  # "ok" | "rejected"
    reason: str | None = None
    label: str | None = None  # classify: the category the answer names
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_s: float | None = None
    cost_usd: float | None = None
    cached: bool = False
    teacher: str = ""
    finish_reason: str | None = None  # "length": the answer was cut at eval.max_new_tokens

    @property
    def retry(self) -> bool:
        """A failed request is asked again on the next run; an answer that came back (good or bad) is not."""
        return self.status == "rejected" and (self.reason or "").startswith("request failed")


def read_distill_file(path: Path) -> dict[str, DistillLine]:
    """The lines already written (a torn last line from a crash is ignored: that input is asked again)."""
    lines: dict[str, DistillLine] = {}
    if not path.is_file():
        return lines
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            line = DistillLine(**json.loads(text))
        except (json.JSONDecodeError, TypeError):
            continue
        lines[line.id] = line
    return lines


class DistillWriter:
    """Appends lines to distill.jsonl as answers arrive (from worker threads), flushed one by one."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            with path.open("a", encoding="utf-8") as handle:
                handle.write("\n")  # end a torn last line, so the next line starts clean
        self._handle = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, line: DistillLine) -> None:
        with self._lock:
            self._handle.write(json.dumps(asdict(line), ensure_ascii=False) + "\n")
            self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _judge(task: str, answer: str | None, error: str | None, labels: Sequence[str],
           finish_reason: str | None = None) -> tuple[str, str | None, str | None]:
    """(status, reason, label) of one teacher answer."""
    from tunelab.evaluation.remote import parse_label

    if error is not None:
        return "rejected", f"request failed: {error}", None
    if finish_reason == "content_filter":
        # The provider cut or blanked the answer: what came back is not the teacher's answer, and asking again gets the same.
        return "rejected", "stopped by the provider's content filter", None
    if answer is None or not answer.strip():
        return "rejected", "empty answer", None
    if task == "classify":
        label = parse_label(answer, labels)
        if label is None:
            said = " ".join(answer.split())  # named, one line and short: a chatty teacher and a made-up category read differently
            return "rejected", f"names no category of {len(labels)}: {said if len(said) <= 60 else said[:57] + '...'!r}", None
        return "ok", None, label
    return "ok", None, None


def _todo(inputs: Sequence[TeacherInput], done: dict[str, DistillLine]) -> list[TeacherInput]:
    """The inputs the teacher is asked now: those without a line in distill.jsonl, and those whose request failed."""
    return [item for item in inputs if item.id not in done or done[item.id].retry]


def _in_a_new_run(resume: Any) -> str:
    return " (in a new run: a resumed run keeps its saved config)" if resume is not None else ""


def teacher_inputs(config: ResolvedConfig, split: Any) -> tuple[list[str], list[TeacherInput]]:
    """The classify labels and the inputs the teacher answers: the training and validation records and
    ``distill.unlabeled``, once each, never a test record.

    Raises:
        DataError: for unusable rows of ``distill.unlabeled``.
    """
    labels = sorted({r.label for r in [*split.train, *split.validation, *split.test]}) if config.task == "classify" else []
    test_inputs = {_input_of(r, config.task).id for r in split.test}
    inputs = [_input_of(r, config.task) for r in [*split.train, *split.validation]]
    if config.distill.unlabeled:
        inputs += read_unlabeled(config.distill.unlabeled, config)
    return labels, [item for item in dict((item.id, item) for item in inputs).values() if item.id not in test_inputs]


def _check_pii(config: ResolvedConfig, inputs: Sequence[TeacherInput], emit: EventFn) -> None:
    """Personal data in what the teacher is asked, before any request (``data.pii``): refused, or said with the host a
    remote teacher's requests go to. A local teacher sends nothing away; its student's own check warns of what it learns.

    Raises:
        DataError: under ``data.pii: refuse`` when the inputs hold any.
    """
    from tunelab.data.pii import message_fields, scan_texts

    if config.data.pii == "off":
        return
    pii = scan_texts((item.source, message_fields(item.messages) if item.messages else [("prompt", item.text)]) for item in inputs)
    if not pii.found:
        return
    what = f"what the teacher is asked (from {config.data.train}" + (f" and {config.distill.unlabeled})" if config.distill.unlabeled else ")")
    if config.data.pii == "refuse":
        raise pii.refusal(what)
    endpoint = teacher_endpoint(config)
    if endpoint is not None:
        emit("warn", "warn", {"message": pii.sent_to(what, endpoint.base_url)})


def estimate_teacher_cost(config: ResolvedConfig, *, prices: PriceTable | None = None) -> RequestEstimate | None:
    """What ``tunelab distill`` of ``config`` would pay its remote teacher (``teacher_estimate``), without asking it
    anything or writing anything (``tunelab estimate``); None for a local teacher.

    Raises:
        ConfigError: without a teacher, or one that is the student itself.
        DataError: for data the split or ``distill.unlabeled`` cannot read.
    """
    from tunelab.data.split import make_split
    from tunelab.evaluation.answering import RemoteModel
    from tunelab.evaluation.remote import remote_client
    from tunelab.remote.cache import default_cache_path

    check_teacher(config)
    endpoint = teacher_endpoint(config)
    if endpoint is None:
        return None
    split = make_split(config)
    labels, inputs = teacher_inputs(config, split)
    # Pricing contacts nobody and needs no API key (a request's cache key has none): the endpoint and its key are
    # checked when the run starts.
    # Without a request cache yet, nothing is cached: none is created for it.
    unkeyed = endpoint.model_copy(update={"api_key_env": None})
    teacher = RemoteModel(remote_client(unkeyed, concurrency=config.distill.concurrency, cache=default_cache_path().is_file(), prices=prices))
    return teacher_estimate(teacher, inputs, split, config, labels, RunFolder(distill_run_dir(config)).distill_file)


def teacher_estimate(
    teacher: AnsweringModel, inputs: Sequence[TeacherInput], split: Any, config: ResolvedConfig, labels: Sequence[str], path: Path,
) -> RequestEstimate | None:
    """What the teacher's requests will cost (``RemoteClient.estimate``): the inputs not yet in distill.jsonl, and its
    evaluation on the test records. None for a local teacher (its time is its cost).

    budget.max_usd is checked against this (the teacher's requests alone) before the first request; the student's
    training is checked against the same budget.max_usd by its own pipeline, as ``tunelab run`` checks a run: each
    paid part must fit the budget, the two are not added (a local student's price is its GPU time at budget.gpu).
    A typical answer is the record's reference (sft) or category (classify); an unlabeled input's is the mean.
    """
    from tunelab.evaluation.remote import typical_answer_tokens

    todo = _todo(inputs, read_distill_file(path))
    questions = [item.text if config.task == "classify" else item.messages for item in todo]
    records = {_input_of(r, config.task).id: r for r in [*split.train, *split.validation]}
    expected = [typical_answer_tokens(records[item.id], config.task) if item.id in records else None for item in todo]
    asking = teacher.estimate_ask(questions, config.task, config=config.eval, data_config=config.data, labels=labels,
                                  expected_output_tokens=expected)
    testing = teacher.estimate_evaluate(split.test, config.task, config=config.eval, data_config=config.data,
                                        labels=labels or None)
    if asking is None or testing is None:
        return None
    return asking.plus(testing)


def ask_teacher(
    teacher: AnsweringModel,
    inputs: Sequence[TeacherInput],
    config: ResolvedConfig,
    labels: Sequence[str],
    path: Path,
    *,
    progress: Callable[[int], None] | None = None,
) -> dict[str, DistillLine]:
    """Every input's line of distill.jsonl: those already there are kept, the others are asked now.

    Each answer is written as it arrives (a remote teacher's one by one, a local one's batch by batch), so a crash
    loses nothing. Returns the lines of ``inputs`` by id (the file may hold more, from an earlier, larger run).
    """
    done = read_distill_file(path)
    todo = _todo(inputs, done)
    usd_per_hour = config.distill.local_usd_per_hour
    writer = DistillWriter(path)

    def on_answer(index: int, answer: Any) -> None:
        item = todo[index]
        status, reason, label = _judge(config.task, answer.text, answer.error, labels, answer.finish_reason)
        cost = answer.cost_usd
        if not teacher.remote:  # a local teacher's cost is its time on this machine
            cost = answer.latency_s * usd_per_hour / 3600 if usd_per_hour and answer.latency_s is not None else None
        line = DistillLine(
            id=item.id, source=item.source, input=item.text or list(item.messages), answer=answer.text, status=status, reason=reason,
            label=label, input_tokens=answer.input_tokens, output_tokens=answer.output_tokens, latency_s=answer.latency_s,
            cost_usd=cost, cached=answer.cached, teacher=teacher.name, finish_reason=answer.finish_reason,
        )
        writer.write(line)
        done[item.id] = line

    questions = [item.text if config.task == "classify" else item.messages for item in todo]
    try:
        teacher.ask(questions, config.task, config=config.eval, data_config=config.data, labels=labels, on_answer=on_answer, progress=progress)
    finally:
        writer.close()
    return {item.id: done[item.id] for item in inputs if item.id in done}


def cut_answers_warning(lines: Iterable[DistillLine], config: ResolvedConfig) -> str | None:
    """The sft answers the teacher stopped at ``eval.max_new_tokens``, named: the student learns them as they
    are (mid-sentence), so the user is told and can raise the limit. None when there are none."""
    used = [line for line in lines if line.status == "ok"]
    cut = [line for line in used if line.finish_reason == "length"]
    if config.task != "sft" or not cut:
        return None
    return (f"{len(cut)} of {len(used)} teacher answers were cut at eval.max_new_tokens ({config.eval.max_new_tokens} tokens) and are "
            f"learned cut (first: {', '.join(line.source for line in cut[:3])}): raise eval.max_new_tokens for whole answers")


# ------------------------------------------------------------------------------------------ the run


@dataclass
class DistillOutcome:
    """What ``tunelab distill`` produced: the dataset, the student's run, and the student-vs-teacher report."""

    run_dir: Path
    distill_file: Path
    asked: int
    accepted: int
    rejected: list[dict[str, Any]]
    report: dict[str, Any]
    run: Any = None  # tunelab.tasks.pipeline.RunOutcome of the student
    warnings: list[str] = field(default_factory=list)


def distill_run_dir(config: ResolvedConfig) -> Path:
    from tunelab.tasks.pipeline import run_name

    return Path(config.train.output_dir) / (config.name or f"distill-{run_name(config)}")


def run_distill(
    config: ResolvedConfig | None = None,
    *,
    resume: str | Path | None = None,
    on_event: EventFn | None = None,
    ask_progress: Callable[[int], None] | None = None,
    train_progress: Callable[[Any], None] | None = None,
    eval_progress: Callable[[int], None] | None = None,
    calibrate: bool = True,
) -> DistillOutcome:
    """Distil ``distill.teacher`` into ``model`` (see the module docstring); ``resume``: continue a run folder.

    Raises:
        ConfigError: without a teacher, for a task other than sft/classify, or a teacher equal to the student.
        DataError: for bad data, or when the teacher gave no usable answer.
        RemoteError: when a remote teacher cannot be reached.
    """
    from tunelab.data.split import make_split
    from tunelab.tasks import pipeline

    emit = on_event or (lambda step, status, details: None)
    if resume is not None:
        run = RunFolder(Path(resume))
        run.require_folder()
        saved = run.distill_config
        if not saved.is_file():
            raise ConfigError(f"{run.root} has no {saved.name}: it was not started by `tunelab distill`")
        config = parse_config(json.loads(saved.read_text(encoding="utf-8")), source=str(saved))
    else:
        if config is None:
            raise ConfigError("run_distill needs a config or a run folder to resume")
        config = require_resolved(config)
        run = RunFolder(distill_run_dir(config))
        if run.root.exists() and any(run.root.iterdir()):
            raise ConfigError(f"run folder {run.root} already exists; a run is never overwritten",
                              f"choose another name (name=...) or continue it with `tunelab distill --resume {run.root}`")
    if config.task not in ("sft", "classify"):
        raise ConfigError(f"distillation is for sft and classify, not {config.task}")
    if not config.data.train:
        raise ConfigError("data.train is required: the data whose test split judges teacher and student")
    check_teacher(config)  # before the split and the run folder: a refused run leaves nothing behind

    # 1. The user's split: its test records are held out from the teacher's training answers.
    emit("split", "start", {})
    split = make_split(config)
    if not split.test:
        raise DataError("the test split is empty", "add data, raise data.test_size, or give data.test")
    emit("split", "done", {"sizes": split.sizes()})

    # 2. The teacher answers the training inputs (and distill.unlabeled), line by line. What that and its evaluation on
    # the test records will cost is said, and checked against budget.max_usd, before the run folder is written.
    labels, inputs = teacher_inputs(config, split)
    _check_pii(config, inputs, emit)
    teacher = open_teacher(config)
    estimate = teacher_estimate(teacher, inputs, split, config, labels, run.distill_file)
    if estimate is not None:
        emit("teacher", "estimate", {"teacher": teacher.name, "estimate": estimate.to_dict(),
                                     "line": estimate.describe("budget.max_usd", config.budget.max_usd)})
        estimate.refuse_over("budget.max_usd", config.budget.max_usd,
                             f"raise budget.max_usd, or give the teacher fewer inputs (data.train, distill.unlabeled){_in_a_new_run(resume)}")
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.distill_config, json.dumps(config.model_dump(mode="json"), indent=1))
    emit("teacher", "start", {"teacher": teacher.name, "inputs": len(inputs)})
    lines = ask_teacher(teacher, inputs, config, labels, run.distill_file, progress=ask_progress)
    accepted = [line for line in lines.values() if line.status == "ok"]
    rejected = [{"id": line.id, "source": line.source, "reason": line.reason, "answer": line.answer} for line in lines.values() if line.status != "ok"]
    cut_warning = cut_answers_warning(lines.values(), config)
    emit("teacher", "done", {"accepted": len(accepted), "rejected": rejected, "warning": cut_warning, "usage": distillation_usage(lines.values())})
    failed = [line for line in lines.values() if line.retry]
    if failed:
        from tunelab.remote.client import RemoteError

        # Before the student trains: a student trained on part of the answers is not trained again on resume (its
        # pipeline's finished steps stay done), and the teacher's own evaluation would fail next anyway.
        raise RemoteError(
            f"{len(failed)} of {len(lines)} requests to the teacher {teacher.name} failed ({failed[0].reason}); the "
            f"{len(lines) - len(failed)} answers received are kept in {run.distill_file}",
            f"when the teacher answers again: tunelab distill --resume {run.root} (asks only the {len(failed)} that failed)",
        )
    if not accepted:
        raise DataError(f"the teacher {teacher.name} gave no usable answer to {len(lines)} inputs (first reason: {rejected[0]['reason'] if rejected else 'none'})",
                        f"see {run.distill_file}")

    # 3. The student trains on the accepted answers with the normal recipe; the user's test records judge it.
    student_config = _student_config(config, run, accepted, split.test, lines)
    state_file = run.pipeline_state
    context = pipeline.open_pipeline(
        None if state_file.is_file() else student_config, resume=run.root if state_file.is_file() else None, run_dir=run.root,
        on_event=on_event, train_progress=train_progress, eval_progress=eval_progress, calibrate=calibrate,
    )
    outcome = pipeline.run_steps(context)

    # 4. Teacher and student on the same test records.
    emit("compare", "start", {})
    report = compare_student_with_teacher(context, teacher, config, list(lines.values()))
    atomic_write_text(run.distill_report, json.dumps(report, indent=1, default=str))
    atomic_write_text(run.distill_report_md, report_markdown(report))
    context.registry.update_run(context.registry_id, artifacts={**(context.registry.get_run(context.registry_id).artifacts or {}),
                                                                 "distill_report": str(run.distill_report), "teacher": teacher.name})
    emit("compare", "done", {"report": report})
    context.close()  # the run folder's lock (a notebook goes on living)
    warnings = [cut_warning] if cut_warning else []
    return DistillOutcome(run.root, run.distill_file, len(lines), len(accepted), rejected, report, outcome, warnings + list(context.warnings))


def _student_config(config: ResolvedConfig, run: RunFolder, accepted: Sequence[DistillLine], test: Sequence[Any], lines) -> ResolvedConfig:
    """The student's run config: the teacher's accepted answers as data.train, the held-out records as data.test."""
    root = run.root
    folder = run.distill_data
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for line in sorted(accepted, key=lambda line: line.id):
        if config.task == "classify":
            rows.append({"text": line.input, "label": line.label, "teacher_id": line.id})
        else:
            rows.append({"messages": [*line.input, {"role": "assistant", "content": line.answer.strip()}], "teacher_id": line.id})
    atomic_write_text(folder / "train.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    test_rows = []
    for record in test:
        if config.task == "classify":
            test_rows.append({"text": record.text, "label": record.label})
        else:
            from tunelab.evaluation.evaluate import references_of

            test_rows.append({"messages": [*record.prompt_messages, {"role": "assistant", "content": references_of(record)[0]}],
                              "references": references_of(record)})
    atomic_write_text(folder / "test.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in test_rows))
    data = config.model_dump(mode="json")
    keep = {key: data["data"][key] for key in ("system_prompt", "max_length", "validation_size", "max_test_examples", "seed", "stride")}
    data["data"] = {**keep, "train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")}
    data["name"] = root.name
    data["train"]["output_dir"] = str(root.parent)
    data["train"]["backend"] = "local"
    # Baselines that only a local model under the student can run stay; the teacher is compared in step 4.
    data["eval"]["baselines"] = [name for name in data["eval"]["baselines"] if not config.eval.endpoint_of(name)]
    return parse_config(data, source="distill student config")


# --------------------------------------------------------------------------------- student vs teacher


def evaluate_teacher(teacher: AnsweringModel, test: Sequence[Any], config: ResolvedConfig, labels: Sequence[str] | None):
    """The teacher on the test records, scored like the student (over the labels it was asked with)."""
    classify = config.task == "classify"
    label_map = teacher.answer_label_map(labels or []) if classify else None
    return teacher.evaluate(test, config.task, config=config.eval, data_config=config.data, label_map=label_map,
                            baseline=classify and teacher.label_map is None)


def local_latency(loaded: Any, test: Sequence[Any], config: ResolvedConfig, labels: Sequence[str] | None) -> float | None:
    """Median seconds of one request to a local model, timed one at a time on a few test records (batch 1)."""
    from tunelab.evaluation.evaluate import evaluate
    from tunelab.models.loader import on_inference_device

    single = config.eval.model_copy(update={"batch_size": 1})
    timings = []
    # Placed once for all the probes: each evaluation would otherwise time the model's copy to the GPU and back.
    with on_inference_device(loaded.model):
        for record in list(test)[:LATENCY_PROBES]:
            began = time.perf_counter()
            evaluate(loaded, [record], config.task, config=single, data_config=config.data.model_copy(update={"max_test_examples": None}))
            timings.append(time.perf_counter() - began)
    return sorted(timings)[len(timings) // 2] if timings else None


def agreement(student_rows: Sequence[dict], teacher_rows: Sequence[dict], *, seed: int, samples: int) -> dict[str, float]:
    """Share of test examples where student and teacher give the same label, with a 95% bootstrap interval."""
    import numpy as np

    teacher_by_id = {row["id"]: row["prediction"] for row in teacher_rows}
    same = np.array([row["prediction"] == teacher_by_id.get(row["id"]) for row in student_rows], dtype=float)
    if not same.size:
        return {"agreement": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    draws = np.random.default_rng(seed).integers(0, same.size, size=(samples, same.size))
    low, high = np.percentile(same[draws].mean(axis=1), [2.5, 97.5])
    return {"agreement": float(same.mean()), "low": float(low), "high": float(high), "n": int(same.size)}


def compare_student_with_teacher(context: Any, teacher: AnsweringModel, config: ResolvedConfig, lines: Sequence[DistillLine]) -> dict[str, Any]:
    """Teacher vs student on the held-out test records (see the module docstring); also saves eval/teacher.json."""
    from tunelab.evaluation.compare import MIN_TEST_EXAMPLES, TOO_FEW, compare_evaluations
    from tunelab.evaluation.evaluate import score_sft
    from tunelab.runs import Run

    split = context.require_split()
    student_eval = context.tuned_eval
    labels = student_eval.labels
    teacher_eval = evaluate_teacher(teacher, split.test, config, labels)
    teacher_eval.save(context.run.teacher_eval)
    comparison = compare_evaluations(teacher_eval, student_eval, seed=config.eval.seed, samples=config.eval.bootstrap_samples)
    primary = comparison.metric(comparison.primary)
    margin = config.distill.margin
    numbers = (f"student {primary.after:.4g} vs teacher {primary.before:.4g}, difference {primary.difference:+.4g} "
               f"(95% CI {primary.low:+.4g} to {primary.high:+.4g}, n={comparison.n}, paired bootstrap x{comparison.samples})")
    if comparison.n < MIN_TEST_EXAMPLES:
        # The verdict's rule: an interval from this few examples is too narrow to trust, so no claim either way.
        non_inferior = False
        statement = (f"{TOO_FEW} whether the student is within {primary.describe_margin(margin)} of the teacher on {comparison.primary} "
                     f"(n={comparison.n}; the paired bootstrap needs at least {MIN_TEST_EXAMPLES}): {numbers}")
    else:
        non_inferior = primary.non_inferior(margin)
        statement = (f"the student is {'within' if non_inferior else 'NOT shown to be within'} {primary.describe_margin(margin)} of the teacher on "
                     f"{comparison.primary}: {numbers}")
    vs_teacher: dict[str, Any]
    if config.task == "classify":
        vs_teacher = agreement(student_eval.rows, teacher_eval.rows, seed=config.eval.seed, samples=config.eval.bootstrap_samples)
    else:
        teacher_answer = {row["id"]: row["prediction"] for row in teacher_eval.rows}
        records = [r for r in split.test if r.id in teacher_answer]
        student_answer = {row["id"]: row["prediction"] for row in student_eval.rows}
        _, metrics = score_sft(records, [student_answer.get(r.id, "") for r in records], [[teacher_answer[r.id]] for r in records])
        vs_teacher = {name: metrics[name] for name in ("rouge1", "rougeL", "bleu", "chrf") if name in metrics}
    student = Run.open(context.run.root).load()
    usd_per_hour = config.distill.local_usd_per_hour
    student_latency = local_latency(student, split.test, config, labels)
    teacher_usage = teacher_eval.settings.get("usage") or {}
    if teacher.remote:
        teacher_latency, teacher_per_1000 = teacher_usage.get("latency_median_s"), teacher_usage.get("cost_per_1000_requests")
    else:
        teacher_latency = local_latency(teacher.loaded, split.test, config, labels)
        teacher_per_1000 = 1000 * teacher_latency * usd_per_hour / 3600 if usd_per_hour and teacher_latency else None
    student_per_1000 = 1000 * student_latency * usd_per_hour / 3600 if usd_per_hour and student_latency else None
    base = context.baseline_evals.get("base")
    return {
        "task": config.task, "teacher": teacher.name, "student": student_eval.model, "n": comparison.n, "primary": comparison.primary,
        "margin": margin, "non_inferior": non_inferior, "statement": statement,
        "against_references": {"teacher": _headline(teacher_eval), "student": _headline(student_eval),
                               **({"untuned_student": _headline(base)} if base else {})},
        "student_vs_teacher": vs_teacher,
        "comparison": comparison.to_dict(),
        "cost_per_1000_requests_usd": {"teacher": teacher_per_1000, "student": student_per_1000},
        "latency_s": {"teacher": teacher_latency, "student": student_latency},
        "latency_note": "remote teacher: median over its test requests (network included); local models: median of "
                        f"{LATENCY_PROBES} requests one at a time on this machine",
        "cost_note": ("teacher: the price table's per-token price (unknown when the model is not in it)" if teacher.remote else
                      "local teacher: distill.local_usd_per_hour") + "; student: distill.local_usd_per_hour x its latency "
                      "(unknown when not set)",
        "distillation": {
            "lines": len(lines), "accepted": sum(line.status == "ok" for line in lines),
            "rejected": sum(line.status != "ok" for line in lines),
            **distillation_usage(lines),
        },
    }


def distillation_cost(lines: Iterable[DistillLine]) -> float | None:
    """What the teacher's answers cost, None when a price is unknown. A request that failed was not charged
    (its line has no cost): it counts 0, not unknown, or one failure would hide the cost of all the rest."""
    costs = [line.cost_usd for line in lines if not line.retry]
    return None if any(cost is None for cost in costs) else float(sum(costs))


def distillation_usage(lines: Iterable[DistillLine]) -> dict[str, Any]:
    """What the teacher's answers used: tokens (those it reported), answers from the cache, and ``distillation_cost``."""
    lines = list(lines)
    return {"input_tokens": sum(line.input_tokens or 0 for line in lines), "output_tokens": sum(line.output_tokens or 0 for line in lines),
            "cached": sum(line.cached for line in lines), "cost_usd": distillation_cost(lines)}


def _headline(result: Any) -> dict[str, Any]:
    names = ("accuracy", "macro_f1") if result.task == "classify" else ("rougeL", "bleu", "chrf", "exact_match")
    return {name: result.metrics.get(name) for name in names if name in result.metrics}


def _money(value: float | None) -> str:
    from tunelab.estimate.plan import money

    return "unknown" if value is None else money(value)


def report_markdown(report: dict[str, Any]) -> str:
    """The student-vs-teacher report as markdown (distill_report.md)."""
    lines = [f"# Distillation: {report['student']} learned from {report['teacher']}", "", f"**{report['statement']}**", "",
             "| | teacher | student |" + (" untuned student |" if "untuned_student" in report["against_references"] else ""),
             "|---|---:|---:|" + ("---:|" if "untuned_student" in report["against_references"] else "")]
    refs = report["against_references"]
    for name in refs["teacher"]:
        cells = [refs[who].get(name) for who in ("teacher", "student", "untuned_student") if who in refs]
        lines.append(f"| {name} (vs references) | " + " | ".join("-" if v is None else f"{v:.4g}" for v in cells) + " |")
    cost, latency = report["cost_per_1000_requests_usd"], report["latency_s"]
    lines.append(f"| cost per 1,000 requests | {_money(cost['teacher'])} | {_money(cost['student'])} |")
    lines.append("| latency (s) | " + " | ".join("unknown" if latency[w] is None else f"{latency[w]:.3f}" for w in ("teacher", "student")) + " |")
    lines += ["", "Student against the teacher's answers: " + ", ".join(f"{k} {v:.4g}" for k, v in report["student_vs_teacher"].items() if isinstance(v, float)),
              "", f"Distillation set: {report['distillation']['accepted']} answers used, {report['distillation']['rejected']} rejected "
              f"(listed in distill.jsonl), teacher cost {_money(report['distillation']['cost_usd'])}.", "",
              f"Latency: {report['latency_note']}. Cost: {report['cost_note']}.", ""]
    return "\n".join(lines)
