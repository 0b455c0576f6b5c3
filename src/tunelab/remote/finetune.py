"""A provider's fine-tuning API as a training backend (``train.backend: openai``), with the official client.

    chat JSONL (validated) -> price estimate -> upload -> create the job -> follow its events -> the model

The training examples become the provider's chat format, one ``{"messages": [...]}`` per line: sft
as its prompt (with ``data.system_prompt``) and completion, classify as the zero-shot prompt that
lists the categories by name answered with the category (a provider's model answers in text, and
it is evaluated with that same prompt).

Real money is at stake, so a run pays for one job whatever is lost on the way. ``<run>/cloud_job.json``
is written before the first upload and keeps each uploaded file's id, so a resume never uploads a file twice; an
upload is never repeated blindly either (the client's retries would store a second copy after a lost reply): its name
holds the run's key, and after a lost reply the provider's file list is searched for it first. The request that creates the job is never repeated blindly: the client's
automatic retries would send it again after a lost reply (a dropped connection, a timeout, a 5xx)
although the provider may have created (and will bill) the job. Only a 429, refused before anything
is done, is asked again. After any other failure the provider's job list is searched for a job made
from this run's training file (a file id no other run has): found, it is the run's job; not found,
the run stops and ``tunelab run --resume RUN`` searches again before it asks again (until ``LIST_LAG_S`` after the
creation was asked for: a provider's job list may not show a new job at once). The request also
carries an ``Idempotency-Key`` (saved before it is sent, the same on every try) for the providers
that honour one; OpenAI documents none for fine-tuning jobs, hence the search. The job's id is
saved before it is followed, so an interrupted follow (Ctrl-C, a lost connection) resumes the same job.

Stopping tunelab does not stop the provider's job: ``cancel_job`` (``tunelab cancel RUN``, the web UI's Cancel)
asks the provider to cancel it, and a cancelled job is never followed to a model nor started again by a resume.

Any provider that speaks OpenAI's fine-tuning API works through ``model.endpoint.base_url``. Note:
OpenAI's fine-tuning platform closed to new organisations on 2026-05-07 and takes no new training
jobs after 2027-01-06 (OpenAI's deprecations page).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import EndpointConfig
from tunelab.errors import ConfigError, DataError, TunelabError
from tunelab.estimate.prices import PriceTable, load_price_table
from tunelab.paths import (
    RunFolderInUse,
    atomic_write_text,
    lock_run_folder,
    run_folder_holder,
    unlock_run_folder,
)
from tunelab.remote.client import (
    CHARS_PER_TOKEN,
    MAX_RETRY_AFTER_S,
    RemoteError,
    chat_tokens,
    openai_client,
    retry_after_s,
    without_key,
)
from tunelab.runs import RunFolder

MIN_EXAMPLES = 10  # OpenAI refuses a training file with fewer examples
FINISHED = ("succeeded", "failed", "cancelled")
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Before the job exists, cloud_job.json's status says how far the start went.
UPLOADING, UPLOADED, CREATING = "uploading", "uploaded", "creating"  # creating: asked for, whether it was made is unknown
# How long after a creation was asked for a provider may still not list the job it made: a resume within this time
# looks again until it has passed before it asks again (a job list lags behind the creations).
LIST_LAG_S = 60.0

# What cancel_job did: cancelled the job; found it ended already (its status says how); found no job to cancel.
CANCELLED, ALREADY_FINISHED, NO_JOB = "cancelled", "finished", "no-job"

EventFn = Callable[[dict[str, Any]], None]


class CloudJobFailed(TunelabError):
    """The provider's fine-tuning job ended without a model (failed or cancelled)."""


class CloudJobCancelled(CloudJobFailed):
    """The provider's fine-tuning job was cancelled (``tunelab cancel``, the UI's Cancel, the provider's own page): the
    run's row says cancelled, not failed."""


