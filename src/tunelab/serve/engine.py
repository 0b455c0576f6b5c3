"""The batching engine: requests from many HTTP handlers, computed together on one worker thread.

Handlers submit jobs (prompt token ids + sampling settings) and await their results on the event
loop. One worker thread owns the model: it waits for a job, keeps gathering for a short window (or
until the batch is full), takes the oldest job's group — jobs that can share one ``generate`` call:
same model or adapter, same kind, same sampling settings — and runs them as one left-padded batch
with the KV cache. Throughput therefore grows with concurrency while a lone request waits at most
one window. A batch holds only one adapter's requests, so no request ever sees another's weights.

Per-row bookkeeping (incremental detokenisation, stop sequences, each row's own ``max_tokens``,
EOS, cancelled streams) runs as a ``StoppingCriteria``: transformers calls it after every decoding
step with the new tokens, and the rows it reports finished are padded from then on.

Token log-probabilities (``SamplingParams.logprobs``) are the served model's own next-token distribution: the
log-softmax of the logits each decoding step already computed, read from the forward pass before anything changes
them: temperature and top-p, and the processors the model's own ``generation_config`` sets, such as a repetition
penalty, which the answer is still generated with (vLLM's default too). Only the rows that ask for them are computed: a batch without such a row does no
extra work. A prompt's own (``echo``) come from the prefill's logits (kept at every position only for a batch with such
a row), or, for a row that generates nothing (``max_tokens`` 0, what lm-evaluation-harness sends), from its one
forward pass over the prompt.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tunelab.inference import ClassifyAnswer as ClassifyResult  # noqa: F401 - what a classify job answers (routes read it)
from tunelab.models import generate
from tunelab.runtime import ThreadFollower
from tunelab.serve.adapters import ModelRegistry
from tunelab.serve.errors import APIError, shutting_down

logger = logging.getLogger("tunelab.serve")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None  # a sampled answer with a seed is computed alone, the generator seeded with it (OpenAI's seed)
    logprobs: int | None = None  # None: no log-probabilities; k: each answer token's, with the k most likely alternatives
    echo: bool = False  # the prompt's tokens scored too (their log-probabilities, with ``logprobs`` alternatives)
    # The alternatives are keyed by their text (the legacy completions shape): the ``logprobs`` most likely of distinct
    # texts, a text's most likely token standing for it, so two tokens of one text do not leave the answer short of k.
    distinct_texts: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def seeded(self) -> bool:
        return self.seed is not None and not self.greedy


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability under the model (None: a prompt's first token, which nothing predicts), its ``top``
    alternatives as (token id, log-probability), most likely first, and ``offset``: where its text starts (characters
    into the answer; into the prompt's decoded text for a prompt token)."""

    token: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] | None
    offset: int
    end: bool = False  # the end-of-answer token (EOS): part of the answer's tokens (usage counts it), not of its text


@dataclass
class GenerationResult:
    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None  # the answer's tokens (asked for with ``SamplingParams.logprobs``)
    prompt_logprobs: list[TokenLogprob] | None = None  # the prompt's tokens (``SamplingParams.echo``)


@dataclass(frozen=True)
class Delta:
    """A streamed piece of an answer: its text and, when asked for, the log-probabilities of the tokens it starts."""

    text: str
    logprobs: list[TokenLogprob] | None = None
    prompt: bool = False  # the prompt's own tokens (``echo``), before the answer's first piece: ``text`` is empty


