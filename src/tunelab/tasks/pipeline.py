"""The main job: from a config to a verdict, in the order a careful person would do it.

    check data -> split -> estimate -> baseline eval -> train -> eval -> report -> register

Each step is a public function over one ``PipelineContext``, so a notebook can walk them one by one::

    from tunelab.config import load_config
    from tunelab.tasks import pipeline

    context = pipeline.open_pipeline(load_config("config.yaml"))   # run folder + base model
    pipeline.check_step(context)
    pipeline.split_step(context)
    pipeline.estimate_step(context)
    pipeline.baseline_step(context)
    pipeline.train_step(context)
    pipeline.evaluate_step(context)
    pipeline.generation_step(context)     # preference from an evaluated SFT run only
    pipeline.report_step(context)
    outcome = pipeline.register_step(context)

``run_pipeline`` is exactly that sequence (``run_steps``) (with ``train.backend: openai``, ``run_cloud_steps``: the same
steps with a provider's fine-tuning API in place of the local loop, see the section at the end). Each step's outcome is written to ``<run>/pipeline.json``
as it finishes, so ``tunelab run --resume RUN`` picks up an interrupted run at the step it stopped in
(training itself resumes from its last checkpoint); a step that is already done returns what it
produced before. The baselines (``eval.baselines``: the base model, and what a user would do
instead: a classical model, few-shot prompting, retrieval) are cached in the registry by model +
test-set fingerprint + evaluation settings (+ the training records' fingerprint where a baseline
learns from them), so variants of a run (a sweep) pay for them once.

Nothing is registered before the config and the data have passed their checks: a bad key, a wrong
type or a missing file never leaves a half-registered run.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.config import (
    REMOTE_TASKS,
    ResolvedConfig,
    RunConfig,
    dump_config,
    parse_config,
    require_resolved,
)
from tunelab.errors import BudgetExceeded, ConfigError, DataError, TunelabError, cancel_reason
from tunelab.faults import kill_point
from tunelab.paths import (
    atomic_write_text,
    disk_full_error,
    is_disk_full,
    lock_run_folder,
    remove_temporaries,
    unlock_run_folder,
)
from tunelab.runs import Run, RunFolder, anchor_paths, read_state, repair_config, started_in
from tunelab.runtime import pin_threads

if TYPE_CHECKING:  # the heavy modules are imported by the steps that use them (start-up time)
    from tunelab.data.check import CheckReport
    from tunelab.data.formats import RecordError
    from tunelab.data.labels import LabelMap
    from tunelab.data.near_copies import NearCopies
    from tunelab.data.read import ReadResult
    from tunelab.data.records import Record
    from tunelab.data.split import Split
    from tunelab.estimate.prices import PriceTable
    from tunelab.evaluation.answering import AnsweringModel
    from tunelab.evaluation.compare import Verdict
    from tunelab.evaluation.result import EvalResult
    from tunelab.models.loader import LoadedModel
    from tunelab.registry.store import Registry
    from tunelab.remote.finetune import CancelResult, CloudJob
    from tunelab.train.run import TrainResult

EventFn = Callable[[str, str, dict[str, Any]], None]  # (step, "start"|"done"|"skip"|"warn", details)


@dataclass
class RunOutcome:
    """Everything ``tunelab run`` produced; the CLI renders it."""

    name: str
    run_dir: Path
    registry_id: str | None
    config: ResolvedConfig
    split_sizes: dict[str, int]
    estimate: dict[str, Any] | None
    train: dict[str, Any] | None
    base_metrics: dict[str, Any] | None
    tuned_metrics: dict[str, Any] | None
    comparison: Verdict | None  # the tuned model against every baseline
    report: dict[str, str]
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    baseline_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # baseline name -> metrics
    baseline_skipped: dict[str, str] = field(default_factory=dict)  # baseline name -> why it was not scored
    generation: dict[str, Any] | None = None  # preference from an SFT run: generations against the parent
    suspect_labels: dict[str, Any] | None = None  # classify with the embedding baseline: {path, count, records} (suspect_labels_step)

    @property
    def verdict(self) -> str | None:
        return None if self.comparison is None else self.comparison.verdict


def run_name(config: RunConfig) -> str:
    model = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(config.model.name).name.removesuffix(".gguf")) or "model"
    return config.name or f"{config.task}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"


class PipelineState:
    """pipeline.json: the config, finished steps and what each produced."""

    def __init__(self, run: RunFolder, data: dict[str, Any]) -> None:
        self.run = run
        self.data = data

    @classmethod
    def load(cls, run: RunFolder) -> PipelineState:
        """Raises: ConfigError naming the folder when it is not there, or the file when it is missing, damaged or not
        a pipeline state."""
        run.require_folder()
        data = read_state(run)
        if data is None:
            raise ConfigError(f"{run.root} has no {run.pipeline_state.name}: it was not started by `tunelab run`")
        return cls(run, data)

    def done(self, step: str) -> bool:
        return step in self.data.setdefault("steps", {})

    def finish(self, step: str, value: Any, seconds: float) -> None:
        self.data.setdefault("steps", {})[step] = value
        self.data.setdefault("timings", {})[step] = round(seconds, 3)
        self.save()

    def get(self, step: str) -> Any:
        return self.data.get("steps", {}).get(step)

    def save(self) -> None:
        atomic_write_text(self.run.pipeline_state, json.dumps(self.data, indent=1, default=str))


@dataclass
class PipelineContext:
    """One run of the pipeline: its config, folder and state, and what each step has produced so far."""

    config: ResolvedConfig
    run: RunFolder
    state: PipelineState
    base: LoadedModel
    on_event: EventFn | None = None
    train_progress: Callable[[Any], None] | None = None
    eval_progress: Callable[[int], None] | None = None
    calibrate: bool = True
    launch: str | None = None  # accelerate launch options: the train step runs on several processes
    registry: Registry | None = None
    registry_id: str | None = None
    split: Split | None = None
    label_map: LabelMap | None = None
    estimate: dict[str, Any] | None = None
    baseline_evals: dict[str, EvalResult] = field(default_factory=dict)  # eval.baselines, in order
    baseline_skipped: dict[str, str] = field(default_factory=dict)  # eval.baselines not scored, with the reason
    train_result: dict[str, Any] | None = None
    tuned_eval: EvalResult | None = None
    comparison: Verdict | None = None
    report_files: dict[str, str] = field(default_factory=dict)
    generation: dict[str, Any] | None = None  # preference: the DPO model against its SFT parent (generation_step)
    warnings: list[str] = field(default_factory=list)
    locked: bool = False
    read: ReadResult | None = None  # data.train as read before the base model loaded (the check step's records)
    # The predictions files of eval.baselines as parsed (``data.predictions.read_once``, by content): checked before the
    # base model loads, matched at the split and scored as a baseline, read once.
    predictions_read: dict = field(default_factory=dict)

    def close(self) -> None:
        """Release the run folder's lock (``run_pipeline`` does this when it returns or raises)."""
        if self.locked:
            self.locked = False
            unlock_run_folder(self.run.root)

    def lock(self) -> None:
        """Take the run folder's lock (one process per run folder) and remove what killed writes left in it.

        Raises:
            RunFolderInUse: naming the pid of the process working in it.
        """
        if not self.locked:
            lock_run_folder(self.run.root)
            self.locked = True
            # adapter/ too: the register step rewrites its model card in place (a kill there left the temporary in
            # the run's adapter, and `tunelab export` copied it out).
            for folder in (self.run.root, self.run.eval_dir, self.run.adapter):
                remove_temporaries(folder)

    def emit(self, step: str, status: str, details: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(step, status, details)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.state.data["warnings"] = self.warnings
        self.emit("warn", "warn", {"message": message})

    @property
    def base_eval(self) -> EvalResult | None:
        """The base model's zero-shot evaluation, when ``base`` is among the baselines."""
        return self.baseline_evals.get("base")

    def require_split(self) -> Split:
        if self.split is None:
            raise ConfigError("this step needs the split: call split_step(context) first")
        return self.split


@dataclass
class StepRecord:
    """What a step body hands its ``step`` block: saved to pipeline.json, sent with "done", put in the registry."""

    value: Any = None
    details: dict[str, Any] = field(default_factory=dict)
    registry_fields: dict[str, Any] = field(default_factory=dict)
    timing: str | None = None  # the registry's name for this step's measured time
    seconds: float | None = None  # the measured time when the step knows it better than the wall clock


@contextmanager
def step(context: PipelineContext, name: str, *, emit_start: bool = True, **start_details: Any) -> Iterator[StepRecord]:
    """One step's bookkeeping: the start and done events, its time, its state, its registry record.

    A step after the split runs with a registry record (created on first use, marked running); when
    the step raises, the record is marked cancelled (Ctrl-C, SIGTERM), interrupted (a stop) or failed, and the step is not
    recorded as done, so a resume runs it again.
    """
    started = time.perf_counter()
    record = StepRecord()
    try:
        if name not in ("check", "split"):
            _ensure_registered(context)
        if emit_start:
            context.emit(name, "start", start_details)
        kill_point("pipeline.step-started")
        yield record
        seconds = time.perf_counter() - started
        if context.registry_id is not None:
            if record.registry_fields:
                context.registry.update_run(context.registry_id, **record.registry_fields)
            if record.timing:
                actual = record.seconds if record.seconds is not None else seconds
                context.registry.record_timing(context.registry_id, record.timing, actual_s=actual)
    except KeyboardInterrupt as interrupt:
        # The user stopped it (Ctrl-C, SIGTERM, the UI's Cancel): not broken, and told apart from a run that was killed.
        # A distillation's student is continued by `tunelab distill --resume`: `run --resume` would finish the student
        # and never compare it with the teacher.
        command = "distill" if context.run.distill_config.is_file() else "run"
        _mark(context, "cancelled", f"{cancel_reason(interrupt)}; `tunelab {command} --resume RUN` continues it")
        raise
    except SystemExit:
        # Asked to stop (a sweep's scheduler stopping a trial, a signal handler's exit), not broken: the row says
        # interrupted, as the sweep's driver marks it too, and keeps the driver's reason (whoever writes last).
        _mark(context, "interrupted", None)
        raise
    except TunelabError as error:
        from tunelab.remote.finetune import CloudJobCancelled

        _mark(context, "cancelled" if isinstance(error, CloudJobCancelled) else "failed", str(error))
        raise
    except Exception as error:
        full = _failed(context, error)
        if full:
            raise full from None
        raise
    except BaseException as error:
        _mark(context, "failed", type(error).__name__)
        raise
    try:
        context.state.finish(name, record.value, seconds)
    except OSError as error:
        full = _failed(context, error)
        if full:
            raise full from None
        raise
    kill_point("pipeline.step-finished")
    context.emit(name, "done", record.details)


def _failed(context: PipelineContext, error: Exception) -> TunelabError | None:
    """Mark the step's row failed with why; a full disk's one-line error to raise instead, or None."""
    full = _disk_full(context, error)
    _mark(context, "failed", str(full) if full else f"{type(error).__name__}: {error}")
    return full


def _mark(context: PipelineContext, status: str, error: str | None) -> None:
    """Record why a step stopped in the run's row (``error`` None: the row's reason is left as it is). Best
    effort: when even that write fails (a full disk under the registry), the row is marked interrupted the
    next time the registry is opened."""
    if context.registry_id is None:
        return
    try:
        fields = {"status": status} if error is None else {"status": status, "error": error}
        context.registry.update_run(context.registry_id, **fields)
    except Exception:  # noqa: BLE001 - the error being reported matters more than this one
        pass


def _disk_full(context: PipelineContext, error: BaseException) -> TunelabError | None:
    """The one-line error for a write that failed on a full disk (the registry's or the run folder's), or None."""
    return _disk_full_under(error, context.registry, context.run)


def _disk_full_under(error: BaseException, registry: Registry | None, run: RunFolder) -> TunelabError | None:
    import sqlite3

    need = 1_000_000  # a registry row, a report, an evaluation file: small writes
    if isinstance(error, sqlite3.Error) and registry is not None:
        return disk_full_error(registry.path, need) if is_disk_full(error, registry.path) else None
    if not isinstance(error, Exception):
        return None
    filename = getattr(error, "filename", None)
    where = Path(filename) if isinstance(filename, str) else run.root
    return disk_full_error(where, need) if is_disk_full(error, where) else None


def _ensure_registered(context: PipelineContext) -> None:
    """Create the run's registry record once the data has passed its checks (or mark a resumed one running)."""
    from tunelab.registry.store import Registry, default_registry_path

    if context.registry is None:
        context.registry = Registry(default_registry_path(context.config))
    if context.registry_id is not None:
        return
    split = context.require_split()
    context.registry_id = context.state.data.get("registry_id") or _own_row(context.registry, context.run)
    if context.registry_id is None:
        config = context.config
        record = context.registry.create_run(
            name=context.run.root.name,
            task=config.task,
            model=config.model.name,
            config=dump_config(config),
            status="running",
            data_fingerprint=split.data_fingerprint,
            split_fingerprint=split.fingerprint,
            run_dir=str(context.run.root.absolute()),  # read from other folders (the UI, `tunelab runs`, a resume)
        )
        context.registry_id = record.id
        kill_point("pipeline.registered")
        context.state.data["registry_id"] = record.id
        context.state.save()
    else:
        context.registry.update_run(context.registry_id, status="running", error=None)
        if context.state.data.get("registry_id") != context.registry_id:
            context.state.data["registry_id"] = context.registry_id
            context.state.save()


def _own_row(registry: Registry, run: RunFolder) -> str | None:
    """The id of this run folder's registry row when a run was killed after creating it and before
    saving its id in pipeline.json (a row of the same name for another folder is not ours).

    Such a row holds only what creating it wrote (and why it stopped): nothing after that knew its id. A row
    that went further belongs to an earlier run of a folder that was deleted and made again; it may be
    promoted, so taking it over would serve this run's model under the earlier one's verdict.
    """
    from tunelab.registry.store import RegistryError

    try:
        record = registry.get_run(run.root.name)
    except RegistryError:
        return None
    if not record.run_dir or Path(record.run_dir).resolve() != run.root.resolve():
        return None
    went_on = (record.estimate, record.baseline_metrics, record.tuned_metrics, record.comparison, record.timings, record.artifacts)
    if record.status == "finished" or any(value is not None for value in went_on):
        return None
    return record.id


def saved_run(run: RunFolder) -> tuple[PipelineState, ResolvedConfig, Path]:
    """A started run's pipeline state, its config with relative paths anchored, and the folder it was started in.

    Raises:
        ConfigError: naming the folder when it is not there, or its pipeline.json when missing or damaged.
    """
    state = PipelineState.load(run)
    started = started_in(run, state.data["config"])
    # Anchored here, not in pipeline.json: the saved state stays as portable as it was written.
    config = parse_config(anchor_paths(state.data["config"], started, outputs=True), source=str(run.pipeline_state))
    return state, config, started


def open_pipeline(
    config: ResolvedConfig | None = None,
    *,
    resume: str | Path | None = None,
    on_event: EventFn | None = None,
    train_progress: Callable[[Any], None] | None = None,
    eval_progress: Callable[[int], None] | None = None,
    calibrate: bool = True,
    run_dir: str | Path | None = None,
    launch: str | None = None,
) -> PipelineContext:
    """Start a run of ``config`` (or reopen the run folder ``resume``) and load its base model.

    Nothing is written yet: the run folder appears when the data check passes. ``run_dir``: the run
    folder to use, which may already hold what a step before the pipeline wrote (``tunelab distill``
    writes its dataset there first); it must not hold another pipeline's state.

    Raises:
        ConfigError: for an invalid config or an existing run folder.
        ModelError: when the model cannot be loaded.
    """
    from tunelab.runs import load_model
    from tunelab.tasks.launch import check_not_launched

    check_not_launched("tunelab run")
    repaired: str | None = None
    started = Path.cwd()
    if resume is not None:
        run = RunFolder(Path(resume))
        state, config, started = saved_run(run)
    else:
        if config is None:
            raise ConfigError("run_pipeline needs a config or a run folder to resume")
        config = require_resolved(config)
        if not config.data.train:
            raise ConfigError("data.train is required: the file, folder or preset data to train on")
        # Data paths as they mean now, so `tunelab run --resume` reads the same files from any folder.
        config = parse_config(anchor_paths(config.model_dump(mode="json"), Path.cwd()), source="config")
        run = RunFolder(Path(run_dir) if run_dir is not None else Path(config.train.output_dir) / run_name(config))
        if run.pipeline_state.exists() or (run_dir is None and run.root.exists() and any(run.root.iterdir())):
            raise ConfigError(
                f"run folder {run.root} already exists; a run is never overwritten",
                f"choose another name (name=...) or continue it with `tunelab run --resume {run.root}`",
            )
        state = PipelineState(run, {"config": config.model_dump(mode="json"), "steps": {}, "timings": {}})
    from tunelab.train.run import require_tracker

    require_tracker(config)  # before minutes of baselines, not when training starts
    # train.threads, when set, sizes torch's threads in every step (baselines and evaluation too).
    pin_threads(config.train.threads)
    context = PipelineContext(
        config=config, run=run, state=state, base=None, on_event=on_event, train_progress=train_progress,  # type: ignore[arg-type]
        eval_progress=eval_progress, calibrate=calibrate, warnings=list(state.data.get("warnings", [])), launch=launch,
    )
    if resume is not None:
        context.lock()  # before anything is read further: another process may be working in it
        repaired = repair_config(run, config, started)
    try:
        if resume is None:
            from tunelab.data.read import read_records

            # Before the base model loads (a hub download, the default model's first conversion): a file that cannot be
            # read as it is, or its bad records, are said at once. The check step goes on from these records.
            context.read = read_records(config.data.train, config.task, config.data)
            refuse_invalid(config, context.read.errors)
            check_predictions(config, read=context.predictions_read)  # the current system's answers: unreadable rows or two answers to a request
        # The base model is needed by the data check (token lengths), the estimate and the baseline.
        context.base = load_model(config.model.name, allow_network=config.model.allow_network, revision=config.model.revision)
    except BaseException:
        context.close()
        raise
    if repaired:
        context.warn(repaired)
    return context


def refuse_invalid(config: ResolvedConfig, errors: Sequence[RecordError]) -> None:
    """Stop a run on its data's errors unless ``data.skip_invalid``.

    Raises:
        DataError: listing the first ten.
    """
    from tunelab.data.formats import invalid_records

    if errors and not config.data.skip_invalid:
        listed = "; ".join(f"{e.source}: {e.reason}" for e in errors[:10])
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        check = f"`tunelab data check {config.data.train} --task {config.task}` shows all"
        if all(e.rows > 1 for e in errors):
            # A whole file's rows fail for one reason (a header without the field): skipping them drops every row.
            hint = f"map the columns as the error says, or fix the file (data.skip_invalid would drop every row of it); {check}"
        else:
            hint = f"fix them, or set data.skip_invalid: true to drop them (each is listed); {check}"
        raise DataError(f"{invalid_records(errors)} invalid record(s) in {config.data.train}: {listed}{more}", hint)


def check_predictions(
    config: ResolvedConfig, test: Sequence[Record] | None = None, labels: Collection[str] | None = None, *, read: dict | None = None,
) -> list[str]:
    """The run's predictions files (``{predictions: PATH}`` in ``eval.baselines``) read and, given the test split,
    matched to the test requests that will be scored (``evaluation/baselines.check_predictions``); the notes to show
    (with the run's classify ``labels``: the answers that are none of them). ``read``: the files parsed so far in this
    run (``PipelineContext.predictions_read``), kept for its next use.

    Raises:
        DataError: for unreadable rows, two answers to one request, or a test request without an answer.
    """
    from tunelab.evaluation.baselines import check_predictions as check

    return check(config.eval.baselines or (), test, config.task, config=config.eval, data_config=config.data, labels=labels,
                 predictions_read=read)


def check_step(context: PipelineContext) -> None:
    """1. Check the data: stop on errors before anything is written or registered.

    Raises:
        DataError: when records are invalid and ``data.skip_invalid`` is off.
        ConfigError: when ``data.max_length`` or ``train.pack_tokens`` is longer than the model's context.
    """
    from tunelab.data.check import check_data

    if context.state.done("check"):
        return
    config = context.config
    if config.train.backend == "local":  # a provider's fine-tuning API knows its own model's context
        from tunelab.models.generate import check_context

        # As training would, but before the baselines spend minutes and before the run folder exists.
        check_context(config, context.base.model)
    with step(context, "check", path=config.data.train) as record:
        report = check_data(
            config.data.train, config.task, config.data, tokenizer=context.base.tokenizer, test_path=config.data.test,
            read=context.read,
        )
        context.read = None  # not held past the check: the split step reads the data for itself
        for layout in report.layouts:  # how an Alpaca or ShareGPT file's columns were read, said once
            context.emit("check", "event", {"message": f"data: {layout}"})
        groups = group_distribution(report)
        if groups:  # the records per group (data.group_field), as `tunelab data check` tables them
            context.emit("check", "event", {"message": f"data: {groups}"})
        refuse_invalid(config, report.errors)
        for message in data_warnings(report):
            context.warn(message)
        if report.pii is not None and report.pii.found:
            if config.data.pii == "refuse":
                # Before the run folder, the baselines (a cloud run's ask the provider) and any upload.
                raise report.pii.refusal(config.data.train or "data.train")
            if config.train.backend == "openai":
                context.warn(f"data: {report.pii.sent_to(config.data.train or 'data.train', config.model.endpoint.base_url)}")
        context.run.root.mkdir(parents=True, exist_ok=True)
        context.lock()  # from here on this process writes into the folder; a second one is refused
        # Kept in the run folder so the report and the UI show what the data looked like at training time.
        atomic_write_text(context.run.data_check, json.dumps(report.to_dict(), indent=1, ensure_ascii=False, default=str))
        record.value = {"errors": len(report.errors), "warnings": len(report.warnings), "path": str(context.run.data_check)}
        record.details = {"errors": len(report.errors), "warnings": report.warnings}


def split_step(context: PipelineContext) -> Split:
    """2. Split: deterministic, seeded, saved so before and after use exactly the same test set.

    Raises:
        DataError: when the test split is empty.
    """
    from tunelab.data.split import load_split, make_split

    config, run = context.config, context.run
    if context.state.done("split") and run.split.is_file():
        split = load_split(run.split, config)
        context.emit("split", "done", {"sizes": split.sizes()})
    else:
        with step(context, "split") as record:
            split = make_split(config)
            # Kept in split.json, so the report and `tunelab show` say it under the verdict (`runs.read_near_copies`).
            split.near_copies = find_split_near_copies(split)
            split.save(run.split)
            for message in split_warnings(config, split):
                context.warn(message)
            record.value = {"sizes": split.sizes(), "fingerprint": split.fingerprint}
            record.details = {"sizes": split.sizes()}
    if not split.test:
        raise DataError("the test split is empty", "add data, raise data.test_size, or give data.test")
    # Before the estimate, the baselines and training: a test request the current system has no answer to is refused now.
    # The run's labels are its training records' (the label map's), read here without the tokenizer the map needs.
    labels = {record.label for record in split.train} if config.task == "classify" else None
    for message in check_predictions(config, split.test, labels, read=context.predictions_read):
        if message not in context.warnings:  # said once, a resumed run included
            context.warn(message)
    check_pii_sent(context, split.test)
    from tunelab.evaluation.evaluate import check_verdict_metric

    # Before training, not after it: eval.metric json_f1 on test references that are not JSON is refused now.
    check_verdict_metric(config.task, split.test, config.data, config.eval.metric)
    if config.task == "classify":
        from tunelab.data.split import check_classify_labels

        check_classify_labels(split, config.data.out_of_scope_label)  # before the estimate tokenizes validation with them
    context.split = split
    context.label_map = _label_map_for(config, split, context.base.tokenizer)
    return split


def remote_hosts(config: ResolvedConfig) -> list[str]:
    """The providers the test requests are sent to: each remote baseline's, and a cloud run's own (its fine-tuned
    model is evaluated there)."""
    from tunelab.config import resolve_baselines

    urls = [config.model.endpoint.base_url] if config.train.backend == "openai" and config.model.endpoint is not None else []
    for name in resolve_baselines(config.task, config.eval) if config.task in REMOTE_TASKS else ():
        endpoint = config.eval.endpoint_of(name)
        if endpoint is not None:
            urls.append(endpoint.base_url)
    return list(dict.fromkeys(urls))


def check_pii_sent(context: PipelineContext, test: Sequence[Record]) -> None:
    """Personal data in the test requests a remote model will be asked (a remote baseline, a cloud run's evaluation):
    said with the host before the first request, or refused (``data.pii: refuse``). The check step scanned the
    training data; the test split (``data.test``, or held out) is what leaves the machine here. The validation rows
    never do: under ``data.out_of_scope_label`` a remote baseline is offered the label in its prompt and has no
    threshold to choose on them (``baselines.calibrated_baseline``)."""
    from tunelab.data.pii import check_sent
    from tunelab.evaluation.evaluate import select_test_records

    config = context.config
    asked = select_test_records(test, config.data.max_test_examples, config.data.seed)
    for line in check_sent(asked, remote_hosts(config), config.data.pii, f"the test split ({len(asked)} requests)"):
        message = f"data: {line}"
        if message not in context.warnings:  # said once, a resumed run included
            context.warn(message)


def group_distribution(report: CheckReport, shown: int = 12) -> str | None:
    """The check's records per group (``data.group_field``) in one line, most first (the first ``shown`` of them, as the
    label table); None without groups."""
    if not report.groups:
        return None
    counted = list(report.groups.items())
    listed = ", ".join(f"'{group}' {n}" for group, n in counted[:shown])
    more = f", and {len(counted) - shown} more ({sum(n for _, n in counted[shown:])})" if len(counted) > shown else ""
    return f"{len(counted)} group{'s' if len(counted) != 1 else ''} ({report.group_field}): {listed}{more} records"


def data_warnings(report: CheckReport) -> list[str]:
    """The data check's warnings as ``tunelab run`` gives them (check step)."""
    return [f"data: {message}" for message in report.warnings]


def split_warnings(config: RunConfig, split: Split) -> list[str]:
    """The split's warnings as ``tunelab run`` gives them (split step), a test split too small for a verdict included."""
    small = too_few_test_examples(config, split)
    near = near_copy_warning(split)
    return [f"split: {message}" for message in
            [*split.warnings, *([small] if small else []), *too_few_group_examples(config, split), *([near] if near else [])]]


def near_copy_warning(split: Split) -> str | None:
    """The split step's warning when test requests are near-copies of training or validation ones (``data.near_copies``:
    a word or a number apart), with their share of the test: the verdict on them is optimistic. Said, never acted on:
    the split is what it is. None when there are none, and for documents."""
    found = split.near_copies if split.near_copies is not None else find_split_near_copies(split)
    return found.warning("test", "training or validation") if found is not None else None


def find_split_near_copies(split: Split) -> NearCopies | None:
    """The split's test requests that are near-copies of a training or validation one (``data.near_copies``); None
    for documents."""
    from tunelab.data.near_copies import find_near_copies

    return find_near_copies(split.test, [*split.train, *split.validation])


def warnings_before_start(config: ResolvedConfig, tokenizer: Any, split: Split) -> list[str]:
    """What ``tunelab run`` warns of before any compute (the check and split steps' warnings) for ``split``, the
    config's split (``make_split``), for the UI's start form."""
    from tunelab.data.check import check_data

    report = check_data(config.data.train, config.task, config.data, tokenizer=tokenizer, test_path=config.data.test)
    return data_warnings(report) + split_warnings(config, split)


def too_few_test_examples(config: RunConfig, split: Split) -> str | None:
    """The split step's warning, before any compute, when the test split is too small for a verdict; else None.

    The rule is the verdict's (``evaluation.compare.MIN_TEST_EXAMPLES`` paired test examples: requests,
    answers, documents or preference pairs alike), counted after ``data.max_test_examples``.
    """
    from tunelab.evaluation.compare import MIN_TEST_EXAMPLES

    n = len(split.test) if config.data.max_test_examples is None else min(len(split.test), config.data.max_test_examples)
    if n >= MIN_TEST_EXAMPLES or n == 0:
        return None
    unit = {"text": "documents", "preference": "pairs"}.get(config.task, "examples")
    # When data.max_test_examples is what makes it small, more data or a larger split would change nothing.
    fix = ("raise data.max_test_examples" if len(split.test) >= MIN_TEST_EXAMPLES
           else "give more data, raise data.test_size, or give data.test")
    # The split step's line gives the split's own size: said beside it, a capped count alone read as a contradiction.
    size = f"{n} {unit}" if n == len(split.test) else f"{len(split.test)} {unit}, {n} of them evaluated (data.max_test_examples)"
    return (
        f"the test split has {size}; a verdict needs at least {MIN_TEST_EXAMPLES} (below that the paired bootstrap's "
        f"interval is too narrow to trust), so this run will say 'too few test examples to decide': {fix}"
    )


def too_few_group_examples(config: RunConfig, split: Split) -> list[str]:
    """The split step's warning, before any compute, naming each group (``data.group_field``) whose test examples are
    too few for its own verdict (``evaluation.compare.MIN_TEST_EXAMPLES``: its row will say "too few"), with how many it
    has, in one line; empty when there is none, or when the whole test split is too small (``too_few_test_examples``
    says so, and then of every group). Counted on the examples the evaluation scores: after ``data.max_test_examples``.

    A held-out test set gives each group its share (``data.split``), so a group falls short only when its data is too
    small: the line then says how many records it has, and how many a group needs at ``data.test_size``.
    """
    from tunelab.evaluation.compare import MIN_TEST_EXAMPLES

    if config.data.group_field is None or too_few_test_examples(config, split) is not None:
        return []
    scored = split.test
    limit = config.data.max_test_examples
    if limit is not None and len(scored) > limit:
        # Imported only here: the evaluation's seeded sample (torch) is needed only when the cap takes one.
        from tunelab.evaluation.evaluate import select_test_records

        scored = select_test_records(scored, limit, config.data.seed)
    counts = Counter(record.group for record in scored if getattr(record, "group", None) is not None)
    capped = limit is not None and len(split.test) > limit
    held_out = split.test_from == "held out" and not capped
    if held_out:
        # Every group of the data, one the split left wholly in train too (0 test examples: it gets no row at all).
        held = Counter(record.group for side in (split.train, split.validation, split.test) for record in side
                       if getattr(record, "group", None) is not None)
        counts = Counter({group: counts[group] for group in held})
    small = sorted(((group, n) for group, n in counts.items() if n < MIN_TEST_EXAMPLES), key=lambda kv: (kv[1], kv[0]))
    if not small:
        return []
    listed = ", ".join(f"'{group}' {n}" for group, n in small)
    if capped:
        # As for the whole split: when the cap is what makes a group small, more data would change nothing.
        fix = "raise data.max_test_examples"
    elif not held_out:
        # The test file is what each group is tested on: the training data's size changes nothing.
        fix = f"give those groups at least {MIN_TEST_EXAMPLES} rows each in data.test ({split.test_from})"
    else:
        listed = ", ".join(f"'{group}' {_counted(n, 'test example')} of its {_counted(held[group], 'record')}" for group, n in small)
        fix = "give those groups more data, raise data.test_size, or give data.test (a rare group its own test file)"
        if split.test_size > 0:  # 0 holds out no test set (its only test records are out-of-scope ones)
            # The split gives each group its share of the test set (data.split): a short group has too few records.
            needed = math.ceil(MIN_TEST_EXAMPLES / split.test_size)
            fix = f"at data.test_size {split.test_size:g} a group needs at least {needed} records for {MIN_TEST_EXAMPLES} test examples: {fix}"
    missing = " (a group with none gets no row)" if small[0][1] == 0 else ""
    return [
        f"{len(small)} of {len(counts)} group(s) ({config.data.group_field}) will have fewer than {MIN_TEST_EXAMPLES} test "
        f"examples, so their verdict by group will say 'too few'{missing}: {listed}; {fix}"
    ]


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def estimate_step(context: PipelineContext) -> dict[str, Any]:
    """3. Estimate: tokens, FLOPs, time here (measured), on GPUs, memory, money; stop if over budget.

    When the memory plan does not fit the device (``budget.max_memory_gib``, else its free memory), the
    run stops here before any compute, naming what would fit (``train.fit: check``), or the first of those
    is applied to the run's config and said (``train.fit: auto``).

    Raises:
        BudgetExceeded: when the estimate is over ``budget.max_hours`` / ``budget.max_usd``, or the run
            will not fit its device's memory under ``train.fit: check``.
    """
    from tunelab.estimate import estimate_for_split

    if context.state.get("estimate") is not None:
        context.estimate = context.state.get("estimate")
        # The step is recorded before its checks: a resume (whose config, and so its budget, is pipeline.json's)
        # is held to the same limits, or it would train what the first attempt refused to.
        _ensure_registered(context)
        _stop_over_budget(context, context.estimate)
        return context.estimate
    split = context.require_split()
    with step(context, "estimate") as record:
        # The base model stays as it is (the baseline evaluates it next): calibration loads its own copy.
        from tunelab.tasks.launch import launch_processes

        # Under --launch the train step's global batch is batch_size times the launched processes: so are its steps.
        result = estimate_for_split(context.config, split, context.base, label_map=context.label_map, calibrate_here=context.calibrate,
                                    processes=launch_processes(context.launch))
        result.with_remote_baselines(context.config, remote_baseline_prices(context.config, split))
        estimate = result.as_dict()
        for name, seconds in (result.seconds or {}).items():
            context.registry.record_timing(context.registry_id, name, estimated_s=seconds)
        record.value = estimate
        record.details = {"estimate": estimate}
        record.registry_fields = {"estimate": estimate}
    context.estimate = estimate
    fit = result.fit
    if fit is not None and fit.applied:
        # train.fit: auto: the run that trains is the one that fits; its config is what is saved and registered.
        from tunelab.config import apply_overrides

        context.config = parse_config(apply_overrides(context.state.data["config"], fit.applied), source="train.fit")
        context.state.data["config"] = context.config.model_dump(mode="json")
        context.state.save()
        context.registry.update_run(context.registry_id, config=dump_config(context.config))
        context.warn(f"train.fit: auto: {fit.describe()}")
    _stop_over_budget(context, estimate)
    return estimate


def remote_baseline_prices(config: ResolvedConfig, split: Split, prices: PriceTable | None = None) -> dict[str, dict[str, Any]]:
    """What the run's remote baselines will be asked and cost (``baselines.estimate_remote_baselines``: the requests the
    baseline step sends, over the run's labels), each with the line said before a request: what ``tunelab run``'s
    estimate step and ``tunelab estimate`` add to the estimate (``Estimate.with_remote_baselines``).

    Raises:
        ConfigError: when a remote baseline's API key variable is empty.
    """
    from tunelab.config import resolve_baselines
    from tunelab.evaluation.baselines import estimate_remote_baselines

    labels = sorted({r.label for r in split.train} - {config.data.out_of_scope_label}) if config.task == "classify" else None
    priced = estimate_remote_baselines(resolve_baselines(config.task, config.eval), split.test, config.task, config=config.eval,
                                       data_config=config.data, labels=labels, prices=prices)
    return {name: {**estimate.to_dict(), "line": estimate.describe()} for name, estimate in priced.items()}


# Why a stopped run's hint names a new run: the folder is taken, and `--resume` is held to the saved config's limits.
_FIXED_CONFIG = "this run keeps its config, and `tunelab run --resume` would stop the same way"


def _stop_over_budget(context: PipelineContext, estimate: dict[str, Any]) -> None:
    """Stop a run whose saved estimate (``EstimateResult.as_dict``) will not fit its device or is over budget.

    Raises:
        BudgetExceeded: naming what would fit, or which limit the estimate is over.
    """
    fit = estimate.get("fit") or {}
    if fit and not fit.get("applied") and not fit.get("fits") and context.config.train.fit != "off":
        reason = fit.get("summary") or "the run will not fit its device's memory"
        context.registry.update_run(context.registry_id, status="failed", error=reason)
        raise BudgetExceeded(
            reason,
            "set one of those, or train.fit=auto to apply the first (train.fit=off trains anyway; "
            f"budget.max_memory_gib sets the limit), in a new run (another name=...): {_FIXED_CONFIG}",
        )
    budget = estimate.get("budget") or {}
    if budget.get("over"):
        reasons = "; ".join(budget.get("reasons") or [])
        context.registry.update_run(context.registry_id, status="failed", error="over budget: " + reasons)
        raise BudgetExceeded(
            "the estimate is over budget: " + reasons,
            f"raise budget.max_hours / budget.max_usd, or shrink the run, in a new run (another name=...): {_FIXED_CONFIG}",
        )


def baseline_step(context: PipelineContext) -> dict[str, EvalResult]:
    """4. Baselines: every ``eval.baselines`` entry on the test split, each cached across variants.

    Each is saved as ``eval/<name>.json`` (``eval/base.json`` for the base model). The classical,
    few-shot and retrieval baselines learn from the split's training and validation records. Returns
    {} when ``eval.baselines`` is empty.
    """
    from tunelab.config import resolve_baselines
    from tunelab.data.split import learning_records
    from tunelab.evaluation.baselines import evaluate_baselines
    from tunelab.evaluation.result import EvalResult

    config, run = context.config, context.run
    names = resolve_baselines(config.task, config.eval)  # a resumed older run has no resolved list
    if not names:
        return {}
    paths = {name: run.baseline_eval(name) for name in names}
    if context.state.done("baseline"):
        done = context.state.get("baseline") or {}
        skipped = dict(done.get("skipped") or {})
        if all(path.is_file() for name, path in paths.items() if name not in skipped):
            context.baseline_evals = {name: EvalResult.load(path) for name, path in paths.items() if name not in skipped}
            context.baseline_skipped = skipped
            return context.baseline_evals
    split = context.require_split()
    _ensure_registered(context)
    cached: list[str] = []

    def on_baseline(name: str, status: str, details: dict[str, Any]) -> None:
        if status == "skip":
            cached.append(name)
            context.emit("baseline", "skip", {"baseline": name, **details})
        else:  # start, progress (done, total, eta_s), done, skipped (reason)
            context.emit("baseline", f"baseline {status}", {"baseline": name, **details})

    with step(context, "baseline", n=len(split.test), baselines=names) as record:
        results = evaluate_baselines(
            names, context.base, split.test, config.task, train=learning_records(split), config=config.eval,
            data_config=config.data, label_map=context.label_map, train_ids=[r.id for r in split.train],
            registry=context.registry, cache_dir=Path(config.train.output_dir) / "baselines", model_key=_model_key(context.base),
            run_id=context.registry_id, on_event=on_baseline, progress=context.eval_progress, validation=split.validation,
            allow_network=config.model.allow_network, predictions_read=context.predictions_read,
        )
        for name, result in results.items():
            result.save(paths[name])
        metrics = {name: result.metrics for name, result in results.items()}
        record.value = {"paths": {name: str(paths[name]) for name in results}, "cached": cached, "skipped": results.skipped}
        suspects = suspect_labels_step(context, results.get("embedding"))
        if suspects is not None:
            record.value["suspect_labels"] = suspects
        shown = metrics.get("base") or next(iter(metrics.values()), None)
        record.details = {"metrics": shown, "baselines": metrics, "skipped": results.skipped}
        # The registry's baseline_metrics column keeps the base model's (what `tunelab runs` shows as "before"), or
        # none when it was skipped or not asked for: another baseline's metrics there read as the base model's.
        record.registry_fields = {"baseline_metrics": metrics.get("base") or metrics.get(REMOTE_BASE)}
        record.timing = "baseline"
    context.baseline_evals = dict(results)
    context.baseline_skipped = dict(results.skipped)
    return context.baseline_evals


def suspect_labels_step(context: PipelineContext, embedding: EvalResult | None) -> dict[str, Any] | None:
    """Part of step 4, before any training: the suspect labels the classify embedding baseline found among the rows it
    learned from (its own cross-validation, ``evaluation.suspects``), written to the run folder and said in one warning
    when there are any. It never stops the run nor changes what is trained. Returns {path, count, records}, or None
    when the baseline did not run (not asked for, skipped, another task)."""
    from tunelab.evaluation.suspects import SuspectReport, run_warning

    if context.config.task != "classify" or embedding is None or embedding.suspect_labels is None:
        return None
    report = SuspectReport.from_dict(embedding.suspect_labels)
    path = context.run.suspect_labels
    atomic_write_text(path, json.dumps(report.to_dict(max_suspects=len(report.suspects)), indent=1, ensure_ascii=False))
    message = run_warning(report, str(path))
    if message is not None:
        context.warn(message)
    return {"path": str(path), "count": len(report.suspects), "records": report.records}


def _record_validation_time(registry: Any, registry_id: str | None, result: dict[str, Any]) -> None:
    """The validation passes' actual time, beside the estimate's "validation" (a result without it, or without a
    validation set, records nothing: `tunelab show` keeps "-")."""
    seconds = result.get("validation_seconds")
    if registry_id is not None and isinstance(seconds, int | float):
        registry.record_timing(registry_id, "validation", actual_s=seconds)


def train_step(context: PipelineContext) -> dict[str, Any]:
    """5. Train (continuing from the last checkpoint when the run folder already has one)."""
    from tunelab.tasks import run_training

    if context.state.get("train") is not None:
        context.train_result = context.state.get("train")
        return context.train_result
    split = context.require_split()
    with step(context, "train") as record:
        resume_training = context.run.config.is_file()
        if context.launch:
            from tunelab.tasks.launch import train_launched

            record.value = train_launched(context.config, context.run.root, context.launch, resume=resume_training)
        else:
            result = run_training(context.config, split, run_dir=context.run.root, progress=context.train_progress, resume=resume_training)
            for message in result.warnings:
                context.warn(f"train: {message}")
            record.value = result.as_dict()
        record.details = {"result": record.value}
        record.timing, record.seconds = "train", record.value["seconds"]
        _record_validation_time(context.registry, context.registry_id, record.value)
    context.train_result = record.value
    return context.train_result


def train_registered(config: ResolvedConfig, split: Split, *, run_dir: str | Path, progress: Callable[[Any], None] | None = None,
                     resume: bool = False) -> TrainResult:
    """``tunelab train``: train ``config`` into ``run_dir`` and keep the run in the registry like any other.

    The run is registered (status running) once its data has been split, marked finished with the
    training result afterwards, or cancelled / failed when training stops; its registry id is kept in
    the run's pipeline state, so ``tunelab runs``, the web interface, ``tunelab retrain`` and
    ``tunelab run --resume`` (which evaluates it) all find it.

    Raises:
        ConfigError, DataError, ModelError, TrainingError: as ``tasks.run_training``.
    """
    from tunelab.registry.store import Registry, default_registry_path
    from tunelab.tasks import run_training
    from tunelab.train.run import check_launch, check_model, require_tracker

    require_tracker(config)  # before a registry row or a run folder exists, as `tunelab run` checks it
    check_launch()
    check_model(config)  # the model is there and the rows fit its context: as `tunelab run`'s data check
    run = RunFolder(Path(run_dir))
    if run.pipeline_state.is_file():
        state = PipelineState.load(run)
    else:
        state = PipelineState(run, {"config": config.model_dump(mode="json"), "steps": {}, "timings": {}})
    registry = Registry(default_registry_path(config))
    if not resume:
        # start_run refuses an existing run folder; check first, so no registry row is left for a refused run and a
        # finished run's row (its id in pipeline.json) is never marked failed by a second start of the same name.
        from tunelab.train.run import check_new_run_folder

        check_new_run_folder(run)
    # Held before the row says running: a row whose folder's lock nobody holds was killed (Registry._settle).
    # Under a multi-process launch the first process holds it for all (as in run_training).
    import os

    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process:
        lock_run_folder(run.root)
    try:
        registry_id = state.data.get("registry_id") or _own_row(registry, run)
        if registry_id is None:
            record = registry.create_run(
                name=run.root.name, task=config.task, model=config.model.name, config=dump_config(config), status="running",
                data_fingerprint=split.data_fingerprint, split_fingerprint=split.fingerprint, run_dir=str(run.root.absolute()),
            )  # fmt: skip
            registry_id = record.id
            kill_point("pipeline.registered")
        else:
            registry.update_run(registry_id, status="running", error=None)
        if state.data.get("registry_id") != registry_id:
            state.data["registry_id"] = registry_id
            state.data.setdefault("steps", {})["split"] = {"sizes": split.sizes(), "fingerprint": split.fingerprint}
            state.save()
        try:
            result = run_training(config, split, run_dir=run.root, progress=progress, resume=resume)
        except KeyboardInterrupt as interrupt:
            registry.update_run(registry_id, status="cancelled", error=f"{cancel_reason(interrupt)}; `tunelab train --resume RUN` continues it")
            raise
        except BaseException as error:
            full = _disk_full_under(error, registry, run)  # as `tunelab run` says it: one line naming the file
            try:
                registry.update_run(registry_id, status="failed", error=str(full or getattr(error, "message", error)))
            except Exception:  # noqa: BLE001 - a full disk under the registry: the next reader marks it interrupted
                pass
            if full:
                raise full from None
            raise
        try:
            registry.update_run(registry_id, status="finished", artifacts={"run_dir": str(run.root.absolute()), "train": result.as_dict()})
            registry.record_timing(registry_id, "train", actual_s=result.seconds)
            _record_validation_time(registry, registry_id, result.as_dict())
            state.finish("train", result.as_dict(), result.seconds)
        except Exception as error:  # the weights are saved; a full disk here is one line, and the row is settled on resume
            full = _disk_full_under(error, registry, run)
            if full:
                raise full from None
            raise
        return result
    finally:
        if main_process:
            unlock_run_folder(run.root)


def evaluate_step(context: PipelineContext, model: AnsweringModel | None = None) -> EvalResult:
    """6. Evaluate the tuned model on the same test records, prompts and decoding.

    ``model`` is the tuned model (default: the run folder's, loaded here); the cloud pipeline passes the
    provider's fine-tuned model. Both answer through the one model interface; resume, saving and bookkeeping
    are the same.
    """
    from tunelab.evaluation.answering import LocalModel
    from tunelab.evaluation.remote import names_label_map
    from tunelab.evaluation.result import EvalResult

    config, run = context.config, context.run
    tuned_path = run.tuned_eval
    if context.state.done("evaluate") and tuned_path.is_file():
        context.tuned_eval = EvalResult.load(tuned_path)
        return context.tuned_eval
    split = context.require_split()
    with step(context, "evaluate", n=len(split.test)) as record:
        tuned = model if model is not None else LocalModel(Run.open(run.root).load())
        labels = None  # a run answers over its own label map
        if config.task == "classify" and tuned.remote:
            # A remote model answers by the categories' names: the training labels, as its fine-tuning data had them.
            labels = names_label_map(sorted({r.label for r in split.train}))
        tuned_eval = tuned.evaluate(split.test, config.task, config=config.eval, data_config=config.data, label_map=labels,
                                    train_ids=[r.id for r in split.train], progress=context.eval_progress)
        tuned_eval.save(tuned_path)
        record.value = {"path": str(tuned_path)}
        record.details = {"metrics": tuned_eval.metrics}
        record.registry_fields = {"tuned_metrics": tuned_eval.metrics}
        record.timing = "eval"
    context.tuned_eval = tuned_eval
    return tuned_eval


def generation_step(context: PipelineContext) -> dict[str, Any] | None:
    """6b. preference from an evaluated SFT run: the DPO model answers the parent's test prompts.

    Generation metrics of the DPO model against its SFT parent (paired bootstrap) and a blind A/B
    sheet for people (``review.csv``: win rate with ``tunelab review score RUN/review.csv``). None for any
    other run (another task, a parent that is no evaluated SFT run).
    """
    from tunelab.tasks.preference import generation_against_parent, sft_parent

    if context.config.task != "preference":
        return None
    if context.state.done("generation"):
        context.generation = context.state.get("generation")
        return context.generation
    parent = sft_parent(context.config)
    if parent is None:
        return None
    with step(context, "generation", parent=str(parent.root)) as record:
        record.value = generation_against_parent(context.config, context.run.root, parent, progress=context.eval_progress)
        record.details = {"summary": record.value["summary"], "sheet": record.value["sheet"]}
    context.generation = record.value
    return context.generation


def report_step(context: PipelineContext) -> Verdict | None:
    """7. Compare the tuned model with every baseline (paired bootstrap), give the verdict, write the report.

    Returns None without baselines.
    """
    from tunelab.evaluation.compare import compare_with_baselines
    from tunelab.evaluation.report import write_report

    if not context.baseline_evals:
        return None
    if context.tuned_eval is None:
        raise ConfigError("report_step needs the tuned evaluation: call evaluate_step(context) first")
    config, run = context.config, context.run
    with step(context, "report") as record:
        verdict = compare_with_baselines(context.baseline_evals, context.tuned_eval, seed=config.eval.seed,
                                         samples=config.eval.bootstrap_samples, skipped=context.baseline_skipped)
        verdict.save(run.comparison)
        files = write_report(run.root, context.baseline_evals, context.tuned_eval, verdict)
        report_files = {"markdown": str(files.markdown), "html": str(files.html)}
        record.value = report_files
        record.details = {"files": report_files, "verdict": verdict.verdict, "summary": verdict.summary}
    context.comparison, context.report_files = verdict, report_files
    return verdict


def tracker_values(context: PipelineContext) -> dict[str, float | str]:
    """What the experiment tracker gets after training: every evaluation metric, each baseline's, and the verdict."""
    from tunelab.registry import metric_values

    values: dict[str, float | str] = {}
    if context.tuned_eval is not None:
        values.update({f"eval/tuned/{name}": value for name, value in metric_values(context.tuned_eval.metrics).items()})
    for baseline, result in context.baseline_evals.items():
        values.update({f"eval/{baseline}/{name}": value for name, value in metric_values(result.metrics).items()})
    verdict = context.comparison
    if verdict is not None:
        values["eval/verdict"] = f"{verdict.verdict}: {verdict.summary}"
        values["eval/paid_off"] = 1.0 if verdict.paid_off else 0.0
    return values


def register_step(context: PipelineContext) -> RunOutcome:
    """8. Register the finished run (status, comparison, artifacts) and return everything it produced.

    A run with ``train.tracker`` also logs the evaluation and the verdict there, at its last training step.
    """
    if context.tuned_eval is None:
        raise ConfigError("register_step needs the tuned evaluation: call evaluate_step(context) first")
    if context.config.train.tracker != "none" and not context.state.done("register") and context.config.train.backend == "local":
        from tunelab.train.run import report_to_tracker

        report_to_tracker(context.config, context.run.root, tracker_values(context), step=(context.train_result or {}).get("steps"))
    suspects = (context.state.get("baseline") or {}).get("suspect_labels")
    with step(context, "register", emit_start=False) as record:
        record.registry_fields = {
            "status": "finished",
            "comparison": context.comparison.to_dict() if context.comparison else None,
            "artifacts": {
                "run_dir": str(context.run.root.absolute()), "train": context.train_result, **context.report_files,
                "baselines": {name: result.metrics for name, result in context.baseline_evals.items()},
                "baselines_skipped": context.baseline_skipped,
                **({"generation": context.generation["comparison"]} if context.generation else {}),
                **({"suspect_labels": _suspects_line(suspects)} if suspects else {}),
            },
        }
        record.value = {"registry": str(context.registry.path), "id": context.registry_id}
        record.details = {"id": context.registry_id, "registry": str(context.registry.path)}
        if context.run.adapter.is_dir():
            from tunelab.runs import make_adapter_portable

            make_adapter_portable(Run.open(context.run.root))  # the model card with the held-out metrics and the verdict
    split = context.require_split()
    return RunOutcome(
        name=context.run.root.name,
        run_dir=context.run.root,
        registry_id=context.registry_id,
        config=context.config,
        split_sizes=split.sizes(),
        estimate=context.estimate,
        train=context.train_result,
        base_metrics=context.base_eval.metrics if context.base_eval else None,
        tuned_metrics=context.tuned_eval.metrics,
        comparison=context.comparison,
        report=context.report_files,
        timings=dict(context.state.data.get("timings", {})),
        warnings=list(context.warnings),
        baseline_metrics={name: result.metrics for name, result in context.baseline_evals.items()},
        baseline_skipped=dict(context.baseline_skipped),
        generation=context.generation,
        suspect_labels=suspects,
    )


def _suspects_line(suspects: dict[str, Any]) -> str:
    """The registry's (``tunelab show``'s) one line of a run's suspect labels."""
    return f"{suspects['count']} of {suspects['records']} training rows: {suspects['path']}"


def run_pipeline(
    config: ResolvedConfig | None = None,
    *,
    resume: str | Path | None = None,
    on_event: EventFn | None = None,
    train_progress: Callable[[Any], None] | None = None,
    eval_progress: Callable[[int], None] | None = None,
    calibrate: bool = True,
    launch: str | None = None,
) -> RunOutcome:
    """Run the whole lifecycle for ``config`` (or continue the run folder ``resume``): every step in order.

    ``launch``: ``accelerate launch`` options; the train step then runs on the processes they start
    (``tunelab.tasks.launch``).

    Raises:
        ConfigError: for an invalid config or an existing run folder.
        DataError: when the data has errors (nothing is registered then).
        BudgetExceeded: when the estimate is over ``budget.max_hours`` / ``budget.max_usd``.
        ModelError: when the model cannot be loaded.
    """
    context = open_pipeline(
        config, resume=resume, on_event=on_event, train_progress=train_progress, eval_progress=eval_progress, calibrate=calibrate,
        launch=launch,
    )
    try:
        if context.config.train.backend == "openai":  # a provider's fine-tuning API in place of the local loop
            return run_cloud_steps(context)
        return run_steps(context)
    finally:
        context.close()


def run_steps(context: PipelineContext) -> RunOutcome:
    """Every step of a local run, in order, from an opened context (what ``run_pipeline`` and distillation's student run)."""
    check_step(context)
    split_step(context)
    estimate_step(context)
    baseline_step(context)
    train_step(context)
    evaluate_step(context)
    generation_step(context)
    report_step(context)
    return register_step(context)


def _label_map_for(config: RunConfig, split: Split, tokenizer: Any) -> LabelMap | None:
    if config.task != "classify":
        return None
    from tunelab.data.labels import LabelMap

    return LabelMap.for_records(split.train, tokenizer, config.data.out_of_scope_label)


def _model_key(loaded: LoadedModel) -> str:
    """What identifies the base model for the baseline cache: its resolved location and the identity of its weights.

    A folder's own size and time stay the same when a file in it is rewritten in place (``save_pretrained`` over the
    same names), so each weight-bearing file counts (name, size, modification time in ns); a hub model counts the
    commit its files were loaded from. Anything that changes the weights gives a new key: base and few-shot
    baselines are never served from answers of other weights.
    """
    import hashlib

    source = loaded.source
    location = Path(source.location)
    if location.is_file():
        stat = location.stat()
        return f"{source.kind}:{location.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    if location.is_dir():
        if source.kind == "run":  # its weights, tokenizer and labels; not its evaluations, reports or checkpoints
            folder = RunFolder(location)
            files = [folder.config, folder.labels, *_files_in(folder.adapter), *_files_in(folder.model), *_files_in(folder.tokenizer)]
        else:
            files = _files_in(location)
        identity = "\n".join(f"{path.relative_to(location)}:{stat.st_size}:{stat.st_mtime_ns}"
                              for path in files if path.is_file() for stat in [path.stat()])
        return f"{source.kind}:{location.resolve()}:{hashlib.sha256(identity.encode()).hexdigest()[:16]}"
    commit = getattr(getattr(loaded.model, "config", None), "_commit_hash", None)  # set by transformers from the hub cache
    return f"{source.kind}:{source.location}" + (f"@{commit}" if commit else "")


def _files_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_file()) if folder.is_dir() else []