@dataclass(frozen=True)
class CloudEstimate:
    """The price of a job before it starts: training tokens x epochs x the dated price (None: unknown)."""

    examples: int
    tokens_per_epoch: int
    epochs: int
    training_tokens: int
    usd: float | None
    price_source: str | None
    token_count: str  # how the tokens were counted (an approximation of the provider's own count)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def chat_lines(conversations: Sequence[Sequence[dict[str, str]]]) -> list[dict[str, Any]]:
    """Validated chat JSONL rows: each has a user turn and ends with a non-empty assistant answer.

    Raises:
        DataError: naming the first bad example, or when there are fewer than ``MIN_EXAMPLES``.
    """
    rows = []
    for number, messages in enumerate(conversations, 1):
        roles = [m.get("role") for m in messages]
        if "user" not in roles or roles[-1] != "assistant" or not str(messages[-1].get("content", "")).strip():
            raise DataError(f"training example {number} is not a chat that ends with a non-empty assistant answer (roles: {roles})")
        if any(role not in ("system", "user", "assistant") for role in roles):
            raise DataError(f"training example {number} has a role the fine-tuning API refuses: {roles}")
        rows.append({"messages": [{"role": m["role"], "content": m["content"]} for m in messages]})
    if len(rows) < MIN_EXAMPLES:
        raise DataError(f"{len(rows)} training examples: the fine-tuning API needs at least {MIN_EXAMPLES}", "add examples")
    return rows


