"""The gatekeeper in front of every endpoint: Host guard, API key (constant-time compare), body size limit, request log.

Bound to loopback, a request must name this machine in its Host header (``settings.host_allowed``, the
same guard as ``tunelab ui``): without it a web page could rebind its DNS name to 127.0.0.1 and, from
the user's own browser, call the models and write ``/v1/feedback`` (which feeds ``tunelab retrain``).

A pure ASGI middleware (it must not buffer streamed responses): it refuses bodies over the size
limit before they are read in full, and once the response's last byte is sent hands the request's
log entry to the background request log.
"""

from __future__ import annotations

import hmac
import json
import time
from datetime import UTC, datetime
from typing import Any

from tunelab.serve.errors import APIError, error_body
from tunelab.serve.request_log import RequestLog
from tunelab.serve.settings import ServeSettings, host_allowed

LOG_KEY = "tunelab.log"  # where a request's log entry lives in the ASGI scope


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
        self.expected = settings.api_key.encode() if settings.api_key else None

    def _authorized(self, scope: dict) -> bool:
        if self.expected is None:
            return True
        given = next((value for name, value in scope.get("headers", []) if name == b"authorization"), b"")
        scheme, _, token = given.strip().partition(b" ")
        # The scheme is case-insensitive (RFC 9110): "bearer KEY" is as good as "Bearer KEY".
        valid_scheme = scheme.lower() == b"bearer"
        return hmac.compare_digest(token.strip(), self.expected) and valid_scheme

    def _host_allowed(self, scope: dict) -> bool:
        host = next((value for name, value in scope.get("headers", []) if name == b"host"), b"")
        return host_allowed(host.decode("latin-1"), self.settings.host)

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

        if not self._host_allowed(scope):
            entry["error"] = "host not allowed"
            await _send_json(
                logging_send,
                421,
                error_body(
                    "This server does not answer for this host name (it is bound to this machine only).",
                    type="invalid_request_error", code="host_not_allowed",
                ),
            )
            return
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