# ------------------------------------------------------------------ train.backend: openai (cloud fine-tuning)
# ``train.backend: openai``: the pipeline with a provider's fine-tuning API in place of the local loop.
#
#     check -> split -> estimate (price) -> baselines -> train (upload, job, events) -> evaluate (remote) -> report -> register
#
# The same data, split, baselines, report and registry as a local run; what differs:
#
# - estimate: tokens of the chat JSONL (counted with the local model's tokenizer, an approximation of
#   the provider's) x epochs x the dated per-training-token price; ``budget.max_usd`` is checked
#   before anything is uploaded (an unknown price with a budget set stops the run).
# - baselines: ``base`` is the provider's base model (``model.endpoint``) asked remotely, the same
#   prompts as the tuned model; ``few_shot`` (a local model with examples in its prompt) is left out.
# - train: upload, create the job, follow its events; ``cloud_job.json`` in the run folder keeps the
#   uploaded files' ids from the first upload on and then the job id, so ``tunelab run --resume RUN`` after
#   Ctrl-C, a crash or a lost connection reuses the files and follows the same job (one job is paid for:
#   see ``tunelab.remote.finetune``).
# - evaluate: the fine-tuned model through ``tunelab.evaluation.remote``.

REMOTE_BASE = "remote:base"  # the provider's base model as the "base" baseline of a cloud run
# Seconds between two looks at a running job (jobs take minutes to hours); TUNELAB_CLOUD_POLL_S overrides it.
POLL_SECONDS = 10.0