def write_chat_jsonl(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def estimate_cloud_cost(
    rows: Sequence[dict[str, Any]], epochs: float, model: str, *, prices: PriceTable | None = None,
    count_tokens: Callable[[str], int] | None = None, counted_with: str | None = None,
) -> CloudEstimate:
    """Tokens x epochs x the price table's per-training-token price of ``model`` (None when the table has none)."""
    tokens = sum(chat_tokens(row["messages"], count_tokens) for row in rows)  # the rule a batch of requests is counted by
    whole_epochs = max(1, round(epochs))
    price = (prices or load_price_table()).fine_tuning_price(model)
    usd = tokens * whole_epochs * price.usd_per_million_training_tokens / 1e6 if price else None
    how = counted_with or f"characters / {CHARS_PER_TOKEN}"
    return CloudEstimate(len(rows), tokens, whole_epochs, tokens * whole_epochs, usd, price.published if price else None, how)


@dataclass
class CloudJob:
    """What ``cloud_job.json`` remembers of a job: enough to follow it again after an interruption.

    Written from the first upload on, before the job exists (``job_id`` None, ``status`` one of
    ``uploading``, ``uploaded``, ``creating``), so a resume reuses the files and looks for a job whose
    creation it never heard back from before it asks for one.
    """

    job_id: str | None = None  # None: no job yet, or its creation's reply was lost (status "creating")
    base_url: str = ""
    model: str = ""
    training_file: str | None = None
    validation_file: str | None = None
    seen_events: list[str] = field(default_factory=list)  # ids of the events already reported
    status: str = "created"
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: str | None = None
    training_sha256: str | None = None  # what the uploaded file held: a file changed since is uploaded again
    validation_sha256: str | None = None
    uploaded_at: int | None = None  # the provider's time of the training file's upload: this run's job is not older
    request_key: str | None = None  # the Idempotency-Key of the request that creates the job (saved before it is sent)
    requested_at: float | None = None  # when (this machine's time) the creation was last asked for
    # In each uploaded file's name (saved before the first upload): a file whose upload had no answer is found by it
    upload_key: str | None = None
    found: bool = False  # the job was found in the provider's list after its creation's reply was lost

    @classmethod
    def load(cls, run_dir: Path) -> CloudJob | None:
        path = RunFolder(Path(run_dir)).cloud_job
        return cls(**json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None

    def save(self, run_dir: Path) -> None:
        atomic_write_text(RunFolder(Path(run_dir)).cloud_job, json.dumps(asdict(self), indent=1))

    def ended_without_model(self) -> CloudJobFailed | None:
        """The error following this job ends in once it has ended without a model (cancelled or failed); None while it
        goes on or once it made its model. Such a job is never started again: a resume follows it to this error."""
        if self.job_id is None or self.status not in FINISHED:
            return None
        if self.status == "cancelled":
            return CloudJobCancelled(f"the fine-tuning job {self.job_id} cancelled: {self.error or 'no error message'}",
                                     "it was cancelled at the provider; start a new run to train again (a cancelled job is not resumed)")
        if self.status != "succeeded" or not self.fine_tuned_model:
            return CloudJobFailed(f"the fine-tuning job {self.job_id} {self.status}: {self.error or 'no error message'}",
                                  "fix the data or the settings it names and start a new run (a failed job is not resumed)")
        return None


def start_job(
    endpoint: EndpointConfig, run_dir: Path, training: Path, validation: Path | None, *, epochs: int, seed: int, suffix: str | None = None,
    poll_s: float = 10.0, list_lag_s: float | None = None,
) -> CloudJob:
    """Upload the files and create the job, continuing what an earlier start in ``run_dir`` did; one job, whatever is lost.

    Each file's id is saved as soon as its upload returns and reused by the next start (uploaded again
    only when the file changed or the provider no longer has it). A start whose creation's outcome is
    unknown first looks for the job it may have made (every ``poll_s`` until ``list_lag_s``, default ``LIST_LAG_S``, after
    that creation was asked for, as a job list may lag behind); a run folder that has its job returns it as it is.

    Raises:
        RemoteError: when the provider refuses the files or the job, cannot be reached, or lost the reply to
            the creation and lists no job of this run yet (``tunelab run --resume RUN`` looks again, then asks again).
    """
    import openai

    record = CloudJob.load(run_dir)
    if record is not None and record.job_id is not None:
        return record  # created already: follow it, never a second one
    if record is None or (record.base_url, record.model) != (endpoint.base_url, endpoint.name):
        record = CloudJob(base_url=endpoint.base_url, model=endpoint.name, status=UPLOADING)
    # An earlier start saved this key before it uploaded: a file it sent without hearing back may be stored already.
    uploaded_before = record.upload_key is not None
    if not uploaded_before:
        record.upload_key = uuid.uuid4().hex[:12]
        record.save(run_dir)
    client = openai_client(endpoint)
    if record.status == CREATING and record.training_file:  # a creation was asked for and never answered
        why = "an earlier start asked for it and had no answer"
        found = _look_for_job(client, endpoint, record, run_dir, why)
        # Not listed may only mean not listed yet: asking again before the list can show it would pay for a second job.
        listed_by = (record.requested_at or 0.0) + (LIST_LAG_S if list_lag_s is None else list_lag_s)
        while found is None and time.time() < listed_by:
            time.sleep(min(poll_s, max(0.0, listed_by - time.time())))
            found = _look_for_job(client, endpoint, record, run_dir, why)
        if found is not None:
            return _adopt(record, found, run_dir, found=True)
    try:
        training_id, record.training_sha256, uploaded_at = _upload(
            client, endpoint, training, record.training_file, record.training_sha256, record.upload_key, uploaded_before)
        if training_id != record.training_file:
            record.training_file, record.uploaded_at, record.request_key = training_id, uploaded_at, None  # another request
        record.status = UPLOADED if validation is None else UPLOADING
        record.save(run_dir)
        validation_id, validation_sha256 = None, None
        if validation is not None:
            validation_id, validation_sha256, _ = _upload(
                client, endpoint, validation, record.validation_file, record.validation_sha256, record.upload_key, uploaded_before)
        record.validation_sha256 = validation_sha256
        if validation_id != record.validation_file:
            record.validation_file, record.request_key = validation_id, None
        record.status = UPLOADED
        record.save(run_dir)
    except openai.APIStatusError as error:
        raise RemoteError(f"{endpoint.base_url} refused the fine-tuning job (HTTP {error.status_code}): {without_key(error.message, endpoint)}") from None
    except openai.APIConnectionError as error:
        raise RemoteError(f"cannot reach {endpoint.base_url} to start the fine-tuning job: {error}",
                          "`tunelab run --resume RUN` reuses the files already uploaded") from None
    record.request_key = record.request_key or f"tunelab-{uuid.uuid4()}"
    record.status, record.requested_at = CREATING, time.time()
    record.save(run_dir)  # before the request: a crash from here on is resumed by looking for the job first
    job = _create(client, endpoint, record, run_dir, {
        "model": endpoint.name, "training_file": record.training_file, "validation_file": record.validation_file,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs}}}, "seed": seed, "suffix": suffix,
    })
    return _adopt(record, job, run_dir, found=record.found)


