"""A provider's fine-tuning API as a training backend (``train.backend: openai``), with the official client.

    chat JSONL (validated) -> price estimate -> upload -> create the job -> follow its events -> the model

The training examples become the provider's chat format, one ``{"messages": [...]}`` per line: sft
as its prompt (with ``data.system_prompt``) and completion, classify as the zero-shot prompt that
lists the categories by name answered with the category (a provider's model answers in text, and
it is evaluated with that same prompt). The job's id is written to ``<run>/cloud_job.json`` before it
is followed, so an interrupted follow (Ctrl-C, a lost connection) resumes the same job instead of
paying for a second one.

Any provider that speaks OpenAI's fine-tuning API works through ``model.endpoint.base_url``. Note:
OpenAI's fine-tuning platform closed to new organisations on 2026-05-07 and takes no new training
jobs after 2027-01-06 (OpenAI's deprecations page).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import EndpointConfig
from tunelab.errors import ConfigError, DataError, TunelabError
from tunelab.estimate.prices import PriceTable, load_price_table
from tunelab.paths import atomic_write_text
from tunelab.remote.client import RemoteError, openai_client, without_key
from tunelab.runs import RunFolder

MIN_EXAMPLES = 10  # OpenAI refuses a training file with fewer examples
FINISHED = ("succeeded", "failed", "cancelled")
CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text, when no tokenizer count is given

EventFn = Callable[[dict[str, Any]], None]


class CloudJobFailed(TunelabError):
    """The provider's fine-tuning job ended without a model (failed or cancelled)."""


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
    count = count_tokens or (lambda text: math.ceil(len(text) / CHARS_PER_TOKEN))
    tokens = sum(count(m["content"]) + 4 for row in rows for m in row["messages"])  # ~4 tokens of chat markup per message
    whole_epochs = max(1, round(epochs))
    price = (prices or load_price_table()).fine_tuning_price(model)
    usd = tokens * whole_epochs * price.usd_per_million_training_tokens / 1e6 if price else None
    how = counted_with or f"characters / {CHARS_PER_TOKEN}"
    return CloudEstimate(len(rows), tokens, whole_epochs, tokens * whole_epochs, usd, price.published if price else None, how)


@dataclass
class CloudJob:
    """What ``cloud_job.json`` remembers of a job: enough to follow it again after an interruption."""

    job_id: str
    base_url: str
    model: str
    training_file: str
    validation_file: str | None = None
    seen_events: list[str] = field(default_factory=list)  # ids of the events already reported
    status: str = "created"
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: str | None = None

    @classmethod
    def load(cls, run_dir: Path) -> CloudJob | None:
        path = RunFolder(Path(run_dir)).cloud_job
        return cls(**json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None

    def save(self, run_dir: Path) -> None:
        atomic_write_text(RunFolder(Path(run_dir)).cloud_job, json.dumps(asdict(self), indent=1))


def start_job(
    endpoint: EndpointConfig, run_dir: Path, training: Path, validation: Path | None, *, epochs: int, seed: int, suffix: str | None = None,
) -> CloudJob:
    """Upload the files and create the job; its id is saved in the run folder before anything else happens.

    Raises:
        RemoteError: when the provider refuses the files or the job.
    """
    import openai

    client = openai_client(endpoint)
    try:
        uploaded = client.files.create(file=(training.name, training.read_bytes()), purpose="fine-tune")
        uploaded_validation = client.files.create(file=(validation.name, validation.read_bytes()), purpose="fine-tune") if validation else None
        job = client.fine_tuning.jobs.create(
            model=endpoint.name, training_file=uploaded.id, validation_file=uploaded_validation.id if uploaded_validation else None,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs}}}, seed=seed, suffix=suffix,
        )
    except openai.APIStatusError as error:
        raise RemoteError(f"{endpoint.base_url} refused the fine-tuning job (HTTP {error.status_code}): {without_key(error.message, endpoint)}") from None
    except openai.APIConnectionError as error:
        raise RemoteError(f"cannot reach {endpoint.base_url} to start the fine-tuning job: {error}") from None
    record = CloudJob(job.id, endpoint.base_url, endpoint.name, uploaded.id, uploaded_validation.id if uploaded_validation else None,
                      status=job.status)
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
    if job.status != "succeeded" or not job.fine_tuned_model:
        raise CloudJobFailed(f"the fine-tuning job {job.job_id} {job.status}: {job.error or 'no error message'}",
                             "fix the data or the settings it names and start a new run (a failed job is not resumed)")
    return job


def fine_tuned_endpoint(endpoint: EndpointConfig, job: CloudJob) -> EndpointConfig:
    """The endpoint of the model a finished job made (same provider, same key)."""
    if not job.fine_tuned_model:
        raise ConfigError(f"job {job.job_id} has no fine-tuned model yet (status {job.status})")
    return endpoint.model_copy(update={"name": job.fine_tuned_model})
