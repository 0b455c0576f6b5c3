"""The FastAPI app: OpenAI-compatible endpoints over a ModelRegistry, computed by the batching Engine.

Endpoints: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``,
``POST /v1/completions``, ``POST /v1/classify``, ``GET /health``. Every error is answered in the
OpenAI shape with a 4xx code for anything a client can get wrong; a 5xx means a tunelab bug.

One ASGI middleware sits in front of everything: it checks the API key (constant-time compare),
refuses bodies over the size limit before they are read in full, and, once the response's last
byte is sent, hands the request's log entry to the background request log.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.data.templates import classify_messages, render_prompt_ids
from tunelab.serve.adapters import ModelRegistry, ServedModel
from tunelab.serve.engine import ClassifyResult, Engine, GenerationResult, SamplingParams
from tunelab.serve.errors import APIError, bad_request, error_body, model_not_found
from tunelab.serve.request_log import RequestLog
from tunelab.serve.schemas import (
    MAX_PROMPTS_PER_REQUEST,
    MAX_STOP_SEQUENCES,
    ChatCompletionRequest,
    ClassifyRequest,
    CompletionRequest,
)

LOG_KEY = "tunelab.log"


@dataclass
class ServeSettings:
    """Limits and switches of one server (the CLI fills them from its options)."""

    api_key: str | None = None
    max_tokens_limit: int = 512
    max_body_bytes: int = 1_000_000
    max_batch_size: int = 8
    batch_window_ms: float = 10.0
    log_path: Path | None = None  # None: no request log


# ---------------------------------------------------------------------------------------------
# The gatekeeper middleware: auth, body size, request log.
# ---------------------------------------------------------------------------------------------
async def _send_json(send: Any, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


class _BodyTooLarge(Exception):
    pass


class Gatekeeper:
    """Pure ASGI middleware (it must not buffer streamed responses)."""

    def __init__(self, app: Any, settings: ServeSettings, request_log: RequestLog | None) -> None:
        self.app = app
        self.settings = settings
        self.request_log = request_log
        self.expected = f"Bearer {settings.api_key}".encode() if settings.api_key else None

    def _authorized(self, scope: dict) -> bool:
        if self.expected is None:
            return True
        given = next((value for name, value in scope.get("headers", []) if name == b"authorization"), b"")
        return hmac.compare_digest(given, self.expected)

    async def _bounded_receive(self, scope: dict, receive: Any) -> Any:
        limit = self.settings.max_body_bytes
        length = next((value for name, value in scope.get("headers", []) if name == b"content-length"), None)
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise APIError(400, "The Content-Length header is not a number.") from None
            if declared > limit:
                raise _BodyTooLarge
            return receive
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return receive
        # No declared length (chunked upload): read it here, up to the limit, then replay it.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return receive
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                raise _BodyTooLarge
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return replay

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"), "endpoint": scope.get("path", ""), "stream": 0,
        }
        scope[LOG_KEY] = entry
        logged = False

        def write_log(status: int) -> None:
            nonlocal logged
            if logged or self.request_log is None:
                return
            logged = True
            entry["status"] = status
            entry["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
            self.request_log.record(entry)

        status_seen = 500

        async def logging_send(message: dict) -> None:
            nonlocal status_seen
            if message["type"] == "http.response.start":
                status_seen = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                write_log(status_seen)

        if not self._authorized(scope):
            entry["error"] = "invalid api key"
            await _send_json(
                logging_send,
                401,
                error_body("Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.", type="invalid_request_error", code="invalid_api_key"),
            )
            return
        try:
            receive = await self._bounded_receive(scope, receive)
        except _BodyTooLarge:
            entry["error"] = "body too large"
            await _send_json(
                logging_send,
                413,
                error_body(f"The request body is larger than this server's limit of {self.settings.max_body_bytes} bytes.", type="invalid_request_error", code="request_too_large"),
            )
            return
        except APIError as error:
            entry["error"] = error.message
            await _send_json(logging_send, error.status, error.body())
            return
        try:
            await self.app(scope, receive, logging_send)
        except Exception:
            write_log(500)
            raise
        finally:
            if not logged:
                # The client went away before the last byte: still one log row per request.
                entry.setdefault("error", "client disconnected")
                write_log(499 if status_seen == 500 else status_seen)


# ---------------------------------------------------------------------------------------------
# Helpers of the endpoints.
# ---------------------------------------------------------------------------------------------
def _validation_message(errors: list[dict]) -> tuple[str, str | None]:
    first = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid request"}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return "We could not parse the JSON body of your request: it is not valid JSON.", None
    if kind == "model_attributes_type" and not location:
        return "The request body must be a JSON object, sent with 'Content-Type: application/json'.", None
    if kind == "missing":
        return f"Missing required parameter: '{param}'.", param
    where = f"'{param}'" if param else "the request body"
    return f"Invalid value for {where}: {first.get('msg', 'invalid')}.", param


def _now() -> int:
    return int(time.time())


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def create_app(registry: ModelRegistry, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app serving ``registry``; the engine and the request log start with it.

    ``app.state.engine`` and ``app.state.request_log`` are exposed for tests and metrics.
    """
    settings = settings or ServeSettings()
    engine = Engine(registry, max_batch_size=settings.max_batch_size, batch_window_ms=settings.batch_window_ms)
    request_log = RequestLog(settings.log_path) if settings.log_path else None
    tokenizer = registry.tokenizer

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            # uvicorn has already let in-flight requests finish; drain the engine, flush the log.
            engine.stop()
            if request_log is not None:
                request_log.close()

    app = FastAPI(title="tunelab serve", version="1", lifespan=lifespan)
    app.state.engine = engine
    app.state.request_log = request_log
    app.state.registry = registry
    app.state.settings = settings
    app.add_middleware(Gatekeeper, settings=settings, request_log=request_log)

    # -- errors in the OpenAI shape ----------------------------------------------------------------
    def _error_response(request: Request, status: int, body: dict) -> JSONResponse:
        entry = request.scope.get(LOG_KEY)
        if entry is not None:
            entry["error"] = body["error"]["message"]
        return JSONResponse(body, status_code=status)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, error: APIError) -> JSONResponse:
        return _error_response(request, error.status, error.body())

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(list(error.errors()))
        return _error_response(request, 400, error_body(message, type="invalid_request_error", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = {404: f"Unknown URL: {request.method} {request.url.path}", 405: f"Method {request.method} is not allowed on {request.url.path}"}.get(error.status_code, str(error.detail))
        kind = "invalid_request_error" if error.status_code < 500 else "server_error"
        return _error_response(request, error.status_code, error_body(message, type=kind))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"Internal server error: {type(error).__name__}", type="server_error"), status_code=500)

    # -- request handling ------------------------------------------------------------------------
    def served(name: str) -> ServedModel:
        entry = registry.get(name)
        if entry is None:
            raise model_not_found(name)
        return entry

    def log_entry(request: Request, **fields: Any) -> dict:
        entry = request.scope.setdefault(LOG_KEY, {})
        entry.update(fields)
        return entry

    def encode_text(text: str, param: str) -> list[int]:
        try:
            return list(tokenizer(text, add_special_tokens=True)["input_ids"])
        except Exception as error:  # noqa: BLE001 - e.g. lone surrogates the tokenizer cannot encode
            raise bad_request(f"'{param}' cannot be tokenized: {error}", param=param) from None

    def render(messages: list[dict], param: str) -> list[int]:
        try:
            return render_prompt_ids(tokenizer, messages)
        except Exception as error:  # noqa: BLE001 - the chat template (Jinja) rejects some conversations
            raise bad_request(f"The model's chat template cannot render these messages: {error}", param=param) from None

    def check_context(prompt_tokens: int, param: str) -> None:
        context = registry.context_length
        if prompt_tokens >= context:
            raise bad_request(
                f"This model's maximum context length is {context} tokens. However, your {param} has {prompt_tokens} tokens. "
                "Please shorten it.",
                param=param,
                code="context_length_exceeded",
            )

    def sampling(body: Any, prompt_tokens: int, requested: int | None, param: str) -> SamplingParams:
        check_context(prompt_tokens, param)
        limit = settings.max_tokens_limit
        if requested is not None and requested > limit:
            raise bad_request(
                f"max_tokens is too large: {requested}. This server answers with at most {limit} tokens.",
                param="max_tokens",
                code="invalid_value",
            )
        context = registry.context_length
        max_tokens = requested if requested is not None else min(limit, context - prompt_tokens)
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
            raise bad_request(f"At most {MAX_STOP_SEQUENCES} stop sequences are allowed.", param="stop")
        return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, stop=tuple(stops))

    def refuse(condition: bool, param: str, what: str) -> None:
        if condition:
            raise bad_request(f"{what} is not supported by this server.", param=param, code="unsupported_parameter")

    async def classify_prompts(entry: ServedModel, texts: list[str]) -> list[ClassifyResult]:
        jobs = []
        for text in texts:
            ids = render(classify_messages(text, entry.system_prompt), "input")
            check_context(len(ids), "input")
            jobs.append(ids)
        submitted = [engine.submit(entry.name, "classify", ids) for ids in jobs]
        return [await engine.result(job) for job in submitted]

    # -- endpoints ---------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": registry.names(), "loaded_adapters": registry.loaded_adapters()}

    def model_card(name: str) -> dict:
        entry = served(name)
        card = {"id": name, "object": "model", "created": 0, "owned_by": "tunelab", "kind": entry.kind, "task": entry.task}
        if entry.kind == "adapter":
            card["parent"] = registry.base_name
        return card

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card(name) for name in registry.names()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        return model_card(model_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        entry_log = log_entry(request, model=body.model, prompt=json.dumps(messages, ensure_ascii=False), stream=int(body.stream))
        entry = served(body.model)
        refuse(body.n != 1, "n", "n other than 1")
        refuse(bool(body.logprobs), "logprobs", "logprobs")
        refuse(bool(body.tools), "tools", "Tool calling")
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = _now()

        if entry.is_classifier:
            # A classify model answers with its label: the last user message is the text to classify.
            text = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
            if text is None:
                raise bad_request("A classify model needs a user message with the text to classify.", param="messages")
            (result,) = await classify_prompts(entry, [text])
            answer = GenerationResult(result.label, "stop", result.prompt_tokens, 1)
            job = None
        else:
            prompt_ids = render(messages, "messages")
            params = sampling(body, len(prompt_ids), body.max_completion_tokens or body.max_tokens, "messages")
            job = engine.submit(entry.name, "generate", prompt_ids, params)
            answer = None

        def chunk(delta: dict, finish_reason: str | None) -> dict:
            return {
                "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        if body.stream:
            async def events() -> AsyncIterator[str]:
                yield _sse(chunk({"role": "assistant", "content": ""}, None))
                final: GenerationResult | None = answer
                if job is not None:
                    async for kind, payload in engine.stream(job):
                        if kind == "delta":
                            yield _sse(chunk({"content": payload}, None))
                        elif kind == "done":
                            final = payload
                        else:
                            entry_log["error"] = getattr(payload, "message", str(payload))
                            yield _sse(payload.body() if isinstance(payload, APIError) else error_body(str(payload), type="server_error"))
                            return
                elif final is not None:
                    yield _sse(chunk({"content": final.text}, None))
                assert final is not None
                entry_log.update(output=final.text, prompt_tokens=final.prompt_tokens, completion_tokens=final.completion_tokens)
                yield _sse(chunk({}, final.finish_reason))
                if include_usage:
                    yield _sse({**chunk({}, None), "choices": [], "usage": _usage(final.prompt_tokens, final.completion_tokens)})
                yield _sse("[DONE]")

            return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

        final = answer if job is None else await engine.result(job)
        entry_log.update(output=final.text, prompt_tokens=final.prompt_tokens, completion_tokens=final.completion_tokens)
        return {
            "id": completion_id, "object": "chat.completion", "created": created, "model": body.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": final.text}, "logprobs": None, "finish_reason": final.finish_reason}],
            "usage": _usage(final.prompt_tokens, final.completion_tokens),
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        entry_log = log_entry(request, model=body.model, prompt=json.dumps(prompts if len(prompts) > 1 else prompts[0] if prompts else "", ensure_ascii=False), stream=int(body.stream))
        entry = served(body.model)
        refuse(body.n != 1, "n", "n other than 1")
        refuse(body.echo, "echo", "echo")
        refuse(body.logprobs is not None, "logprobs", "logprobs")
        refuse(body.best_of not in (None, 1), "best_of", "best_of other than 1")
        refuse(bool(body.suffix), "suffix", "suffix")
        if not prompts or len(prompts) > MAX_PROMPTS_PER_REQUEST:
            raise bad_request(f"'prompt' must be a string or a list of 1 to {MAX_PROMPTS_PER_REQUEST} strings.", param="prompt")
        if body.stream and len(prompts) != 1:
            raise bad_request("Streaming supports one prompt per request.", param="prompt")
        if entry.is_classifier:
            raise bad_request(f"'{entry.name}' is a classify model: use /v1/classify or /v1/chat/completions.", param="model")
        encoded = []
        for prompt in prompts:
            ids = encode_text(prompt, "prompt")
            if not ids:
                if tokenizer.bos_token_id is None:
                    raise bad_request("The prompt is empty.", param="prompt")
                ids = [tokenizer.bos_token_id]
            requested = body.max_tokens if body.max_tokens is not None else min(16, settings.max_tokens_limit)
            encoded.append((ids, sampling(body, len(ids), requested, "prompt")))
        jobs = [engine.submit(entry.name, "generate", ids, params) for ids, params in encoded]
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        created = _now()

        def chunk(text: str, finish_reason: str | None, index: int = 0) -> dict:
            return {
                "id": completion_id, "object": "text_completion", "created": created, "model": body.model,
                "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}],
            }

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def events() -> AsyncIterator[str]:
                final: GenerationResult | None = None
                async for kind, payload in engine.stream(jobs[0]):
                    if kind == "delta":
                        yield _sse(chunk(payload, None))
                    elif kind == "done":
                        final = payload
                    else:
                        entry_log["error"] = getattr(payload, "message", str(payload))
                        yield _sse(payload.body() if isinstance(payload, APIError) else error_body(str(payload), type="server_error"))
                        return
                assert final is not None
                entry_log.update(output=final.text, prompt_tokens=final.prompt_tokens, completion_tokens=final.completion_tokens)
                yield _sse(chunk("", final.finish_reason))
                if include_usage:
                    yield _sse({**chunk("", None), "choices": [], "usage": _usage(final.prompt_tokens, final.completion_tokens)})
                yield _sse("[DONE]")

            return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

        results: list[GenerationResult] = [await engine.result(job) for job in jobs]
        prompt_tokens = sum(r.prompt_tokens for r in results)
        completion_tokens = sum(r.completion_tokens for r in results)
        outputs = [r.text for r in results]
        entry_log.update(output=json.dumps(outputs, ensure_ascii=False) if len(outputs) > 1 else outputs[0], prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        return {
            "id": completion_id, "object": "text_completion", "created": created, "model": body.model,
            "choices": [{"text": r.text, "index": i, "logprobs": None, "finish_reason": r.finish_reason} for i, r in enumerate(results)],
            "usage": _usage(prompt_tokens, completion_tokens),
        }

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest, request: Request) -> Any:
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        entry_log = log_entry(request, model=body.model, prompt=json.dumps(texts if len(texts) > 1 else texts[0] if texts else "", ensure_ascii=False))
        entry = served(body.model)
        if not entry.is_classifier:
            raise bad_request(f"'{entry.name}' is not a classify model (it has no labels.json).", param="model")
        if not texts or len(texts) > MAX_PROMPTS_PER_REQUEST:
            raise bad_request(f"'input' must be a string or a list of 1 to {MAX_PROMPTS_PER_REQUEST} strings.", param="input")
        results = await classify_prompts(entry, texts)
        prompt_tokens = sum(r.prompt_tokens for r in results)
        labels = [r.label for r in results]
        entry_log.update(output=json.dumps(labels) if len(labels) > 1 else labels[0], prompt_tokens=prompt_tokens, completion_tokens=len(results))
        return {
            "id": f"clf-{uuid.uuid4().hex}", "object": "classification", "created": _now(), "model": body.model,
            "data": [{"index": i, "label": r.label, "probabilities": r.probabilities} for i, r in enumerate(results)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }

    return app