def _upload(
    client: Any, endpoint: EndpointConfig, path: Path, saved_id: str | None, saved_sha256: str | None, key: str | None, uploaded_before: bool,
) -> tuple[str, str, int | None]:
    """(file id, content hash, the provider's upload time): the saved file when the provider still has it as it is now.

    Sent without the client's retries, which would store a second copy after a lost reply (a dropped connection, a
    timeout, a 5xx): the file is named by the run's key and its content, and after a lost reply (or a start that may
    have sent it) the provider's file list is searched for that name before it is sent again.
    """
    import openai

    content = path.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    if saved_id and saved_sha256 == digest:
        try:
            return saved_id, digest, client.files.retrieve(saved_id).created_at
        except openai.NotFoundError:
            pass  # deleted on the provider since: upload it again
    name = f"{path.stem}.{key}.{digest[:12]}{path.suffix}" if key else path.name
    found = _find_file(client, name, len(content)) if uploaded_before else None
    if found is not None:
        return found.id, digest, found.created_at
    uploader = client.with_options(max_retries=0)
    for attempt in itertools.count():
        try:
            uploaded = uploader.files.create(file=(name, content), purpose="fine-tune")
            return uploaded.id, digest, uploaded.created_at
        except openai.RateLimitError as error:  # refused before anything was stored
            wait = _retry_after(error, attempt)
            if attempt >= endpoint.max_retries or wait is None:
                raise
            time.sleep(wait)
        except (openai.APIStatusError, openai.APIConnectionError) as error:
            if isinstance(error, openai.APIStatusError) and error.status_code not in (408, 409) and error.status_code < 500:
                raise  # refused: nothing was stored
            found = _find_file(client, name, len(content))
            if found is not None:
                return found.id, digest, found.created_at
            if attempt >= endpoint.max_retries:
                raise
            time.sleep(min(60.0, 0.5 * 2**attempt))
    raise AssertionError("itertools.count() never ends")


def _find_file(client: Any, name: str, size: int) -> Any | None:
    """The fine-tuning file named ``name`` (no other run's: the name holds the run's key) of ``size`` bytes, or None."""
    for stored in client.files.list(purpose="fine-tune"):  # the page iterator fetches the next pages
        if stored.filename == name and stored.bytes == size:
            return stored
    return None


def _create(client: Any, endpoint: EndpointConfig, record: CloudJob, run_dir: Path, params: dict[str, Any]) -> Any:
    """The job, asked for without the client's retries: again only after a 429; after a lost reply, found in the job list."""
    import openai

    creator = client.with_options(max_retries=0)
    for attempt in itertools.count():
        try:
            return creator.fine_tuning.jobs.create(**params, extra_headers={IDEMPOTENCY_HEADER: record.request_key})
        except openai.RateLimitError as error:  # refused before anything was done: asking again cannot make a second job
            wait = _retry_after(error, attempt)
            if attempt == endpoint.max_retries or wait is None:
                record.status = UPLOADED
                record.save(run_dir)
                raise RemoteError(f"{endpoint.base_url} refused the fine-tuning job (HTTP 429): {without_key(error.message, endpoint)}",
                                  "`tunelab run --resume RUN` asks again later, with the files already uploaded") from None
            time.sleep(wait)
        except openai.APIStatusError as error:
            if error.status_code not in (408, 409) and error.status_code < 500:  # refused: no job was made
                record.status = UPLOADED
                record.save(run_dir)
                raise RemoteError(f"{endpoint.base_url} refused the fine-tuning job (HTTP {error.status_code}): {without_key(error.message, endpoint)}") from None
            return _look_after_lost_reply(client, endpoint, record, run_dir, f"HTTP {error.status_code}: {without_key(error.message, endpoint)}")
        except openai.APIConnectionError as error:
            return _look_after_lost_reply(client, endpoint, record, run_dir, str(error))
    raise AssertionError("itertools.count() never ends")


