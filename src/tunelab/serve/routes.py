"""The OpenAI-compatible endpoints, each a plain function over the app's one :class:`Service`.

``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``, ``POST /v1/completions``,
``POST /v1/classify``, ``POST /v1/feedback``, ``GET /health``. A streamed answer goes through the one SSE helper,
:func:`sse_answer`; a request's checks (model, context length, max_tokens, stop sequences) are
methods of the service, shared by every endpoint.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from tunelab.inference import chat_prompt, completion_prompt
from tunelab.models.generate import Decoding, configured_decoding
from tunelab.serve.adapters import ModelRegistry, ServedModel
from tunelab.serve.engine import ClassifyResult, Delta, Engine, GenerationResult, Job, SamplingParams
from tunelab.serve.errors import APIError, bad_request, error_body, model_not_found
from tunelab.serve.logprobs import (
    TokenRenderer,
    chat_logprobs,
    completion_logprobs,
    join_completion_logprobs,
    label_logprobs,
)
from tunelab.serve.middleware import LOG_KEY
from tunelab.serve.schemas import (
    MAX_PROMPTS_PER_REQUEST,
    MAX_STOP_LENGTH,
    MAX_STOP_SEQUENCES,
    ChatCompletionRequest,
    ChatMessage,
    ClassifyRequest,
    CompletionRequest,
    FeedbackRequest,
)
from tunelab.serve.settings import ServeSettings

router = APIRouter()


def _now() -> int:
    return int(time.time())


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def _usage_key(include_usage: bool) -> dict[str, None]:
    """A streamed chunk's ``usage`` before the last: OpenAI sends it as null on every chunk once usage is asked for."""
    return {"usage": None} if include_usage else {}


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