def _poll_seconds() -> float:
    import os

    return float(os.environ.get("TUNELAB_CLOUD_POLL_S") or POLL_SECONDS)


def cloud_conversations(records: Sequence[Any], config: ResolvedConfig, labels: Sequence[str]) -> list[list[dict[str, str]]]:
    """Training chats: the prompt the model is evaluated with, answered with the reference (sft) or the label (classify)."""
    from tunelab.data.templates import with_system_prompt
    from tunelab.evaluation.remote import classify_conversation

    system = config.data.system_prompt
    if config.task == "classify":
        return [[*classify_conversation(r.text, labels, system), {"role": "assistant", "content": r.label}] for r in records]
    return [[*with_system_prompt(r.prompt_messages, system), {"role": "assistant", "content": r.completion}] for r in records]


def cloud_labels(context: PipelineContext) -> list[str]:
    return _cloud_labels(context.config, context.require_split())


def _cloud_labels(config: ResolvedConfig, split: Split) -> list[str]:
    return sorted({r.label for r in split.train}) if config.task == "classify" else []


def cloud_price(config: ResolvedConfig, split: Split, base: LoadedModel, prices: PriceTable | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The chat rows of a provider run's training examples and the price of its job (``remote.finetune.CloudEstimate``
    as a dict, ``backend`` added): what ``budget.max_usd`` is checked against, in ``tunelab run`` and ``tunelab estimate``.

    Raises:
        DataError: when the examples do not make a valid chat file.
    """
    from tunelab.remote.finetune import chat_lines, estimate_cloud_cost

    rows = chat_lines(cloud_conversations(split.train, config, _cloud_labels(config, split)))
    tokenizer = base.tokenizer
    estimate = estimate_cloud_cost(
        rows, config.train.epochs, config.model.endpoint.name, prices=prices,
        count_tokens=lambda text: len(tokenizer.encode(text, add_special_tokens=False)),
        counted_with=f"the tokenizer of {base.source.display_name} (the provider's count differs somewhat)",
    ).as_dict()
    estimate["backend"] = "openai"
    return rows, estimate


def cloud_budget_reason(config: ResolvedConfig, estimate: dict[str, Any]) -> str | None:
    """Why the job priced ``estimate`` and its remote baselines' requests (``remote_baselines``, the expected price of
    those the table prices: an unknown one is not counted, never as 0) are over ``budget.max_usd`` (an unknown price
    of the job with a budget set is), else None."""
    from tunelab.estimate.plan import money

    limit = config.budget.max_usd
    if limit is None:
        return None
    if estimate["usd"] is None:
        return f"the price of fine-tuning {config.model.endpoint.name} is not in the price table"
    asked = {name: r["usd_expected"] for name, r in (estimate.get("remote_baselines") or {}).items() if r.get("usd_expected") is not None}
    if estimate["usd"] + sum(asked.values()) <= limit:
        return None
    requests = f" + {money(sum(asked.values()))} of requests to the remote baselines ({', '.join(asked)})" if asked else ""
    return f"estimated {money(estimate['usd'])}{requests} > budget.max_usd {limit:g}"


def estimate_cloud_run(
    config: ResolvedConfig, prices: PriceTable | None = None, *, split: Split | None = None, loaded: LoadedModel | None = None
) -> dict[str, Any]:
    """What ``tunelab estimate`` reports of a ``train.backend: openai`` config: the job's price as ``tunelab run``
    computes it before uploading (:func:`cloud_price`), and ``budget`` (``over``, ``reasons``) as it checks it.
    Nothing trains on this machine, so nothing is timed here and no GPU is priced. ``split`` / ``loaded``: the config's
    split and model, made and loaded already (the web interface's estimate has them).

    Raises:
        DataError: when the data cannot be read or does not make a valid chat file.
        ModelError: when the model whose tokenizer counts the tokens cannot be loaded.
    """
    from tunelab.data.split import make_split
    from tunelab.runs import load_model

    config = require_resolved(config)
    split = split if split is not None else make_split(config)
    base = loaded if loaded is not None else load_model(config.model.name, allow_network=config.model.allow_network, revision=config.model.revision)
    _, estimate = cloud_price(config, split, base, prices)
    estimate["remote_baselines"] = remote_baseline_prices(with_remote_base(config), split, prices)  # as run_cloud_steps asks them
    reason = cloud_budget_reason(config, estimate)
    return {**estimate, "budget": {"over": reason is not None, "reasons": [reason] if reason else []}}


def cloud_estimate_step(context: PipelineContext) -> dict[str, Any]:
    """3. The price of the job before anything is uploaded; stop when over ``budget.max_usd``.

    Raises:
        DataError: when the examples do not make a valid chat file.
        BudgetExceeded: over budget, or a budget set and the price unknown.
    """
    from tunelab.remote.finetune import write_chat_jsonl

    if context.state.get("estimate") is not None:
        context.estimate = context.state.get("estimate")
        _ensure_registered(context)
        _stop_over_cloud_budget(context, context.estimate)  # a resume is held to the budget (see estimate_step)
        return context.estimate
    config, split = context.config, context.require_split()
    labels = cloud_labels(context)
    with step(context, "estimate") as record:
        rows, estimate = cloud_price(config, split, context.base)
        # The baselines run_cloud_steps asks (the provider's base model among them), priced before anything is sent.
        estimate["remote_baselines"] = remote_baseline_prices(with_remote_base(config), split)
        write_chat_jsonl(rows, context.run.cloud_train)
        if split.validation:
            write_chat_jsonl([{"messages": m} for m in cloud_conversations(split.validation, config, labels)], context.run.cloud_validation)
        record.value = estimate
        record.details = {"estimate": {**estimate, "total_seconds": None}}
        record.registry_fields = {"estimate": estimate}
    context.estimate = estimate
    _stop_over_cloud_budget(context, estimate)
    return estimate


def _stop_over_cloud_budget(context: PipelineContext, estimate: dict[str, Any]) -> None:
    """Raises: BudgetExceeded when the job's price is over ``budget.max_usd``, or unknown with a budget set."""
    config = context.config
    reason = cloud_budget_reason(config, estimate)
    if reason is not None:
        context.registry.update_run(context.registry_id, status="failed", error=f"over budget: {reason}")
        raise BudgetExceeded(f"the estimate is over budget: {reason}",
                             f"raise budget.max_usd, add the price to the table, or shrink the data, in a new run (another name=...): {_FIXED_CONFIG}")


def with_remote_base(config: ResolvedConfig) -> ResolvedConfig:
    """The config whose baselines ask the provider's base model in place of a local one (few_shot left out)."""
    from tunelab.config import resolve_baselines

    names = [REMOTE_BASE if name == "base" else name for name in resolve_baselines(config.task, config.eval) if name != "few_shot"]
    endpoints = {**config.eval.endpoints, "base": config.model.endpoint}
    return config.model_copy(update={"eval": config.eval.model_copy(update={"baselines": names, "endpoints": endpoints})})


def cloud_train_step(context: PipelineContext, *, poll_s: float | None = None) -> dict[str, Any]:
    """5. Upload, create the job (or find the one already created), follow it to its end.

    Raises:
        CloudJobFailed: when the job fails or is cancelled.
        RemoteError: when the provider cannot be reached (resume to follow again).
    """
    import time

    from tunelab.remote.finetune import CloudJob, follow_job, start_job

    if context.state.get("train") is not None:
        context.train_result = context.state.get("train")
        return context.train_result
    config, run = context.config, context.run
    endpoint = config.model.endpoint
    began = time.perf_counter()
    with step(context, "train") as record:
        job = CloudJob.load(run.root)
        if job is None or job.job_id is None:  # not started, or started as far as the uploads (reused) or an unanswered creation
            validation = run.cloud_validation
            _warn_pii_upload(context, [run.cloud_train, *([validation] if validation.is_file() else [])])
            job = start_job(endpoint, run.root, run.cloud_train, validation if validation.is_file() else None,
                            epochs=max(1, round(config.train.epochs)), seed=config.train.seed, suffix="tunelab",
                            poll_s=_poll_seconds() if poll_s is None else poll_s)
            created = (f"job {job.job_id} found on {endpoint.base_url}: created by a request whose answer was lost (status {job.status})"
                       if job.found else f"job {job.job_id} created on {endpoint.base_url}")
            context.emit("train", "event", {"message": created, "job_id": job.job_id})
        else:
            context.emit("train", "event", {"message": f"following job {job.job_id} again (status {job.status})", "job_id": job.job_id})
        try:
            job = follow_job(endpoint, run.root, job, poll_s=_poll_seconds() if poll_s is None else poll_s,
                             on_event=lambda event: context.emit("train", "event", event))
        except KeyboardInterrupt:
            # Stopping tunelab does not stop the provider's job: it goes on, and is billed, until it ends or is cancelled.
            context.emit("train", "warn", {"message": f"job {job.job_id} keeps running on {endpoint.base_url} (and is billed): "
                                                      f"`tunelab cancel {run.root}` stops it; `tunelab run --resume {run.root}` follows it again",
                                           "job_id": job.job_id})
            raise
        result = {"backend": "openai", "job_id": job.job_id, "fine_tuned_model": job.fine_tuned_model, "trained_tokens": job.trained_tokens,
                  "status": job.status, "seconds": time.perf_counter() - began, "base_url": endpoint.base_url}
        record.value = result
        record.details = {"result": {**result, "steps": "-", "tokens_per_second": 0.0, "precision": "provider"}}
        record.timing = "train"
    context.train_result = result
    return result


def _warn_pii_upload(context: PipelineContext, files: Sequence[Path]) -> None:
    """One line before the upload: the personal data the files about to be uploaded hold, and the provider's host
    (``data.pii``: off says nothing). Under refuse nothing is uploaded: the check step refused data.train's already,
    but a data.validation file of its own is first scanned here.

    Raises:
        DataError: under ``data.pii: refuse`` when a file holds some.
    """
    from tunelab.data.pii import check_texts_sent, message_fields

    config = context.config
    if config.data.pii == "off":
        return
    for path in files:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        texts = ((f"{path.name}:{n}", message_fields(row.get("messages", []))) for n, row in enumerate(rows, 1))
        for line in check_texts_sent(texts, [config.model.endpoint.base_url], config.data.pii, path.name):
            context.warn(line)


def cancel_cloud_run(run_dir: str | Path) -> CancelResult:
    """Cancel the provider's job of a ``train.backend: openai`` run (``tunelab cancel RUN``, the web UI's Cancel).

    The job's new status goes to ``cloud_job.json`` (``remote.finetune.cancel_job``) and, once cancelled, the run's
    registry row says cancelled and why. A resume follows the cancelled job to its end and stops there: it never
    starts another.

    Raises:
        ConfigError: for a folder that is not there or not started by ``tunelab run``, or a run trained here.
        RemoteError: when the provider refuses the cancel or cannot be reached.
    """
    import dataclasses

    from tunelab.registry.store import Registry, RegistryError, default_registry_path
    from tunelab.remote.finetune import cancel_job

    run = RunFolder(Path(run_dir))
    state, config, _ = saved_run(run)
    if config.train.backend != "openai":
        raise ConfigError(f"{run.root} is not a cloud run (train.backend: {config.train.backend}, not openai): it trains here, "
                          "with no provider's job to cancel", "stop it with Ctrl-C, or Cancel in `tunelab ui`")
    result = cancel_job(config.model.endpoint, run.root)
    registry_id, registry_path = state.data.get("registry_id"), default_registry_path(config)
    if result.status != "cancelled" or result.following_pid is not None or not registry_id or not registry_path.is_file():
        return result  # a process following the job marks the row itself when it sees the cancel
    try:
        Registry(registry_path).update_run(
            str(registry_id), status="cancelled",
            error=f"cancelled: job {result.job_id} was cancelled on {result.base_url}; a cancelled job is not resumed (start a new run to train again)",
        )
    except RegistryError as error:
        return dataclasses.replace(result, warnings=(*result.warnings, f"the registry row was not updated: {error.message}"))
    return result


def resume_refusal(run_dir: str | Path) -> TunelabError | None:
    """The error ``tunelab run --resume RUN`` would stop at without training anything (the UI offers no Resume then);
    None when a resume can go on.

    A cloud run whose provider's job ended without a model (cancelled, failed) is followed to that end again and never
    started anew; one stopped before its job existed is resumed (the job is created then).
    """
    from tunelab.remote.finetune import CloudJob

    job = CloudJob.load(Path(run_dir))
    return None if job is None else job.ended_without_model()


def ended_by_provider(run_dir: str | Path) -> CloudJob | None:
    """The job of a cloud run that ended without a model not by the user's asking (it failed, or the provider cancelled
    it), or None (no such job, or one ``tunelab cancel`` / the UI's Cancel cancelled).

    Such a run is never resumed (``resume_refusal``), so a sweep starts its variant again as a new job: the user did not
    stop it. A job the user cancelled is refused, as ``tunelab run --resume RUN`` refuses it, and never paid for again.
    """
    from tunelab.remote.finetune import CloudJob, CloudJobCancelled, cancelled_by_user

    job = CloudJob.load(Path(run_dir))
    ended = None if job is None else job.ended_without_model()
    if ended is None or (isinstance(ended, CloudJobCancelled) and cancelled_by_user(Path(run_dir), job.job_id)):
        return None
    return job


def cloud_evaluate_step(context: PipelineContext):
    """6. The fine-tuned model on the test records, through the one model interface (same prompts as its training)."""
    from tunelab.evaluation.answering import remote_model

    tuned = remote_model(context.config.model.endpoint, name=context.train_result["fine_tuned_model"], check=False)
    tuned.training_prompt = True  # asked as it was trained (cloud_conversations): no out-of-scope option
    return evaluate_step(context, tuned)


def run_cloud_steps(context: PipelineContext, *, poll_s: float | None = None) -> RunOutcome:
    """The pipeline of a ``train.backend: openai`` run (see the comment at the start of this section), from an opened context."""
    check_step(context)
    split_step(context)
    cloud_estimate_step(context)
    resolved = context.config
    context.config = with_remote_base(resolved)
    try:
        baseline_step(context)
    finally:
        context.config = resolved
    cloud_train_step(context, poll_s=poll_s)
    cloud_evaluate_step(context)
    report_step(context)
    return register_step(context)