def _look_for_job(client: Any, endpoint: EndpointConfig, record: CloudJob, run_dir: Path, why: str) -> Any | None:
    """The job a creation without an answer made, from the provider's job list (None: not listed).

    Raises:
        RemoteError: when the list cannot be read: the run stops rather than risk paying for a second job.
    """
    import openai

    try:
        return _find_job(client, record)
    except (openai.APIStatusError, openai.APIConnectionError) as error:
        reason = f"HTTP {error.status_code}" if isinstance(error, openai.APIStatusError) else str(error)
        raise RemoteError(
            f"the fine-tuning job may exist on {endpoint.base_url} ({why}), and its job list cannot be read ({reason})",
            f"`tunelab run --resume RUN` looks for it again; if the provider shows no job made from training file {record.training_file}, "
            f"remove {RunFolder(Path(run_dir)).cloud_job} and resume (the files are uploaded again)",
        ) from None


def _look_after_lost_reply(client: Any, endpoint: EndpointConfig, record: CloudJob, run_dir: Path, what: str) -> Any:
    """The job a creation whose reply was lost made.

    Raises:
        RemoteError: when it is not listed (yet), or the list cannot be read: the run stops rather than ask twice.
    """
    why = f"the request that creates it had no answer: {what}"
    found = _look_for_job(client, endpoint, record, run_dir, why)
    if found is None:
        raise RemoteError(f"no answer from {endpoint.base_url} to the request that creates the fine-tuning job ({what}), and it lists no job "
                          f"made from training file {record.training_file} (yet)",
                          "`tunelab run --resume RUN` looks for that job again before it asks for one: no second job is paid for")
    record.found = True
    return found


def _find_job(client: Any, record: CloudJob) -> Any | None:
    """The oldest job made from this run's training file (an id no other run has), or None; listed newest first, older ones end the search."""
    matches = []
    previous = None
    # How OpenAI lists jobs. Only once the list has shown it (a newer job before an older one, never the reverse) may an
    # old job end the search: a provider listing oldest first starts with an old job and is searched to the end.
    newer_before_older, older_before_newer = False, False
    for job in client.fine_tuning.jobs.list(limit=100):  # the page iterator fetches the next pages
        if previous is not None:
            newer_before_older = newer_before_older or job.created_at < previous
            older_before_newer = older_before_newer or job.created_at > previous
        previous = job.created_at
        if job.training_file == record.training_file:
            matches.append(job)
        elif (newer_before_older and not older_before_newer and record.uploaded_at is not None
              and job.created_at < record.uploaded_at):
            break
    return min(matches, key=lambda job: job.created_at) if matches else None


def _retry_after(error: Any, attempt: int) -> float | None:
    """Seconds to wait after a 429: the provider's Retry-After, else exponential backoff (at most a minute); None when the
    provider asks for longer than ``MAX_RETRY_AFTER_S`` (a daily quota), which is not waited for (as for chat requests)."""
    asked = retry_after_s(error.response.headers) if error.response is not None else None
    if asked is None:
        return min(60.0, 0.5 * 2**attempt)
    return asked if asked <= MAX_RETRY_AFTER_S else None


def _adopt(record: CloudJob, job: Any, run_dir: Path, *, found: bool) -> CloudJob:
    record.job_id, record.status, record.found = job.id, job.status, found
    record.training_file, record.validation_file = job.training_file, job.validation_file
    record.save(run_dir)
    return record