class _AnswerStream(StreamingResponse):
    """A streamed answer whose job is cancelled once the response ends, however it ends.

    A client that leaves is noticed by starlette, which cancels the task sending the stream. When that task was
    sending a chunk rather than waiting in the answer's generator for the next token, the generator is left suspended
    in a reference cycle: its ``finally`` (``Engine.stream`` cancelling the job) ran only when the cyclic garbage
    collector came by, and until then the engine computed the rest of the answer for nobody."""

    def __init__(self, content: AsyncIterator[str], job: Job | None, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.job = job

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.job is not None:
                self.job.cancelled.set()  # a finished job ignores it


def sse_answer(
    engine: Engine,
    job: Job | None,
    log: dict,
    *,
    delta: Callable[[Delta], dict],
    finish: Callable[[str], dict],
    usage: Callable[[GenerationResult], dict] | None = None,
    opening: tuple[dict, ...] = (),
    answer: GenerationResult | None = None,
) -> StreamingResponse:
    """The one server-sent-events stream of an answer: ``opening`` chunks, a ``delta`` chunk per piece of
    text (with its tokens' log-probabilities when asked for), the ``finish`` chunk, the ``usage`` chunk when asked, then ``[DONE]``; an engine error ends
    it with the error in the OpenAI shape. ``answer``: an answer already known (no ``job``)."""

    async def events() -> AsyncIterator[str]:
        for chunk in opening:
            yield _sse(chunk)
        final = answer
        if job is not None:
            async for kind, payload in engine.stream(job):
                if kind == "delta":
                    yield _sse(delta(payload))
                elif kind == "done":
                    final = payload
                else:
                    log["error"] = getattr(payload, "message", str(payload))
                    yield _sse(payload.body() if isinstance(payload, APIError) else error_body(str(payload), type="server_error"))
                    return
        elif final is not None:
            yield _sse(delta(Delta(final.text, final.logprobs)))
        assert final is not None
        log.update(output=final.text, prompt_tokens=final.prompt_tokens, completion_tokens=final.completion_tokens)
        yield _sse(finish(final.finish_reason))
        if usage is not None:
            yield _sse(usage(final))
        yield _sse("[DONE]")

    return _AnswerStream(events(), job, media_type="text/event-stream", headers={"cache-control": "no-cache"})


@dataclass
class Service:
    """What every endpoint works with: the models, the engine, the settings, and the request checks."""

    registry: ModelRegistry
    engine: Engine
    settings: ServeSettings
    # When the models were loaded: the ``created`` of every model card (OpenAI's is a Unix time; 0 read as 1970).
    loaded_at: int = field(default_factory=_now)

    @property
    def tokenizer(self) -> Any:
        return self.registry.tokenizer

    def served(self, name: str) -> ServedModel:
        entry = self.registry.get(name)
        if entry is None:
            raise model_not_found(name)
        return entry

    def model_card(self, name: str) -> dict:
        entry = self.served(name)
        card = {"id": name, "object": "model", "created": self.loaded_at, "owned_by": "tunelab", "kind": entry.kind, "task": entry.task}
        if entry.kind == "adapter":
            card["parent"] = self.registry.base_name
        if entry.run_id:
            card["run_id"] = entry.run_id  # which run answers now (it moves when a followed alias is promoted)
        return card

    def encode_text(self, entry: ServedModel, text: str, param: str, *, shorten: bool = True) -> list[int]:
        """A raw-text prompt (``tunelab.inference.completion_prompt``), at most the run's ``max_length`` tokens (the end
        kept); ``shorten`` False: all of it (an echoed prompt, whose positions the client reads; the context check is
        :meth:`sampling`'s)."""
        try:
            return completion_prompt(self.tokenizer, text, max_length=entry.max_length if shorten else None).ids
        except Exception as error:  # noqa: BLE001 - e.g. lone surrogates the tokenizer cannot encode
            raise bad_request(f"'{param}' cannot be tokenized: {error}", param=param) from None

    def token_prompt(self, ids: list[int], param: str) -> list[int]:
        """A token-id prompt (``/v1/completions``), used as given: no template, no special token added, not shortened to
        the run's ``max_length`` (a client that sends ids counts positions in the answer, as lm-evaluation-harness reads
        ``token_logprobs[ctxlen:-1]``: a cut prompt would shift them). The context check is the text prompt's
        (:meth:`sampling`). Ids the tokenizer has no token for are refused, naming the first one's index."""
        vocabulary = len(self.tokenizer)
        for index, token in enumerate(ids):
            if token >= vocabulary:
                raise bad_request(
                    f"Invalid value for '{param}.{index}': token id {token} is not in this model's vocabulary (0 to {vocabulary - 1}).",
                    param=f"{param}.{index}",
                )
        return list(ids)

    def render(self, entry: ServedModel, messages: list[dict], param: str) -> list[int]:
        """The one chat preparation (``tunelab.inference.chat_prompt``): the run's system prompt when the request
        brings none, the chat template, at most the run's ``max_length`` tokens (the end kept), as evaluation does."""
        try:
            return chat_prompt(self.tokenizer, messages, system_prompt=entry.system_prompt, max_length=entry.max_length).ids
        except Exception as error:  # noqa: BLE001 - the chat template (Jinja) rejects some conversations
            raise bad_request(f"The model's chat template cannot render these messages: {error}", param=param) from None

    def check_context(self, prompt_tokens: int, param: str, answer_tokens: int = 1) -> None:
        """Refuse a prompt that leaves no room for ``answer_tokens`` in the model's context (a classify answer is read
        at the prompt's last position: 0)."""
        context = self.registry.context_length
        if prompt_tokens + answer_tokens > context:
            raise bad_request(
                f"This model's maximum context length is {context} tokens. However, your {param} resulted in {prompt_tokens} "
                "tokens. Please shorten it.",
                param=param,
                code="context_length_exceeded",
            )

    def decoding(self, entry: ServedModel, body: Any) -> Decoding:
        """How a generation request is decoded: its temperature and top_p; what it leaves out, the model's own."""
        # Left out, the decoding is the run's own: a run is served as its evaluation judged it (greedy by default), where
        # OpenAI's 1.0 sampled answers nobody judged. A plain model decodes as its generation_config says (a merged
        # export's is its run's), as transformers and vLLM read the folder; OpenAI's defaults where it says nothing.
        if entry.run is not None:
            default = entry.run.decoding
        else:
            default = configured_decoding(self.registry.model, Decoding(temperature=1.0))
        return default.told(body.temperature, body.top_p)

    def sampling(
        self, entry: ServedModel, body: Any, prompt_tokens: int, requested: int | None, param: str, limit_param: str = "max_tokens",
        left_out: int | None = None,
    ) -> SamplingParams:
        """The decoding of one generation: the request's, else the run's own (``entry.run``'s eval settings), else the
        model's own ``generation_config`` (a merged export's says how its run was judged), else OpenAI's.
        ``limit_param``: the field ``requested`` came from (``max_tokens`` or ``max_completion_tokens``); ``left_out``:
        the endpoint's own answer length when it is left out (None: what the server limit and the context leave)."""
        # A prompt only scored (completions' echo with max_tokens 0) needs no room for an answer.
        self.check_context(prompt_tokens, param, answer_tokens=0 if requested == 0 else 1)
        limit = self.settings.max_tokens_limit
        if requested is not None and requested > limit:
            raise bad_request(
                f"{limit_param} is too large: {requested}. This server answers with at most {limit} tokens.",
                param=limit_param,
                code="invalid_value",
            )
        context = self.registry.context_length
        decoding = self.decoding(entry, body)
        # Left out, the answer length is the model's own too: a run's eval.max_new_tokens (its export's file says the
        # same, so the two answer alike), a plain folder's generation_config; a default like the server limit (so capped
        # to what the context leaves). Else the endpoint's own (OpenAI's: asked for, not capped).
        judged = decoding.max_new_tokens
        if requested is not None:
            max_tokens = requested
        elif judged is None and left_out is not None:
            max_tokens = min(left_out, limit)
        else:
            max_tokens = min(judged or limit, limit, context - prompt_tokens)
        if prompt_tokens + max_tokens > context:
            raise bad_request(
                f"This model's maximum context length is {context} tokens. However, you requested {prompt_tokens + max_tokens} "
                f"tokens ({prompt_tokens} in the {param}, {max_tokens} in the completion). Please reduce the length of the "
                f"{param} or the completion.",
                param=param,
                code="context_length_exceeded",
            )
        stops = body.stop_list()
        if len(stops) > MAX_STOP_SEQUENCES:
            raise bad_request(f"At most {MAX_STOP_SEQUENCES} stop sequences are allowed (got {len(stops)}).", param="stop")
        if any(len(stop) > MAX_STOP_LENGTH for stop in stops):
            raise bad_request(f"A stop sequence may be at most {MAX_STOP_LENGTH} characters long.", param="stop")
        return SamplingParams(max_tokens=max_tokens, temperature=decoding.temperature, top_p=decoding.top_p, stop=tuple(stops), seed=body.seed)

    async def classify(self, entry: ServedModel, texts: list[str]) -> list[ClassifyResult]:
        """The served model's one classify inference (its prompt, the text shortened to its ``max_length`` and to the model's
        context, as evaluated), batched by the engine."""
        classifier = self.registry.classifier(entry)
        prompts = []
        for text in texts:
            try:
                ids, _ = classifier.prompt(text)
            except Exception as error:  # noqa: BLE001 - the chat template (Jinja) or the tokenizer rejects the text
                raise bad_request(f"'input' cannot be prompted: {error}", param="input") from None
            self.check_context(len(ids), "input", answer_tokens=0)
            prompts.append(ids)
        submitted = self.engine.submit_all(entry.name, "classify", [(ids, None) for ids in prompts])
        return [await self.engine.result(job) for job in submitted]


async def _client_gone(request: Request) -> None:
    """Returns once the client has closed the connection (the request's body is read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _results(service: Service, request: Request, jobs: list[Job]) -> list[Any]:
    """The jobs' results; a client that goes away first (its timeout: the ``openai`` client then asks again) cancels
    them, where the engine computed every abandoned answer to its last token, for nobody.

    Raises:
        APIError: 499 (logged, sent to nobody) when the client left; a job's own error.
    """
    answers = asyncio.ensure_future(asyncio.gather(*(service.engine.result(job) for job in jobs)))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({answers, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        left = not answers.done()
        if left:
            for job in jobs:
                job.cancelled.set()
            answers.cancel()
            answers.add_done_callback(lambda future: future.cancelled() or future.exception())  # nobody awaits it now
    if left:
        raise APIError(499, "The client closed the connection before the answer was ready.", code="client_closed_request")
    return answers.result()


def _service(request: Request) -> Service:
    return request.app.state.service


def _log(request: Request, **fields: Any) -> dict:
    entry = request.scope.setdefault(LOG_KEY, {})
    entry.update(fields)
    return entry


def _prediction_fields(results: list[ClassifyResult]) -> dict[str, Any]:
    """What monitoring reads of a classify answer: the label and top probability (one input), all probabilities."""
    fields: dict[str, Any] = {"probabilities": json.dumps([r.probabilities for r in results])}
    if len(results) == 1:
        fields.update(predicted_label=results[0].label, top_probability=max(results[0].probabilities.values()))
    return fields


def _refuse(condition: bool, param: str, what: str) -> None:
    if condition:
        raise bad_request(f"{what} is not supported by this server.", param=param, code="unsupported_parameter")


def _invalid(condition: bool, param: str, message: str) -> None:
    """A request OpenAI itself refuses (a field that needs another): the same 400, naming the field, so a client
    learns here what it would learn there rather than being answered as if the field meant something."""
    if condition:
        raise bad_request(message, param=param)


def _check_messages(body: ChatCompletionRequest) -> None:
    """Messages the prompt cannot hold as sent: refused by name, where they were answered as an empty turn."""
    for index, message in enumerate(body.messages):
        where = f"messages.{index}"
        # OpenAI lets only an assistant turn (one that calls a tool) have null content; a user message that lost its
        # text is the client's mistake, and answering it as "" hides that. (A missing content is the schema's 400.)
        if message.role != "assistant" and message.content is None:
            raise bad_request(
                f"Invalid value for '{where}.content': a {message.role} message needs a string or a list of text parts, not null.",
                param=f"{where}.content",
            )
        # OpenAI's schema asks for at least one part; an empty list was answered as an empty turn, hiding the text lost.
        if isinstance(message.content, list) and not message.content:
            raise bad_request(
                f"Invalid value for '{where}.content': empty array. Expected a string or at least one text part.",
                param=f"{where}.content", code="empty_array",
            )
        # An earlier call of the assistant (tool calling is refused): dropped, the model saw an empty assistant turn.
        for key in ("tool_calls", "function_call"):
            _refuse(bool((message.model_extra or {}).get(key)), f"{where}.{key}", f"A tool call in the conversation ('{key}')")


def _turn(message: ChatMessage) -> dict[str, str]:
    """One message as the prompt holds it: its role and text. A participant's ``name`` (checked against OpenAI's pattern)
    is not shown to the model: training drops it too (``templates.chat_inputs``), and a served prompt that opened turns
    with names would be one the run was never trained or judged on."""
    return {"role": "system" if message.role == "developer" else message.role, "content": message.text()}


def _check_stream_options(body: Any) -> None:
    # Without stream the options ask for what a plain answer never has (a usage chunk): OpenAI refuses them.
    _invalid(body.stream_options is not None and not body.stream, "stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled.")


def _refuse_penalties(body: Any) -> None:
    """Penalties and logit_bias change the answer and are not applied here: only their no-op values pass."""
    _refuse(bool(body.frequency_penalty), "frequency_penalty", "frequency_penalty other than 0")
    _refuse(bool(body.presence_penalty), "presence_penalty", "presence_penalty other than 0")
    _refuse(bool(body.logit_bias), "logit_bias", "logit_bias")


def _number(value: Any, *no_ops: float) -> bool:
    # A JSON number only: true is no 1 and "0" no 0 (the schema's strictness for the fields it declares).
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value in no_ops


# Sampling extensions of other servers (vLLM, TGI, llama.cpp server, transformers' generate), which clients such as
# lm-evaluation-harness pass through from a task's gen_kwargs. Unknown fields are accepted (the schema's extra="allow"),
# but these change the answer and tunelab does not apply them: only their no-op value passes, and null (left to the
# default, as for OpenAI's own fields). Each: whether its value is a no-op, given whether tunelab samples this request
# (the do_sample transformers would be passed); and what is refused. max_new_tokens is never a no-op: the answer
# length has OpenAI's name here, and taking both would mean two limits.
_EXTENSIONS: dict[str, tuple[Callable[[Any, bool], bool], str]] = {
    "top_k": (lambda v, _: _number(v, 0, -1), "top_k other than 0 or -1 (no top-k cut)"),
    "min_p": (lambda v, _: _number(v, 0), "min_p other than 0"),
    "typical_p": (lambda v, _: _number(v, 1), "typical_p other than 1"),
    "repetition_penalty": (lambda v, _: _number(v, 1), "repetition_penalty other than 1"),
    "length_penalty": (lambda v, _: _number(v, 1), "length_penalty other than 1"),
    "min_tokens": (lambda v, _: _number(v, 0), "min_tokens other than 0"),
    "min_new_tokens": (lambda v, _: _number(v, 0), "min_new_tokens other than 0"),
    "max_new_tokens": (lambda v, _: False, "max_new_tokens (send max_tokens, OpenAI's name for the answer length)"),
    "ignore_eos": (lambda v, _: v is False, "ignore_eos other than false"),
    "use_beam_search": (lambda v, _: v is False, "Beam search (use_beam_search other than false)"),
    "num_beams": (lambda v, _: _number(v, 1), "Beam search (num_beams other than 1)"),
    # The one tunelab decides: sampled above temperature 0, greedy at 0 (left out: the model's own, see Service.decoding).
    "do_sample": (lambda v, sampled: v is sampled,
                  "do_sample that disagrees with the temperature (0 is greedy, above 0 samples; left out, the model's own)"),
    "stop_token_ids": (lambda v, _: v == [], "stop_token_ids other than []"),
    "include_stop_str_in_output": (lambda v, _: v is False, "include_stop_str_in_output other than false"),
    "skip_special_tokens": (lambda v, _: v is True, "skip_special_tokens other than true"),
    "guided_json": (lambda v, _: False, "Guided decoding (guided_json)"),
    "guided_regex": (lambda v, _: False, "Guided decoding (guided_regex)"),
    "guided_choice": (lambda v, _: False, "Guided decoding (guided_choice)"),
    "guided_grammar": (lambda v, _: False, "Guided decoding (guided_grammar)"),
    "truncate_prompt_tokens": (lambda v, _: False, "truncate_prompt_tokens"),
    "prompt_logprobs": (lambda v, _: False, "prompt_logprobs (completions' echo with logprobs scores a prompt)"),
    # llama.cpp server's and transformers' names for the same kinds of change.
    "repeat_penalty": (lambda v, _: _number(v, 1), "repeat_penalty other than 1"),
    "no_repeat_ngram_size": (lambda v, _: _number(v, 0), "no_repeat_ngram_size other than 0"),
    "mirostat": (lambda v, _: _number(v, 0), "mirostat other than 0"),
    "tfs_z": (lambda v, _: _number(v, 1), "tfs_z other than 1"),
    "bad_words": (lambda v, _: v == [], "bad_words other than []"),
    "allowed_token_ids": (lambda v, _: False, "allowed_token_ids"),
    "structured_outputs": (lambda v, _: False, "Structured outputs (structured_outputs)"),
    "grammar": (lambda v, _: False, "Grammar-constrained decoding (grammar)"),
    "json_schema": (lambda v, _: False, "Schema-constrained decoding (json_schema)"),
    "logits_processors": (lambda v, _: False, "logits_processors"),
}


def _refuse_extensions(body: Any, sampled: bool) -> None:
    """Other servers' sampling fields this request sets to anything but their no-op (``_EXTENSIONS``): refused by name."""
    for name, value in (body.model_extra or {}).items():
        if name in _EXTENSIONS and value is not None:
            no_op, what = _EXTENSIONS[name]
            _refuse(not no_op(value, sampled), name, what)