@dataclass
class Job:
    """One prompt. Events go to ``events`` on the handler's loop: ("delta", Delta), ("done", result), ("error", exc)."""

    model: str
    kind: str  # "generate" or "classify"
    prompt_ids: list[int]
    params: SamplingParams | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def group(self) -> tuple:
        if self.kind == "classify" or self.params is None:
            return (self.model, self.kind)
        if self.params.seeded:
            # Alone in its batch: beside other rows the generator's draws would depend on what else was being computed.
            return (self.model, self.kind, "seeded", id(self))
        sampling = (0.0, 1.0) if self.params.greedy else (self.params.temperature, self.params.top_p)
        return (self.model, self.kind, *sampling)

    def emit(self, kind: str, payload: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the handler's loop is gone (client left, server stopping): nobody listens
            self.cancelled.set()


class _Row:
    """Decoding state of one row of a generation batch."""

    def __init__(self, job: Job, tokenizer: Any, eos_ids: set[int]) -> None:
        self.job = job
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.params: SamplingParams = job.params  # type: ignore[assignment]
        self.tokens: list[int] = []
        self.count = 0
        self.text = ""  # the answer so far, after cutting at a stop sequence
        self.sent = 0  # characters of text already streamed
        self.finish_reason: str | None = None
        self.decoded = 0  # characters of the whole decoded answer (before a stop cut): where the next token starts
        self.logprobs: list[TokenLogprob] | None = [] if self.params.logprobs is not None else None
        self.logprobs_sent = 0
        self.prompt_logprobs: list[TokenLogprob] | None = None
        self.step: tuple[float, tuple[tuple[int, float], ...]] | None = None  # this step's (chosen logprob, top), set before add

    def _held_back(self, text: str) -> int:
        """Characters at the end of ``text`` that could still become a stop sequence (not streamed yet)."""
        hold = 0
        for stop in self.params.stop:
            # Only the tail's places that hold the stop's first character are tried, longest tail first: with up to
            # MAX_STOP_SEQUENCES strings of MAX_STOP_LENGTH characters, trying every length after every token was the
            # batch's cost, not the model's.
            start = text.find(stop[0], max(len(text) - len(stop) + 1, 0))
            while start >= 0 and len(text) - start > hold:
                if stop.startswith(text[start:]):
                    hold = len(text) - start
                    break
                start = text.find(stop[0], start + 1)
        return hold

    def add(self, token: int) -> None:
        if self.job.cancelled.is_set():
            self.finish_reason = "cancelled"
            return
        self.count += 1
        if token in self.eos_ids:
            if self.logprobs is not None and self.step is not None:
                # Kept, as vLLM keeps it: a prompt scored with max_tokens 1 (lm-evaluation-harness reads all tokens but
                # the last) then has its one answer token even when it is EOS, where without it the prompt's last was cut.
                self.logprobs.append(TokenLogprob(token, self.step[0], self.step[1], self.decoded, end=True))
            self.finish_reason = "stop"
            self._flush(len(self.text))
            return
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if self.logprobs is not None and self.step is not None:
            self.logprobs.append(TokenLogprob(token, self.step[0], self.step[1], self.decoded))
        self.decoded = len(text)
        cut = min((i for i in (text.find(s) for s in self.params.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = text[:cut]
            if self.logprobs is not None:
                # The tokens the cut answer holds: those that start before the stop sequence (the last may hold its start).
                self.logprobs = [item for item in self.logprobs if item.offset < cut]
            self.finish_reason = "stop"
            self._flush(len(self.text))
            return
        self.text = text
        if self.count >= self.params.max_tokens:
            self.finish_reason = "length"
            self._flush(len(text))
            return
        # A trailing U+FFFD is half of a multi-byte character: wait for the next token to complete it.
        safe = len(text.rstrip("\ufffd")) - self._held_back(text)
        self._flush(safe)

    def _flush(self, upto: int, final: bool = False) -> None:
        pending = None
        if self.logprobs is not None:
            # The tokens this piece starts (the last piece: all those left, a token of no text of its own included).
            end = len(self.logprobs) if final else sum(1 for item in self.logprobs if item.offset < upto)
            pending = self.logprobs[self.logprobs_sent : end] if end > self.logprobs_sent else None
        if upto > self.sent or pending:
            self.job.emit("delta", Delta(self.text[self.sent : upto], pending))
            self.sent = max(self.sent, upto)
            if pending:
                self.logprobs_sent += len(pending)

    def result(self) -> GenerationResult:
        return GenerationResult(
            self.text, self.finish_reason or "length", len(self.job.prompt_ids), self.count, self.logprobs, self.prompt_logprobs,
        )


def token_text(tokenizer: Any, token: int) -> str:
    """One token's text: what the tokenizer decodes of it alone, special tokens included (the ``token`` of OpenAI's
    log-probability shapes)."""
    return tokenizer.decode([token], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _top(logprobs: torch.Tensor, k: int, text: Callable[[int], str] | None = None) -> list[tuple[tuple[int, float], ...]]:
    """Each row's ``k`` most likely tokens as (id, log-probability), most likely first; with ``text`` (a token's text),
    the ``k`` most likely of distinct texts (fewer only when the vocabulary has fewer): more candidates are looked at
    until each row has them."""
    if k <= 0:
        return [() for _ in range(logprobs.shape[0])]
    vocab = logprobs.shape[-1]
    fetch = min(k if text is None else 2 * k, vocab)
    while True:
        values, ids = torch.topk(logprobs, fetch, dim=-1)
        rows = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
        if text is None:
            return [tuple(row) for row in rows]
        kept = []
        for row in rows:
            seen: dict[str, tuple[int, float]] = {}
            for token, value in row:
                if len(seen) == k:
                    break
                seen.setdefault(text(token), (token, value))
            kept.append(tuple(seen.values()))
        if fetch == vocab or all(len(row) == k for row in kept):
            return kept
        fetch = min(2 * fetch, vocab)


class _TokenTexts:
    """:func:`token_text`, remembered: a step's candidates recur from step to step."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.texts: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        if token not in self.texts:
            self.texts[token] = token_text(self.tokenizer, token)
        return self.texts[token]


class _LogprobReader:
    """A forward hook on the causal LM that reads, for the rows that ask for them, the log-softmax of each step's
    logits as the model computed them (its next-token position); the stopper then gives each row its chosen token's
    log-probability. Read from the forward pass, not as a logits processor: transformers runs the processors a
    model's own ``generation_config`` sets (a repetition penalty) before any it is passed, so a processor saw the
    scores already changed. Rows that do not ask cost nothing."""

    def __init__(self, rows: list[_Row]) -> None:
        self.rows = rows
        self.wanted = [i for i, row in enumerate(rows) if row.logprobs is not None]
        self.k = max((rows[i].params.logprobs or 0 for i in self.wanted), default=0)
        self.by_text = [j for j, i in enumerate(self.wanted) if rows[i].params.distinct_texts]
        self.text = _TokenTexts(rows[0].tokenizer)
        self.logprobs: torch.Tensor | None = None
        self.top: list[tuple[tuple[int, float], ...]] = []

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        logits = output.logits[:, -1]  # the prefill's last position (it may keep them all) or a decoding step's one
        index = torch.tensor(self.wanted, device=logits.device)
        self.logprobs = torch.log_softmax(logits.index_select(0, index).float(), dim=-1)
        self.top = _top(self.logprobs, self.k)
        for j in self.by_text:
            self.top[j] = _top(self.logprobs[j : j + 1], self.k, self.text)[0]

    def chosen(self, tokens: list[int]) -> None:
        """Hand each asking row its step's (chosen token's log-probability, its own k alternatives)."""
        if self.logprobs is None:
            return
        index = torch.tensor([tokens[i] for i in self.wanted], device=self.logprobs.device)
        values = self.logprobs.gather(1, index[:, None])[:, 0].tolist()
        for j, i in enumerate(self.wanted):
            self.rows[i].step = (values[j], self.top[j][: self.rows[i].params.logprobs or 0])
        self.logprobs = None


class _RowStopper:
    """A transformers StoppingCriteria that feeds each new token to its row and reports finished rows."""

    def __init__(self, rows: list[_Row], reader: _LogprobReader | None = None) -> None:
        self.rows = rows
        self.reader = reader

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        new_tokens = input_ids[:, -1].tolist()
        if self.reader is not None:
            self.reader.chosen(new_tokens)
        for row, token in zip(self.rows, new_tokens, strict=True):
            if row.finish_reason is None:
                row.add(token)
        return torch.tensor([row.finish_reason is not None for row in self.rows], dtype=torch.bool, device=input_ids.device)


class Engine:
    """Gathers jobs into batches and computes them on one worker thread (see the module docstring)."""

    def __init__(self, registry: ModelRegistry, *, max_batch_size: int = 8, batch_window_ms: float = 10.0, max_waiting: int | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.max_waiting = max_waiting  # None: no limit
        self.registry = registry
        self.tokenizer = registry.tokenizer
        self.max_batch_size = max_batch_size
        self.batch_window = max(batch_window_ms, 0.0) / 1000.0
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._pending: list[Job] = []
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._accepting = True
        self.batches = 0  # batches computed so far
        self.largest_batch = 0
        # torch's threads follow the cores other processes leave free (tunelab.runtime): checked on the worker
        # thread (OpenMP's thread count belongs to the thread that sets it) before a batch, at most every minute.
        self._threads = ThreadFollower(device=str(getattr(registry.model, "device", "cpu")).split(":")[0])
        self.stops = generate.stop_token_ids(registry.model, self.tokenizer)
        self.eos_ids = set(self.stops)
        self.pad_id = generate.pad_token_id(self.tokenizer, self.stops)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._accepting = True
                self._thread = threading.Thread(target=self._work, name="tunelab-serve-engine", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Refuse new jobs, finish every job already submitted, then end the worker."""
        with self._lock:
            self._accepting = False
            thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)

    # -- submission (event loop) -----------------------------------------------------------------
    @property
    def waiting(self) -> int:
        """Jobs submitted, not yet taken into a batch, whose client still waits: one that left (its timeout, and the
        ``openai`` client asks again) is dropped unseen by the worker, so it takes no room. The worker's own list is
        only read here (a copy), never changed."""
        with self._queue.mutex:
            queued = list(self._queue.queue)
        return sum(1 for job in [*queued, *self._pending] if job is not None and not job.cancelled.is_set())

    def submit(self, model: str, kind: str, prompt_ids: list[int], params: SamplingParams | None = None) -> Job:
        """Queue one job; read its events from ``job.events``.

        Raises:
            APIError: 503 once the server is shutting down; 429 when ``max_waiting`` jobs already wait.
        """
        (job,) = self.submit_all(model, kind, [(prompt_ids, params)])
        return job

    def submit_all(self, model: str, kind: str, prompts: list[tuple[list[int], SamplingParams | None]]) -> list[Job]:
        """Queue one request's jobs, all or none (a refused request leaves no job computed for nobody).

        Raises:
            APIError: 503 once the server is shutting down; 429 when they would take the waiting jobs past
                ``max_waiting`` (a request never fits only when others wait: alone, any size is taken).
        """
        if not self._accepting:
            raise shutting_down()
        waiting = self.waiting
        if self.max_waiting is not None and waiting and waiting + len(prompts) > self.max_waiting:
            raise APIError(
                429, f"The server is overloaded: {waiting} requests are waiting to be computed. Please retry shortly.",
                type="server_error", code="server_overloaded", headers={"retry-after": "1"},
            )
        self.start()
        loop = asyncio.get_running_loop()
        jobs = [Job(model, kind, list(ids), params, loop, asyncio.Queue()) for ids, params in prompts]
        for job in jobs:
            self._queue.put(job)
        return jobs

    async def stream(self, job: Job) -> AsyncIterator[tuple[str, Any]]:
        """The job's events until its end ("done" or "error"); cancels the job if the caller stops early."""
        try:
            while True:
                kind, payload = await job.events.get()
                yield kind, payload
                if kind in ("done", "error"):
                    return
        finally:
            job.cancelled.set()

    async def result(self, job: Job) -> Any:
        """The job's final result.

        Raises:
            APIError (or the worker's exception): when the job failed.
        """
        async for kind, payload in self.stream(job):
            if kind == "error":
                raise payload
            if kind == "done":
                return payload
        raise APIError(500, "the job ended without a result", type="server_error")

    # -- worker thread ---------------------------------------------------------------------------
    def _next_batch(self) -> list[Job] | None:
        """Wait for work, gather for one window, and take the oldest job's group (None: stop)."""
        stopping = False
        if not self._pending:
            job = self._queue.get()
            if job is None:
                return None
            self._pending.append(job)
        deadline = time.monotonic() + self.batch_window
        group = self._pending[0].group
        while sum(j.group == group for j in self._pending) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                stopping = True  # finish what is pending first, then stop
                break
            self._pending.append(job)
        batch = [j for j in self._pending if j.group == group][: self.max_batch_size]
        taken = {id(j) for j in batch}
        self._pending = [j for j in self._pending if id(j) not in taken]
        if stopping:
            self._queue.put(None)
        return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                for job in self._pending:
                    job.emit("error", shutting_down())
                return
            batch = [job for job in batch if not job.cancelled.is_set()]
            if not batch:
                continue
            self._threads.check()
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            try:
                with torch.inference_mode(), self.registry.activate(batch[0].model) as model:
                    if batch[0].kind == "classify":
                        self._classify(model, batch)
                    else:
                        self._generate(model, batch)
            except Exception as error:  # noqa: BLE001 - the worker must survive any one batch's failure
                logger.exception("batch of %d failed", len(batch))
                failure = error if isinstance(error, APIError) else APIError(
                    500, f"The server failed while computing the answer ({type(error).__name__}; the server log has the details).", type="server_error"
                )
                for job in batch:
                    job.emit("error", failure)

    def _score_prompt(self, row: _Row, logits: torch.Tensor) -> None:
        """The prompt's tokens' log-probabilities (``echo``) from ``logits``, the model's at the prompt's positions but
        the last [prompt - 1, vocab]; the first token's None (nothing predicts it). Sent at once: a stream's first piece."""
        ids = row.job.prompt_ids
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        chosen = logprobs.gather(1, torch.tensor(ids[1:], device=logprobs.device)[:, None])[:, 0].tolist()
        top = _top(logprobs, row.params.logprobs or 0, _TokenTexts(self.tokenizer) if row.params.distinct_texts else None)
        row.prompt_logprobs = [TokenLogprob(ids[0], None, None, 0)] + [
            TokenLogprob(token, value, alternatives, offset)
            for token, value, alternatives, offset in zip(ids[1:], chosen, top, self._offsets(ids)[1:], strict=True)
        ]
        row.job.emit("delta", Delta("", row.prompt_logprobs, prompt=True))

    def _prefill_reader(self, rows: list[_Row], width: int) -> Any:
        """A forward hook that scores the ``echo`` rows' prompts from the first forward pass of ``generate`` (the
        prefill, asked to keep every position's logits): their rows of the left-padded batch, right-aligned in ``width``.
        Only that pass is read (the decoding steps are :class:`_LogprobReader`'s); the caller removes the hook."""
        echoing = [i for i, row in enumerate(rows) if row.params.echo]
        passes = []

        def hook(module: Any, args: Any, output: Any) -> None:
            passes.append(1)
            if len(passes) > 1:
                return
            for i in echoing:
                self._score_prompt(rows[i], output.logits[i, width - len(rows[i].job.prompt_ids) : width - 1])

        return hook

    def _offsets(self, ids: list[int]) -> list[int]:
        """Where each token starts in the decoded text of ``ids`` (the text an echo returns): the running length of
        the tokens decoded one by one when they add up to the whole (linear), else each prefix decoded (a token
        that is part of a multi-byte character decodes alone to U+FFFD)."""
        def decode(part: list[int]) -> str:
            return self.tokenizer.decode(part, skip_special_tokens=True, clean_up_tokenization_spaces=False)

        pieces = [decode([token]) for token in ids]
        if "".join(pieces) == decode(ids):
            starts = [0]
            for piece in pieces[:-1]:
                starts.append(starts[-1] + len(piece))
            return starts
        return [len(decode(ids[:i])) for i in range(len(ids))]

    def _generate(self, model: Any, batch: list[Job]) -> None:
        all_rows = [_Row(job, self.tokenizer, self.eos_ids) for job in batch]
        # A row of max_tokens 0 (only with echo: the prompt scored, what lm-evaluation-harness sends) generates
        # nothing: its one forward pass is the prompt's, and it is done.
        for row in all_rows:
            if row.params.max_tokens <= 0:
                ids = row.job.prompt_ids
                self._score_prompt(row, model(input_ids=torch.tensor([ids], device=model.device), use_cache=False).logits[0, :-1])
                row.finish_reason = "length"
                row.job.emit("done", row.result())
        rows = [row for row in all_rows if row.params.max_tokens > 0]
        if not rows:
            return
        batch = [row.job for row in rows]
        params = batch[0].params
        assert params is not None
        input_ids, attention_mask = generate.left_pad([job.prompt_ids for job in batch], self.pad_id, model.device)
        reader = _LogprobReader(rows) if any(row.logprobs is not None for row in rows) else None
        hooks: dict[str, Any] = {"stopping_criteria": [_RowStopper(rows, reader)]}
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        handles = []
        if reader is not None:
            handles.append(causal_lm.register_forward_hook(reader))
        if any(row.params.echo for row in rows):
            # The prompts are scored from generate's own prefill, not a second pass: it keeps every position's logits
            # (logits_to_keep 0; else only the last, the next token's) for this batch only.
            if "logits_to_keep" in inspect.signature(causal_lm.forward).parameters:  # a model without it keeps them all
                hooks["logits_to_keep"] = 0
            handles.append(causal_lm.register_forward_hook(self._prefill_reader(rows, input_ids.shape[1])))
        # A seeded sample draws from a generator of its own: the unseeded answers after it stay as random as before.
        device = torch.device(model.device)
        accelerator = device.type != "cpu"
        try:
            with torch.random.fork_rng(devices=[device] if accelerator else [], enabled=params.seeded, device_type=device.type if accelerator else None):
                generate.generate_ids(
                    model, input_ids, attention_mask,
                    max_new_tokens=max(job.params.max_tokens for job in batch),  # type: ignore[union-attr]
                    stops=self.stops, pad_id=self.pad_id, temperature=params.temperature, top_p=params.top_p,
                    seed=params.seed if params.seeded else None, **hooks,
                )
        finally:
            for handle in handles:
                handle.remove()  # a failed batch leaves no hook behind for the next
        for row in rows:
            if row.finish_reason == "cancelled":
                continue
            row._flush(len(row.text), final=True)
            row.job.emit("done", row.result())

    def _classify(self, model: Any, batch: list[Job]) -> None:
        """A batch of classify requests through the served model's one classify inference (``tunelab.inference.Classifier``):
        the same prefix cache, label rows, probabilities, out-of-scope score and threshold as evaluation."""
        entry = self.registry.get(batch[0].model)
        assert entry is not None and entry.label_map is not None
        classifier = self.registry.classifier(entry)
        prompts = [job.prompt_ids for job in batch]
        probabilities, scores = classifier.scored(model, prompts, batch_size=len(batch))
        for job, answer in zip(batch, classifier.answers(probabilities, prompts, scores=scores), strict=True):
            job.emit("done", answer)
