"""The FastAPI app: OpenAI-compatible endpoints over a ModelRegistry, computed by the batching Engine.

``create_app`` only assembles: the engine and the request log (started and stopped with the app),
the gatekeeper middleware (``middleware.py``), error handlers that answer in the OpenAI shape (a
4xx for anything a client can get wrong; a 5xx means a tunelab bug), and the endpoints
(``routes.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.serve.adapters import ModelRegistry
from tunelab.serve.engine import Engine
from tunelab.serve.errors import APIError, error_body, model_not_found
from tunelab.serve.middleware import LOG_KEY, Gatekeeper
from tunelab.serve.request_log import SERVING_ENDPOINTS, RequestLog
from tunelab.serve.routes import Service, router
from tunelab.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]

logger = logging.getLogger("tunelab.serve")


async def _follow_aliases(registry: ModelRegistry, every_s: float) -> None:
    """Poll the registry for promotions of the aliases some names follow (off the event loop)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            moves, failures = await asyncio.to_thread(registry.refresh_aliases)
        except Exception:  # noqa: BLE001 - a registry that cannot be read must not stop serving the current runs
            logger.exception("could not follow the aliases; still serving the runs loaded before")
            continue
        for name, old, new in moves:
            logger.info("'%s' now served by run %s (was %s)", name, new, old)
        for failure in failures:
            logger.warning("could not follow an alias: %s", failure)


def _union_branch(part: object) -> bool:
    """A location part pydantic adds for one alternative of a union ('str', 'list[TextPart]', 'function-after[...]'),
    never a field of the request (OpenAI's fields are lower-case words)."""
    return isinstance(part, str) and (part in {"str", "int", "float", "bool", "dict", "list", "none"} or "[" in part or part[:1].isupper())


def _where(error: dict) -> list[str]:
    return [str(part) for part in error.get("loc", ()) if part != "body" and not _union_branch(part)]


def _validation_message(errors: list[dict]) -> tuple[str, str | None]:
    first = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid request"}
    messages = [first.get("msg", "invalid")]
    loc = tuple(first.get("loc", ()))
    cut = next((i for i, part in enumerate(loc) if _union_branch(part)), None)
    if cut is not None:
        # A union ('content': a string or a list of parts): each alternative failed in its own way. The one that got
        # deepest into the value says what is wrong ('messages.0.content.0.text' is missing); alternatives that failed
        # at the same depth are listed ("a valid string or a valid list"). Their branch names never reach the client.
        alternatives = [e for e in errors if tuple(e.get("loc", ()))[:cut] == loc[:cut] and len(e.get("loc", ())) > cut
                        and _union_branch(e["loc"][cut])]
        depth = max(len(_where(e)) for e in alternatives)
        deepest = [e for e in alternatives if len(_where(e)) == depth]
        first = deepest[0]
        messages = list(dict.fromkeys(e.get("msg", "invalid") for e in deepest))
    location = _where(first)
    kind = first.get("type", "")
    if kind == "unsupported_content_part":
        location += [str(first.get("ctx", {}).get("index", 0)), "type"]
    if kind == "invalid_prompt":  # a completions prompt's item: its index (and the token's, in a batch of token ids)
        location += [part for part in first.get("ctx", {}).get("at", "").split(".") if part]
    param = ".".join(location) or None
    if kind == "json_invalid":
        return "We could not parse the JSON body of your request: it is not valid JSON.", None
    if kind == "model_attributes_type" and not location:
        return "The request body must be a JSON object, sent with 'Content-Type: application/json'.", None
    if kind == "missing" and not location:
        return "The request body is empty: send a JSON object, with 'Content-Type: application/json'.", None
    if kind == "missing":
        return f"Missing required parameter: '{param}'.", param
    text = messages[0].removeprefix("Value error, ")
    text += "".join(" or " + other.removeprefix("Input should be ") for other in messages[1:])
    where = f"'{param}'" if param else "the request body"
    return f"Invalid value for {where}: {text}.", param


# -- errors in the OpenAI shape ------------------------------------------------------------------
def _error_response(request: Request, status: int, body: dict, headers: dict[str, str] | None = None) -> JSONResponse:
    entry = request.scope.get(LOG_KEY)
    if entry is not None:
        entry["error"] = body["error"]["message"]
    return JSONResponse(body, status_code=status, headers=headers)


async def _on_api_error(request: Request, error: APIError) -> JSONResponse:
    return _error_response(request, error.status, error.body(), error.headers)


async def _on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    message, param = _validation_message(list(error.errors()))
    body = error.body if isinstance(error.body, dict) else {}
    name = body.get("model")
    if request.url.path in SERVING_ENDPOINTS and isinstance(name, str):
        served = request.app.state.registry.get(name)
        entry = request.scope.get(LOG_KEY)
        if entry is not None:
            # Refused before a route could log it: it still counts where a route's own refusal does.
            entry.update(model=name, run_id=served.run_id if served is not None else None)
        if served is None:
            # The model first, as every route checks it: a name not served is a 404 whatever else the body has wrong, so
            # monitoring counts it once, among the names not served, and never as a served model's client error.
            return _error_response(request, 404, model_not_found(name).body())
    return _error_response(request, 400, error_body(message, type="invalid_request_error", param=param))


async def _on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    message = {404: f"Unknown URL: {request.method} {request.url.path}", 405: f"Method {request.method} is not allowed on {request.url.path}"}.get(error.status_code, str(error.detail))
    kind = "invalid_request_error" if error.status_code < 500 else "server_error"
    return _error_response(request, error.status_code, error_body(message, type=kind))


async def _on_unexpected(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse(error_body(f"Internal server error: {type(error).__name__}", type="server_error"), status_code=500)


def create_app(registry: ModelRegistry, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app serving ``registry``; the engine and the request log start with it.

    ``app.state.engine`` and ``app.state.request_log`` are exposed for tests and metrics.
    """
    settings = settings or ServeSettings()
    engine = Engine(
        registry, max_batch_size=settings.max_batch_size, batch_window_ms=settings.batch_window_ms, max_waiting=settings.max_waiting_requests
    )
    request_log = RequestLog(settings.log_path) if settings.log_path else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        follower = asyncio.create_task(_follow_aliases(registry, settings.alias_poll_s)) if registry.follows_aliases else None
        try:
            yield
        finally:
            if follower is not None:
                follower.cancel()
            # uvicorn has already let in-flight requests finish; drain the engine, flush the log.
            engine.stop()
            if request_log is not None:
                request_log.close()

    app = FastAPI(title="tunelab serve", version="1", lifespan=lifespan)
    app.state.engine = engine
    app.state.request_log = request_log
    app.state.registry = registry
    app.state.settings = settings
    app.state.service = Service(registry, engine, settings)
    app.add_middleware(Gatekeeper, settings=settings, request_log=request_log)

    app.add_exception_handler(APIError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.include_router(router)
    return app