@router.get("/health")
async def health(request: Request) -> dict:
    registry = _service(request).registry
    return {"status": "ok", "models": registry.names(), "loaded_adapters": registry.loaded_adapters()}


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    service = _service(request)
    return {"object": "list", "data": [service.model_card(name) for name in service.registry.names()]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict:
    return _service(request).model_card(model_id)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    service = _service(request)
    messages = [_turn(m) for m in body.messages]
    log = _log(request, model=body.model, prompt=json.dumps(messages, ensure_ascii=False), stream=int(body.stream))
    entry = service.served(body.model)
    log.update(run_id=entry.run_id)  # a refused request too: it counts in its run's traffic (client errors), never as another model's
    _refuse(body.n != 1, "n", "n other than 1")
    # As OpenAI: alternatives are asked for with the log-probabilities (0, the no-op, passes alone).
    _invalid(bool(body.top_logprobs) and not body.logprobs, "top_logprobs",
             "Invalid value for 'top_logprobs': 'top_logprobs' is only allowed when 'logprobs' is true.")
    # A classify run's out-of-scope answer is a label of no probability of its own: no log-probability to give.
    _refuse(bool(body.logprobs) and entry.out_of_scope is not None, "logprobs", "logprobs for a classify run with an out-of-scope label")
    _refuse(bool(body.tools), "tools", "Tool calling")
    # Tools are refused above, so any tool_choice but the no-op "none" comes without them: as OpenAI, that is a 400.
    _invalid(body.tool_choice not in (None, "none"), "tool_choice", "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.")
    _refuse(bool(body.functions), "functions", "Function calling")
    # The same for the deprecated pair: functions are refused, so any function_call but "none" comes without them.
    _invalid(body.function_call not in (None, "none"), "function_call",
             "Invalid value for 'function_call': 'function_call' is only allowed when 'functions' are specified.")
    # OpenAI refuses the pair (which would win?), even when equal: the newer name is not a second, tighter limit.
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise bad_request(
            "Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported: send one of them.",
            param="max_tokens", code="invalid_parameter_combination",
        )
    _check_messages(body)
    _refuse(any(m != "text" for m in body.modalities or ()), "modalities", "Output other than text (audio)")
    _refuse(body.audio is not None, "audio", "Audio output")
    _refuse_penalties(body)
    # A classify run's answer is its most likely label: never sampled.
    _refuse_extensions(body, sampled=not entry.is_classifier and service.decoding(entry, body).options()["do_sample"])
    _check_stream_options(body)
    kind = body.response_format.get("type") if isinstance(body.response_format, dict) else None
    _refuse(body.response_format is not None and kind != "text", "response_format", f"response_format {kind!r}" if kind else "response_format")
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    log.update(response_id=completion_id)
    created = _now()

    answer: GenerationResult | None = None
    job: Job | None = None
    classification: dict[str, Any] | None = None
    label_logprob: dict[str, Any] | None = None  # a classify answer's, in the chat shape
    top_logprobs = body.top_logprobs or 0
    if entry.is_classifier:
        # A classify model answers with its label: the last user message is the text to classify (its sender's name is not).
        text = next((m.text() for m in reversed(body.messages) if m.role == "user"), None)
        if text is None:
            raise bad_request("A classify model needs a user message with the text to classify.", param="messages")
        (result,) = await service.classify(entry, [text])
        log.update(_prediction_fields([result]))
        answer = GenerationResult(result.label, "stop", result.prompt_tokens, 1)
        classification = _classification(0, result, entry)
        if body.logprobs:
            label_logprob = label_logprobs(result.label, result.probabilities, top_logprobs)
    else:
        prompt_ids = service.render(entry, messages, "messages")
        limit_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        params = service.sampling(entry, body, len(prompt_ids), getattr(body, limit_param), "messages", limit_param)
        if body.logprobs:
            params = replace(params, logprobs=top_logprobs)
        job = service.engine.submit(entry.name, "generate", prompt_ids, params)

    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    render = TokenRenderer(service.tokenizer)

    def logprobs_of(tokens: list | None) -> dict[str, Any] | None:
        if label_logprob is not None:
            return label_logprob
        return chat_logprobs(tokens, render) if tokens is not None else None

    def chunk(delta: dict, finish_reason: str | None, logprobs: dict[str, Any] | None = None) -> dict:
        return {
            "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}], **_usage_key(include_usage),
        }

    if body.stream:
        return sse_answer(
            service.engine, job, log,
            opening=(chunk({"role": "assistant", "content": ""}, None),),
            delta=lambda piece: chunk({"content": piece.text}, None, logprobs_of(piece.logprobs)),
            finish=lambda reason: chunk({}, reason),
            usage=(lambda final: {**chunk({}, None), "choices": [], "usage": _usage(final.prompt_tokens, final.completion_tokens)})
            if include_usage else None,
            answer=answer,
        )

    final = answer if job is None else (await _results(service, request, [job]))[0]
    log.update(output=final.text, prompt_tokens=final.prompt_tokens, completion_tokens=final.completion_tokens)
    response = {
        "id": completion_id, "object": "chat.completion", "created": created, "model": body.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": final.text}, "logprobs": logprobs_of(final.logprobs),
                     "finish_reason": final.finish_reason}],
        "usage": _usage(final.prompt_tokens, final.completion_tokens),
    }
    if classification is not None and entry.out_of_scope is not None:
        # An extra top-level key (OpenAI clients keep unknown fields): why the answer is what it is.
        response["classification"] = {key: value for key, value in classification.items() if key != "index"}
    return response