def follow_job(
    endpoint: EndpointConfig, run_dir: Path, job: CloudJob, *, poll_s: float = 10.0, on_event: EventFn | None = None,
    timeout_s: float | None = None,
) -> CloudJob:
    """Follow the job until it finishes, passing each new event to ``on_event`` (in order, each once).

    The events seen and the status are saved as they come, so following again (after Ctrl-C)
    continues where it stopped. Dropped connections and 429/5xx are retried by the client; a follow
    that cannot reach the provider at all raises and can be resumed.

    Raises:
        CloudJobFailed: when the job fails or is cancelled (the provider's error message included).
        RemoteError: when the provider cannot be reached, or after ``timeout_s``.
    """
    import openai

    if job.job_id is None:
        raise ConfigError("no fine-tuning job to follow yet: start it with start_job")
    client = openai_client(endpoint)
    started = time.monotonic()
    seen = set(job.seen_events)
    while True:
        try:
            state = client.fine_tuning.jobs.retrieve(job.job_id)
            # Then one page of events, newest first (the API pages toward older ones): those not seen yet are new.
            # After the state, so the events that led to a final state are reported before the loop ends.
            page = client.fine_tuning.jobs.list_events(job.job_id, limit=100)
        except openai.APIStatusError as error:
            raise RemoteError(f"{endpoint.base_url}: following job {job.job_id} failed (HTTP {error.status_code}): {without_key(error.message, endpoint)}",
                              "follow it again with `tunelab run --resume RUN`") from None
        except openai.APIConnectionError as error:
            raise RemoteError(f"lost {endpoint.base_url} while following job {job.job_id}: {error}",
                              "follow it again with `tunelab run --resume RUN`") from None
        for event in sorted((e for e in page.data if e.id not in seen), key=lambda e: e.created_at):
            seen.add(event.id)
            job.seen_events.append(event.id)
            job.save(run_dir)  # before reporting it: an interrupted follow never reports an event twice
            if on_event is not None:
                on_event({"id": event.id, "created_at": event.created_at, "level": event.level, "message": event.message,
                          "data": event.data if isinstance(event.data, dict) else None, "status": state.status})
        job.status, job.fine_tuned_model, job.trained_tokens = state.status, state.fine_tuned_model, state.trained_tokens
        job.error = state.error.message if state.error and state.error.message else None
        job.save(run_dir)
        if state.status in FINISHED:
            break
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise RemoteError(f"job {job.job_id} still {state.status} after {timeout_s:.0f} s", "follow it again with `tunelab run --resume RUN`")
        time.sleep(poll_s)
    ended = job.ended_without_model()
    if ended is not None:
        raise ended
    return job


@dataclass(frozen=True)
class CancelResult:
    """What ``cancel_job`` did to a run's job at the provider."""

    outcome: str  # CANCELLED, ALREADY_FINISHED or NO_JOB
    job_id: str | None
    status: str | None  # the job's status now (before a job exists: how far its start went)
    base_url: str
    # A process working in the run folder (following the job): it records the new status itself, at its next look.
    following_pid: int | None = None
    warnings: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """One line a person reads (the CLI and the web UI show it)."""
        if self.outcome == NO_JOB and self.status == CREATING:  # asked for without an answer, and not in the job list
            return (f"the job this run asked {self.base_url} for is not in its job list (yet): nothing to cancel now; "
                    "`tunelab cancel RUN` looks again")
        if self.outcome == NO_JOB:
            done = "only its files were uploaded" if self.status in (UPLOADING, UPLOADED) else "nothing was uploaded"
            return f"no fine-tuning job was created for this run on {self.base_url} ({done}): nothing to cancel"
        if self.outcome == ALREADY_FINISHED:
            return f"job {self.job_id} on {self.base_url} had already ended ({self.status}): nothing to cancel"
        now = "" if self.status == CANCELLED else f" (its status: {self.status})"  # a provider may take a moment to stop it
        line = f"job {self.job_id} cancelled on {self.base_url}{now}: it trains and bills no more"
        if self.following_pid is not None:
            line += f"; process {self.following_pid}, which follows it, records that at its next look"
        return line

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "warnings": list(self.warnings), "summary": self.summary}


