"""One client for every OpenAI-compatible endpoint: bounded concurrency, retries, timeouts, cache, cost.

Built on the official ``openai`` package pointed at ``endpoint.base_url``. Retries are this module's
own (exponential backoff with jitter; a provider's ``Retry-After`` honoured up to ``MAX_RETRY_AFTER_S``,
a long wait said in one line) on 408/409/429/5xx, timeouts and dropped connections,
``endpoint.max_retries`` times; at most ``endpoint.concurrency`` requests are in flight. Every answer that comes back is cached (``RequestCache``), so asking again costs nothing.
A request that still fails is returned as an :class:`Answer` with its ``error`` (never dropped),
and the caller decides: an evaluation refuses to score with holes, distillation lists and skips them.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab import runtime
from tunelab.config import EndpointConfig
from tunelab.errors import BudgetExceeded, ConfigError, TunelabError
from tunelab.estimate.prices import InferencePrice, PriceTable, load_price_table
from tunelab.remote.cache import CachedResponse, RequestCache, request_key

Progress = Callable[[int], None]
NO_KEY = "not-needed"  # the openai client insists on a key; a local server ignores it
# The longest wait a provider's Retry-After gets (a rate limit's minute or two). A longer one (a daily quota's hours) fails
# the request at once, saying how long the provider asked for: a resume later asks only the failed requests again.
MAX_RETRY_AFTER_S = 600.0
# The backoff between tries when the provider says nothing (the openai client's: 0.5 s doubling up to 8 s, less a jitter).
BACKOFF_S, BACKOFF_MAX_S = 0.5, 8.0
logger = logging.getLogger("tunelab.remote")
# The one rule for counting a provider's tokens before asking it (a fine-tuning job's price, a batch of requests):
# OpenAI's rule of thumb for English text, unless the caller passes a tokenizer's count, plus ~4 tokens of chat markup
# per message.
CHARS_PER_TOKEN = 4
MESSAGE_MARKUP_TOKENS = 4
TokenCount = Callable[[str], int]


def _sleep(seconds: float, stop: threading.Event | None = None) -> None:
    """Every wait between tries (tests record them instead of sleeping); it ends early once ``stop`` is set."""
    if stop is None:
        time.sleep(seconds)
    else:
        stop.wait(seconds)


class RemoteError(TunelabError):
    """A remote endpoint that cannot be reached or keeps refusing."""


class _Stopped(Exception):
    """A request of a batch that was stopped (Ctrl-C, SIGTERM) while it waited between tries: not asked again."""


@dataclass
class Answer:
    """One chat answer (or the error that stayed after the retries)."""

    text: str | None
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_s: float | None = None
    cached: bool = False
    finish_reason: str | None = None
    cost_usd: float | None = None  # None: the price of this model is unknown (never read as free)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Usage:
    """What a batch of requests used and cost. ``cost_usd`` is None when the model's price is unknown."""

    requests: int = 0
    cached: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None  # all answers, cached ones at what they cost when asked
    paid_usd: float | None = None  # only the answers asked this time (a rerun from the cache pays 0)
    price_source: str | None = None
    latencies_s: list[float] = field(default_factory=list)

    @property
    def cache_hit_rate(self) -> float:
        return self.cached / self.requests if self.requests else 0.0

    @property
    def cost_per_1000_requests(self) -> float | None:
        answered = self.requests - self.failed
        return None if self.cost_usd is None or not answered else 1000 * self.cost_usd / answered

    def to_dict(self) -> dict[str, Any]:
        latencies = sorted(self.latencies_s)
        return {
            "requests": self.requests, "cached": self.cached, "failed": self.failed, "cache_hit_rate": self.cache_hit_rate,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd, "paid_usd": self.paid_usd, "cost_per_1000_requests": self.cost_per_1000_requests, "price_source": self.price_source,
            "latency_median_s": latencies[len(latencies) // 2] if latencies else None,
        }


def summarize(answers: Sequence[Answer], price: InferencePrice | None) -> Usage:
    """The usage of ``answers``: tokens, cache hits, failures, and the cost (None when the price is unknown)."""
    usage = Usage(requests=len(answers), price_source=price.published if price else None)
    for answer in answers:
        usage.cached += answer.cached
        usage.failed += answer.error is not None
        usage.input_tokens += answer.input_tokens or 0
        usage.output_tokens += answer.output_tokens or 0
        if answer.latency_s is not None and answer.error is None:
            usage.latencies_s.append(answer.latency_s)
    # What the requests cost when they were made; a cached answer costs nothing now but is what a
    # production request would cost, so it counts (cost per 1,000 requests is about production).
    # An answer without `usage` (some compatible servers send none) has unknown tokens: the cost is unknown, not 0.
    counted = price is not None and all(a.input_tokens is not None for a in answers if a.error is None)
    usage.cost_usd = price.cost(usage.input_tokens, usage.output_tokens) if counted and price else None
    fresh = [a for a in answers if not a.cached]
    usage.paid_usd = price.cost(sum(a.input_tokens or 0 for a in fresh), sum(a.output_tokens or 0 for a in fresh)) if counted and price else None
    return usage


def text_tokens(text: str, count_tokens: TokenCount | None = None) -> int:
    """The tokens of ``text``: ``count_tokens`` (a tokenizer) when given, else characters / ``CHARS_PER_TOKEN``."""
    return count_tokens(text) if count_tokens is not None else math.ceil(len(text) / CHARS_PER_TOKEN)


def chat_tokens(messages: Sequence[dict[str, Any]], count_tokens: TokenCount | None = None) -> int:
    """The input tokens of one chat: each message's content plus ``MESSAGE_MARKUP_TOKENS`` of markup."""
    return sum(text_tokens(str(m.get("content") or ""), count_tokens) + MESSAGE_MARKUP_TOKENS for m in messages)


def is_loopback(base_url: str) -> bool:
    """Whether ``base_url`` is this machine (``tunelab serve``, a local vLLM): no provider bills its answers."""
    from urllib.parse import urlparse

    return runtime.is_loopback(urlparse(base_url).hostname or "")


@dataclass(frozen=True)
class RequestEstimate:
    """What a batch of chat requests will cost, before the first is sent.

    ``usd_max`` is the upper bound (every answer ``max_tokens`` long); ``usd_expected`` uses the typical answer length
    the caller knows (references, a one-word verdict), the bound where it knows none. Both are None when the price is
    unknown (never a made-up number), 0 for a ``local`` endpoint. Requests in the request cache cost nothing.
    """

    model: str
    requests: int
    cached: int
    input_tokens: int  # of the requests to send (cached ones excluded)
    max_output_tokens: int
    expected_output_tokens: int
    usd_expected: float | None
    usd_max: float | None
    local: bool = False
    price_date: str | None = None  # the price table's date
    token_count: str = f"characters / {CHARS_PER_TOKEN}"

    def plus(self, other: RequestEstimate) -> RequestEstimate:
        """Two batches to the same model (a teacher's training answers and its test answers) as one."""
        def add(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else a + b

        return RequestEstimate(
            self.model, self.requests + other.requests, self.cached + other.cached, self.input_tokens + other.input_tokens,
            self.max_output_tokens + other.max_output_tokens, self.expected_output_tokens + other.expected_output_tokens,
            add(self.usd_expected, other.usd_expected), add(self.usd_max, other.usd_max), self.local and other.local,
            self.price_date, self.token_count,
        )

    def over(self, max_usd: float | None) -> bool:
        """Whether the batch is refused under the cap ``max_usd``.

        The expected cost is checked, not the upper bound: the bound assumes every answer runs to max_tokens, which
        for sft answers (max_new_tokens 128-512, typical answers far shorter) is several times what is paid, so a cap
        on it would refuse batches that fit. The refusal still says the bound. An unknown price is never refused
        (nothing to compare): ``describe`` says the cap cannot be checked.
        """
        return max_usd is not None and self.usd_expected is not None and self.usd_expected > max_usd

    def describe(self, cap_name: str | None = None, max_usd: float | None = None) -> str:
        """The one line said before the first request (with the cap ``cap_name`` when one is set)."""
        from tunelab.estimate.plan import money

        counts = (f"asking {self.model}: {self.requests} requests ({self.cached} cached), about {self.input_tokens:,} input tokens, "
                  f"at most {self.max_output_tokens:,} output tokens")
        if self.local:
            return f"{counts}: local endpoint, no price (nothing billed)"
        if self.usd_expected is None or self.usd_max is None:
            unchecked = f"; {cap_name} {max_usd:g} cannot be checked" if cap_name and max_usd is not None else ""
            return f"{counts}: price unknown (no price for {self.model} in the price table){unchecked}"
        return f"{counts}: about {money(self.usd_expected)} (at most {money(self.usd_max)}) by the price table of {self.price_date}"

    def refuse_over(self, cap_name: str, max_usd: float | None, hint: str) -> None:
        """Raises: BudgetExceeded (one line: the estimate and the cap) when ``over(max_usd)``."""
        if self.over(max_usd):
            from tunelab.estimate.plan import money

            raise BudgetExceeded(
                f"asking {self.model} would cost about {money(self.usd_expected)} (at most {money(self.usd_max)}) for "
                f"{self.requests - self.cached} uncached requests > {cap_name} {max_usd:g}: nothing was asked", hint)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def api_key_for(endpoint: EndpointConfig) -> str:
    """The key of ``endpoint`` from its ``api_key_env``, or a placeholder when it names none.

    Raises:
        ConfigError: when ``api_key_env`` is set but that variable is empty.
    """
    if not endpoint.api_key_env:
        return NO_KEY
    key = os.environ.get(endpoint.api_key_env, "").strip()
    if not key:
        raise ConfigError(
            f"the endpoint {endpoint.base_url} ({endpoint.name}) needs an API key in ${endpoint.api_key_env}, which is empty",
            f"export {endpoint.api_key_env}=... (or set api_key_env: null for a server without keys)",
        )
    return key


def without_key(text: str, endpoint: EndpointConfig) -> str:
    """``text`` (a server's error message) with the endpoint's API key masked: some servers echo what they were sent."""
    key = os.environ.get(endpoint.api_key_env, "").strip() if endpoint.api_key_env else ""
    return text.replace(key, "***") if key else text


def openai_client(endpoint: EndpointConfig, *, max_retries: int | None = None):
    """The official client for ``endpoint`` (its timeout and retries)."""
    import openai

    return openai.OpenAI(
        base_url=endpoint.base_url, api_key=api_key_for(endpoint), timeout=endpoint.timeout_s,
        max_retries=endpoint.max_retries if max_retries is None else max_retries,
    )


class RemoteClient:
    """Chat completions from one model at one endpoint, ``endpoint.concurrency`` at a time, cached."""

    def __init__(
        self, endpoint: EndpointConfig, *, cache: RequestCache | None = None, prices: PriceTable | None = None, concurrency: int | None = None
    ) -> None:
        self.endpoint = endpoint
        self.cache = cache
        self.concurrency = concurrency or endpoint.concurrency
        # The retries are ask's own: the openai client honours a Retry-After of at most two minutes (one minute in older
        # versions) and silently, so a rate-limited provider's requests were asked again too early and failed the batch.
        self.client = openai_client(endpoint, max_retries=0)
        self._quiet_until = 0.0  # until when a wait already said covers the batch (one line for all requests waiting)
        self.prices = prices or load_price_table()
        self.price = self.prices.inference_price(endpoint.name)

    @property
    def display_name(self) -> str:
        return f"{self.endpoint.name} @ {self.endpoint.base_url}"

    def request_body(self, messages: Sequence[dict[str, str]], *, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = 0) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": [dict(m) for m in messages], "max_tokens": max_tokens, "temperature": temperature}
        if temperature > 0:
            body.update(top_p=top_p, seed=seed)
        return body

    def estimate(
        self, conversations: Sequence[Sequence[dict[str, str]]], *, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
        seed: int | None = 0, expected_output_tokens: Sequence[int | None] | None = None, count_tokens: TokenCount | None = None,
    ) -> RequestEstimate:
        """What ``chat_many`` with the same arguments would cost, before it sends anything.

        A request already in the request cache (the key ``ask`` computes) costs nothing. ``expected_output_tokens``: the
        typical answer length of each conversation where the caller knows one (capped at ``max_tokens``); one it does
        not know counts at the mean of those it knows, or at ``max_tokens`` when it knows none.
        """
        expected = list(expected_output_tokens) if expected_output_tokens is not None else [None] * len(conversations)
        known = [min(n, max_tokens) for n in expected if n is not None]
        typical = round(sum(known) / len(known)) if known else max_tokens
        requests = cached = input_tokens = bound = likely = 0
        for messages, answer in zip(conversations, expected, strict=True):
            requests += 1
            body = self.request_body(messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
            if self.cache is not None and self.cache.get(request_key(self.endpoint.base_url, self.endpoint.name, body)) is not None:
                cached += 1
                continue
            input_tokens += chat_tokens(messages, count_tokens)
            bound += max_tokens
            likely += typical if answer is None else min(answer, max_tokens)
        # A model the table prices is priced wherever it is served (a proxy on localhost forwarding to a provider bills);
        # an unpriced model on this machine (tunelab serve) costs nothing; elsewhere its price is unknown.
        local = self.price is None and is_loopback(self.endpoint.base_url)
        price = self.price
        return RequestEstimate(
            self.endpoint.name, requests, cached, input_tokens, bound, likely,
            0.0 if local else price.cost(input_tokens, likely) if price else None,
            0.0 if local else price.cost(input_tokens, bound) if price else None,
            local, self.prices.table_date if price else None,
        )

    def ask(self, body: dict[str, Any], *, stop: threading.Event | None = None) -> Answer:
        """One request (a cache hit when this exact request was answered before); once ``stop`` is set (its batch was
        stopped), a wait between tries ends and nothing more is sent (``_Stopped`` is raised)."""
        import openai

        key = request_key(self.endpoint.base_url, self.endpoint.name, body)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return self._answer(hit, cached=True)
        started = time.perf_counter()
        try:
            response = self._create(body, stop)
        except openai.APIStatusError as error:
            # A 404 on every request is nearly always the address (a base_url without its /v1) or the model's name.
            wrong_address = " (check base_url, usually ending in /v1, and the model's name there)" if error.status_code == 404 else ""
            asked = retry_after_s(error.response.headers)
            too_long = (f" (the provider asks to wait {asked:.0f} s before asking again, longer than the {MAX_RETRY_AFTER_S:.0f} s "
                        "tunelab waits: ask again later)") if _retryable(error.response) and asked is not None and asked > MAX_RETRY_AFTER_S else ""
            return self._failed(f"HTTP {error.status_code}: {_message(error)}{wrong_address}{too_long}")
        except openai.APITimeoutError:  # after the retries; named by the setting that bounds it, which the user can raise
            return self._failed(f"no answer within timeout_s={self.endpoint.timeout_s:g} s (tried {self.endpoint.max_retries + 1} times)")
        except openai.APIConnectionError as error:  # after the retries
            # The client says only "Connection error."; what httpx saw (refused, reset, a body cut short) is its cause.
            cause = error.__cause__
            said = f"{type(cause).__name__}: {cause}" if cause is not None and str(cause) else str(error)
            return self._failed(f"{type(error).__name__} ({said}; tried {self.endpoint.max_retries + 1} times)")
        except (openai.APIResponseValidationError, json.JSONDecodeError) as error:  # a 200 whose body is not JSON
            return self._failed(f"HTTP 200 with a body that is not JSON ({error})")
        latency = time.perf_counter() - started
        # A 200 that is no completion (an HTML login page of a proxy, an `error` object some gateways send
        # with 200, no choices) is a failed request: cached as an empty answer it would be scored, and
        # distilled from, as if the model had said nothing, on every rerun.
        problem = _not_a_completion(response)
        if problem is not None:
            return self._failed(problem)
        choice = response.choices[0]
        usage = response.usage
        result = CachedResponse(
            text=(choice.message.content or "") if choice.message else "",
            input_tokens=usage.prompt_tokens if usage else None,
            output_tokens=usage.completion_tokens if usage else None,
            latency_s=latency,
            finish_reason=choice.finish_reason,
        )
        if self.cache is not None:
            self.cache.put(key, self.endpoint.base_url, self.endpoint.name, body, result)
        return self._answer(result, cached=False)

    def _create(self, body: dict[str, Any], stop: threading.Event | None = None) -> Any:
        """The completion, asked up to ``max_retries + 1`` times; the last error is raised.

        Raises:
            _Stopped: once ``stop`` is set: a wait (a Retry-After of up to 10 minutes) ends then, and what the user
                stopped is not asked again after it (in a notebook the process, and this thread, live on).
        """
        import openai

        for attempt in itertools.count():
            if stop is not None and stop.is_set():
                raise _Stopped
            try:
                return self.client.chat.completions.create(model=self.endpoint.name, **body)
            except (openai.APIStatusError, openai.APIConnectionError) as error:  # a timeout is a connection error
                response = getattr(error, "response", None) if isinstance(error, openai.APIStatusError) else None
                if attempt >= self.endpoint.max_retries or (response is not None and not _retryable(response)):
                    raise
                asked = retry_after_s(response.headers) if response is not None else None
                if asked is not None and asked > MAX_RETRY_AFTER_S:
                    raise
                if asked is not None and asked > 0:
                    self._say_wait(asked, f"HTTP {response.status_code}", attempt)
                    _sleep(asked, stop)
                else:
                    _sleep(min(BACKOFF_S * 2**attempt, BACKOFF_MAX_S) * (1 - 0.25 * random.random()), stop)
        raise AssertionError("itertools.count() never ends")

    def _say_wait(self, seconds: float, why: str, attempt: int) -> None:
        """One line for a wait the user would notice (longer than the backoff), once for all the requests waiting with it."""
        if seconds <= BACKOFF_MAX_S:
            return
        with _said_lock:
            now = time.monotonic()
            if now < self._quiet_until:
                return
            self._quiet_until = now + seconds
        logger.warning("%s answered %s and asks to wait %.0f s: waiting before trying again (retry %d of %d)",
                       self.display_name, why, seconds, attempt + 1, self.endpoint.max_retries)

    def _failed(self, error: str) -> Answer:
        return Answer(text=None, error=without_key(_one_line(error), self.endpoint))

    def _answer(self, response: CachedResponse, *, cached: bool) -> Answer:
        cost = self.price.cost(response.input_tokens or 0, response.output_tokens or 0) if self.price and response.input_tokens is not None else None
        return Answer(
            text=response.text, input_tokens=response.input_tokens, output_tokens=response.output_tokens, latency_s=response.latency_s,
            cached=cached, finish_reason=response.finish_reason, cost_usd=cost,
        )

    def chat_many(
        self, conversations: Sequence[Sequence[dict[str, str]]], *, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
        seed: int | None = 0, progress: Progress | None = None, on_answer: Callable[[int, Answer], None] | None = None,
    ) -> list[Answer]:
        """Answers to ``conversations`` in their order, at most ``concurrency`` requests in flight.

        ``on_answer(index, answer)`` is called as each one arrives (from worker threads, one call at a time, in arrival
        order). An interrupt (Ctrl-C, or the SIGTERM the CLI turns into one) stops the batch at once: no queued request is
        sent, the ones in flight are abandoned (an answer that still comes back is cached, but reaches no callback), and
        the interrupt goes on to the caller, which marks the run cancelled.
        """
        bodies = [self.request_body(m, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed) for m in conversations]
        answers: list[Answer | None] = [None] * len(bodies)
        indexes = iter(range(len(bodies)))
        # Hands out the next request and runs the callbacks, so that none runs, or is half-way, once the batch is given up.
        lock = threading.Lock()
        finished = threading.Event()
        stopped = threading.Event()  # ends the waits between tries of the requests in flight, and their tries
        batch: dict[str, Any] = {"left": len(bodies), "stopped": False, "error": None}

        def work() -> None:
            while True:
                with lock:
                    index = None if batch["stopped"] else next(indexes, None)
                if index is None:
                    return
                try:
                    answer = self.ask(bodies[index], stop=stopped)
                    with lock:
                        if batch["stopped"]:
                            return
                        answers[index] = answer
                        if on_answer is not None:
                            on_answer(index, answer)
                        if progress is not None:
                            progress(1)
                        batch["left"] -= 1
                        if not batch["left"]:
                            finished.set()
                except _Stopped:
                    return  # the batch was given up while this request waited: the caller has the stop already
                except BaseException as error:  # noqa: BLE001 - handed to the caller's thread, as a pool's map does
                    with lock:
                        batch["error"] = batch["error"] or error
                        batch["stopped"] = True
                    stopped.set()
                    finished.set()
                    return

        if not bodies:
            return []
        # Daemon threads, not a ThreadPoolExecutor: leaving its `with` block, and the interpreter's exit, join its workers, so
        # an interrupt waited for every request in flight (up to timeout_s on each of max_retries + 1 tries, 12 minutes with
        # the defaults). An abandoned request dies with the process; it was sent, so it may be billed either way.
        for number in range(min(self.concurrency, len(bodies))):
            threading.Thread(target=work, name=f"tunelab-remote-{number}", daemon=True).start()
        try:
            finished.wait()
        except BaseException:
            with lock:
                batch["stopped"] = True
            stopped.set()
            raise
        if batch["error"] is not None:
            raise batch["error"]
        return [answer for answer in answers if answer is not None]

    def usage(self, answers: Sequence[Answer]) -> Usage:
        return summarize(answers, self.price)

    def check(self) -> None:
        """Fail early, with one clear message, when the endpoint does not answer at all.

        Raises:
            RemoteError: when the server cannot be reached or refuses the key.
        """
        import openai

        try:
            openai_client(self.endpoint, max_retries=1).models.list()
        except openai.AuthenticationError as error:
            said = without_key(_one_line(_message(error)), self.endpoint)
            if self.endpoint.api_key_env:
                raise RemoteError(f"{self.endpoint.base_url} refused the API key: {said}",
                                  f"check the key in ${self.endpoint.api_key_env}") from None
            raise RemoteError(f"{self.endpoint.base_url} wants an API key and no key is sent: {said}",
                              "set api_key_env to the environment variable that holds the key") from None
        except openai.APIConnectionError as error:
            raise RemoteError(f"cannot reach {self.endpoint.base_url}: {error}", "is the server running? check base_url") from None
        except openai.APIStatusError:
            pass  # some compatible servers have no /models; the requests themselves will tell


_said_lock = threading.Lock()


def retry_after_s(headers: Any) -> float | None:
    """The seconds a response's ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date) asks for, or None."""
    import email.utils

    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            seconds = float(headers.get(name)) * scale
        except (TypeError, ValueError):
            continue
        if seconds == seconds:  # not NaN
            return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(headers.get("retry-after"))
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when.tzinfo is not None else None


def _retryable(response: Any) -> bool:
    """Whether a refused request may be answered if asked again (as the openai client decides it)."""
    said = response.headers.get("x-should-retry")
    if said in ("true", "false"):
        return said == "true"
    return response.status_code in (408, 409, 429) or response.status_code >= 500


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _not_a_completion(response: Any) -> str | None:
    """Why a 200 response is not a chat completion, or None when it is one."""
    from openai.types.chat import ChatCompletion

    if not isinstance(response, ChatCompletion):  # the client hands back a non-JSON body as text
        return f"HTTP 200 with a body that is not a chat completion: {_one_line(str(response))!r}"
    extra = response.model_extra or {}
    if extra.get("error"):
        inner = extra["error"]
        message = inner.get("message") if isinstance(inner, dict) else None
        return f"HTTP 200 with an error: {_one_line(str(message or inner))}"
    if not response.choices:
        return "HTTP 200 with no choices in the completion"
    # The client builds the response without validating it: a gateway's field of the wrong type would otherwise
    # raise in ``ask`` (or in the cache's INSERT) and end the whole batch on one answer.
    wrong = _wrong_field(response)
    return f"HTTP 200 with a completion whose {wrong}" if wrong else None


def _wrong_field(response: Any) -> str | None:
    """The first field of a chat completion of the wrong type, said as a phrase, or None when all are usable."""
    from openai.types import CompletionUsage
    from openai.types.chat import ChatCompletionMessage
    from openai.types.chat.chat_completion import Choice

    if not isinstance(response.choices, list):
        return f"choices is not a list: {_one_line(repr(response.choices))}"
    choice = response.choices[0]
    if not isinstance(choice, Choice):
        return f"first choice is not an object: {_one_line(repr(choice))}"
    message = getattr(choice, "message", None)
    if message is not None and not isinstance(message, ChatCompletionMessage):
        return f"message is not an object: {_one_line(repr(message))}"
    content = getattr(message, "content", None)
    if content is not None and not isinstance(content, str):
        return f"message content is not text: {_one_line(repr(content))}"
    usage = response.usage
    if usage is not None and not (isinstance(usage, CompletionUsage) and all(
            isinstance(getattr(usage, name, None), int) for name in ("prompt_tokens", "completion_tokens"))):
        return f"usage has no token counts: {_one_line(repr(usage))}"
    return None


def _message(error: Any) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(body.get("detail"), str):  # FastAPI-based servers (vLLM's routes, tunelab serve) say it here
            return body["detail"]
    if isinstance(body, str) and body.strip():  # a body that is not JSON (a proxy's text page): what the server said
        return body
    return str(getattr(error, "message", error))