def _logged_prompts(prompts: list[str | list[int]]) -> str:
    """A completions request's prompts as the log keeps them (``request_log.request_texts`` reads them back): one text as
    itself, else the list, one item per prompt (one prompt's token ids, before they are decoded, as a list of one)."""
    if len(prompts) == 1 and isinstance(prompts[0], str):
        return json.dumps(prompts[0], ensure_ascii=False)
    return json.dumps(prompts if prompts else "", ensure_ascii=False)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Any:
    service = _service(request)
    prompts = body.prompts()
    log = _log(request, model=body.model, prompt=_logged_prompts(prompts), stream=int(body.stream))
    entry = service.served(body.model)
    log.update(run_id=entry.run_id)  # a refused request too (see chat_completions)
    _refuse(body.n != 1, "n", "n other than 1")
    # max_tokens 0 asks for no answer: only a prompt scored (echo, what lm-evaluation-harness sends) makes it a request.
    _invalid(body.max_tokens == 0 and not body.echo, "max_tokens",
             "Invalid value for 'max_tokens': 0. It must be at least 1 (0 only with 'echo': the prompt scored, nothing generated).")
    _refuse(body.best_of not in (None, 1), "best_of", "best_of other than 1")
    _refuse(bool(body.suffix), "suffix", "suffix")
    _refuse_penalties(body)
    _refuse_extensions(body, sampled=service.decoding(entry, body).options()["do_sample"])
    _check_stream_options(body)
    if not prompts or len(prompts) > MAX_PROMPTS_PER_REQUEST:
        raise bad_request(
            f"'prompt' must be a string, token ids, or a list of 1 to {MAX_PROMPTS_PER_REQUEST} strings or lists of token ids.", param="prompt"
        )
    if body.stream and len(prompts) != 1:
        raise bad_request("Streaming supports one prompt per request.", param="prompt")
    if entry.is_classifier:
        raise bad_request(f"'{entry.name}' is a classify model: use /v1/classify or /v1/chat/completions.", param="model")
    encoded = []
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            # An echoed prompt is scored whole, never cut to the run's max_length: a client counts positions in it
            # (lm-evaluation-harness reads token_logprobs[ctxlen:-1]), and a cut start shifted every one it read.
            ids = service.encode_text(entry, prompt, "prompt", shorten=not body.echo)
        else:
            # Named as sent: 'prompt' holds one prompt's ids, or a batch ('prompt.N' its Nth).
            ids = service.token_prompt(prompt, "prompt" if prompts == [body.prompt] else f"prompt.{index}")
        if not ids:
            raise bad_request("The prompt is empty.", param="prompt")
        # Left out: OpenAI's 16 for a completion, unless the model has its own (a run's judged length; a plain folder's
        # generation_config): a run and its merged export then complete a prompt alike, at the length that was judged.
        params = service.sampling(entry, body, len(ids), body.max_tokens, "prompt", left_out=16)
        if body.logprobs is not None:
            params = replace(params, logprobs=body.logprobs, echo=body.echo, distinct_texts=True)
        encoded.append((ids, params))
    if any(not isinstance(prompt, str) for prompt in prompts):
        # The log's prompts are text (monitoring and feedback read them as inputs): token ids as the text the model read.
        log.update(prompt=_logged_prompts([
            prompt if isinstance(prompt, str) else service.tokenizer.decode(prompt, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            for prompt in prompts
        ]))
    jobs = service.engine.submit_all(entry.name, "generate", encoded)
    render = TokenRenderer(service.tokenizer)
    # An echo returns the prompt as its tokens read (the decoded prompt ids: what was scored, whole).
    echoed = [
        service.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) if body.echo else ""
        for ids, _ in encoded
    ]
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    log.update(response_id=completion_id)
    created = _now()

    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)

    def chunk(text: str, finish_reason: str | None, index: int = 0, logprobs: dict[str, Any] | None = None) -> dict:
        return {
            "id": completion_id, "object": "text_completion", "created": created, "model": body.model,
            "choices": [{"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}], **_usage_key(include_usage),
        }

    def piece(delta: Delta) -> dict:
        if delta.prompt:  # the echoed prompt, first
            return chunk(echoed[0], None, logprobs=completion_logprobs(delta.logprobs or [], render) if body.logprobs is not None else None)
        logprobs = completion_logprobs(delta.logprobs, render, len(echoed[0])) if delta.logprobs is not None else None
        return chunk(delta.text, None, logprobs=logprobs)

    def logprobs_of(result: GenerationResult, index: int) -> dict[str, Any] | None:
        if body.logprobs is None:
            return None
        answer = completion_logprobs(result.logprobs or [], render, len(echoed[index]))
        return join_completion_logprobs([completion_logprobs(result.prompt_logprobs, render), answer]) if result.prompt_logprobs else answer

    if body.stream:
        if body.echo and body.logprobs is None:
            opening: tuple[dict, ...] = (chunk(echoed[0], None),)  # no prompt scored: the engine sends no prompt piece
        else:
            opening = ()
        return sse_answer(
            service.engine, jobs[0], log,
            opening=opening,
            delta=piece,
            finish=lambda reason: chunk("", reason),
            usage=(lambda final: {**chunk("", None), "choices": [], "usage": _usage(final.prompt_tokens, final.completion_tokens)})
            if include_usage else None,
        )

    results: list[GenerationResult] = await _results(service, request, jobs)
    prompt_tokens = sum(r.prompt_tokens for r in results)
    completion_tokens = sum(r.completion_tokens for r in results)
    outputs = [r.text for r in results]
    log.update(output=json.dumps(outputs, ensure_ascii=False) if len(outputs) > 1 else outputs[0], prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    return {
        "id": completion_id, "object": "text_completion", "created": created, "model": body.model,
        "choices": [
            {"text": echoed[i] + r.text, "index": i, "logprobs": logprobs_of(r, i), "finish_reason": r.finish_reason}
            for i, r in enumerate(results)
        ],
        "usage": _usage(prompt_tokens, completion_tokens),
    }


def _classification(index: int, result: ClassifyResult, entry: ServedModel) -> dict[str, Any]:
    item: dict[str, Any] = {"index": index, "label": result.label, "probabilities": result.probabilities}
    if entry.out_of_scope is not None:
        # Say why the answer is (or is not) the out-of-scope label: the top label, its probability, the score the
        # threshold applies to (the top probability, or the similarity to the nearest training request) and the threshold.
        item.update(
            top_label=result.top_label, confidence=result.confidence, out_of_scope=result.out_of_scope,
            out_of_scope_score=result.out_of_scope_score, out_of_scope_score_kind=entry.out_of_scope.score,
            out_of_scope_threshold=entry.out_of_scope.threshold,
        )
    return item


@router.post("/v1/classify")
async def classify(body: ClassifyRequest, request: Request) -> Any:
    service = _service(request)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    log = _log(request, model=body.model, prompt=json.dumps(texts if len(texts) > 1 else texts[0] if texts else "", ensure_ascii=False))
    entry = service.served(body.model)
    log.update(run_id=entry.run_id)  # a refused request too (see chat_completions)
    if not entry.is_classifier:
        raise bad_request(f"'{entry.name}' is not a classify model (it has no labels.json).", param="model")
    if not texts or len(texts) > MAX_PROMPTS_PER_REQUEST:
        raise bad_request(f"'input' must be a string or a list of 1 to {MAX_PROMPTS_PER_REQUEST} strings.", param="input")
    response_id = f"clf-{uuid.uuid4().hex}"
    log.update(response_id=response_id)
    results = await service.classify(entry, texts)
    prompt_tokens = sum(r.prompt_tokens for r in results)
    labels = [r.label for r in results]
    log.update(output=json.dumps(labels) if len(labels) > 1 else labels[0], prompt_tokens=prompt_tokens, completion_tokens=len(results))
    log.update(_prediction_fields(results))
    return {
        "id": response_id, "object": "classification", "created": _now(), "model": body.model,
        "data": [_classification(i, r, entry) for i, r in enumerate(results)],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


@router.post("/v1/feedback")
async def feedback(body: FeedbackRequest, request: Request) -> Any:
    """Store the correct answer next to a logged response (same auth as every endpoint)."""
    from tunelab.errors import DataError
    from tunelab.serve.request_log import (
        FeedbackItemError,
        FeedbackKindError,
        add_feedback,
        feedback_from_dict,
    )

    log = request.app.state.request_log
    if log is None:
        raise APIError(409, "This server keeps no request log (--no-log), so it cannot take feedback.", code="no_request_log")
    try:
        item = feedback_from_dict(body.model_dump(exclude_none=True), "feedback")
    except DataError as error:
        raise bad_request(error.message) from None
    _log(request, response_id=None, prompt=json.dumps(body.model_dump(exclude_none=True), ensure_ascii=False))
    # The response's own log row may still be queued: write the queue out before looking it up.
    await asyncio.to_thread(log.flush)
    try:
        (feedback_id,) = await asyncio.to_thread(add_feedback, log.path, [item], source="api")
    except FeedbackItemError as error:
        raise bad_request(error.message, param="index") from None
    except FeedbackKindError as error:
        raise bad_request(error.message, param="label") from None
    except DataError:
        # Not the library's message: it names the log file, and a client has no business knowing server paths.
        raise APIError(
            404, f"No response with id '{item.response_id}' was logged by this server.", param="id", code="response_not_found"
        ) from None
    return {"id": feedback_id, "object": "feedback", "created": _now(), "response_id": item.response_id, "index": item.item}