def cancel_job(endpoint: EndpointConfig, run_dir: Path) -> CancelResult:
    """Cancel the run's job at the provider (``client.fine_tuning.jobs.cancel``) and record its new status in ``cloud_job.json``.

    A job recorded as ended is left as it is (no request); one whose creation had no answer is looked for in the
    provider's list first (a job made is billed whether or not the run heard of it). When another process works in
    the run folder (a ``tunelab run`` following the job), only the provider is asked: that process records the new
    status at its next look, and two writers would lose each other's events.

    Raises:
        RemoteError: when the provider refuses the cancel, cannot be reached, or its job list cannot be read.
    """
    import openai

    run_dir = Path(run_dir)
    record = CloudJob.load(run_dir)
    if record is None:
        return CancelResult(NO_JOB, None, None, endpoint.base_url)
    base_url = record.base_url or endpoint.base_url
    if record.job_id is None and record.status != CREATING:
        return CancelResult(NO_JOB, None, record.status, base_url)
    if record.status in FINISHED:
        return CancelResult(ALREADY_FINISHED, record.job_id, record.status, base_url)
    try:
        lock_run_folder(run_dir)
        locked = True
    except RunFolderInUse:
        locked = False
    try:
        client = openai_client(endpoint)
        if record.job_id is None:  # asked for, never answered: cancel the job it may have made
            found = _look_for_job(client, endpoint, record, run_dir, "an earlier start asked for it and had no answer")
            if found is None:
                return CancelResult(NO_JOB, None, record.status, base_url, None if locked else run_folder_holder(run_dir))
            record.job_id, record.found = found.id, True
        what = f"job {record.job_id}"
        try:
            ended_before = False
            try:
                state = client.fine_tuning.jobs.cancel(record.job_id)
            except openai.APIStatusError as refused:
                # A job that has ended cannot be cancelled: its state tells that refusal from any other.
                if refused.status_code >= 500 or refused.status_code in (408, 409, 429):
                    raise  # the client's retries are spent
                state = client.fine_tuning.jobs.retrieve(record.job_id)
                if state.status not in FINISHED:
                    raise
                ended_before = True
            outcome = ALREADY_FINISHED if ended_before or state.status in ("succeeded", "failed") else CANCELLED
            if outcome == CANCELLED:  # what tells the user's cancel from the provider's (cancelled_by_user)
                atomic_write_text(RunFolder(run_dir).cloud_cancel, json.dumps({"job_id": record.job_id, "asked_at": time.time()}))
        except openai.APIStatusError as error:
            raise RemoteError(f"{base_url} refused to cancel {what} (HTTP {error.status_code}): {without_key(error.message, endpoint)}",
                              "run `tunelab cancel RUN` again, or cancel it in the provider's dashboard") from None
        except openai.APIConnectionError as error:
            raise RemoteError(f"cannot reach {base_url} to cancel {what}: {error}",
                              "run `tunelab cancel RUN` again, or cancel it in the provider's dashboard") from None
        if not locked:
            return CancelResult(outcome, record.job_id, state.status, base_url, run_folder_holder(run_dir))
        record.status, record.fine_tuned_model, record.trained_tokens = state.status, state.fine_tuned_model, state.trained_tokens
        record.error = state.error.message if state.error and state.error.message else record.error
        record.save(run_dir)
        return CancelResult(outcome, record.job_id, state.status, base_url)
    finally:
        if locked:
            unlock_run_folder(run_dir)


def cancelled_by_user(run_dir: Path, job_id: str | None) -> bool:
    """Whether ``cancel_job`` (``tunelab cancel RUN``, the UI's Cancel) had the provider cancel job ``job_id`` of the run;
    False for a job the provider cancelled itself, or someone in its dashboard."""
    path = RunFolder(Path(run_dir)).cloud_cancel
    try:
        asked = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return job_id is not None and isinstance(asked, dict) and asked.get("job_id") == job_id


def fine_tuned_endpoint(endpoint: EndpointConfig, job: CloudJob) -> EndpointConfig:
    """The endpoint of the model a finished job made (same provider, same key)."""
    if not job.fine_tuned_model:
        raise ConfigError(f"job {job.job_id} has no fine-tuned model yet (status {job.status})")
    return endpoint.model_copy(update={"name": job.fine_tuned_model})
