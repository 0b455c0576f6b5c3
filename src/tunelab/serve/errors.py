"""Errors the HTTP API answers with, in the OpenAI shape ``{"error": {message, type, param, code}}``.

Clients (the official ``openai`` package among them) map the status code to an exception class and
read ``error.message``; keeping the shape identical is what lets them work unchanged.
"""

from __future__ import annotations

from typing import Any

from tunelab.errors import TunelabError


class ServeError(TunelabError):
    """A serving set-up the user can fix (bad host/key combination, unusable adapter)."""


class APIError(Exception):
    """One request failed; ``status`` is the HTTP status code the client gets."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - the OpenAI field is called "type"
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers  # sent with the error (a 429's Retry-After)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:  # noqa: A002
    # A message may quote the request (a model name): a lone surrogate is valid JSON but not UTF-8, and would make the
    # error response itself fail to encode (a 500 instead of this error).
    message = message.encode("utf-8", "replace").decode("utf-8")
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(name: str) -> APIError:
    return APIError(
        404, f"The model '{name}' does not exist or is not served here (see GET /v1/models).", param="model",
        code="model_not_found",
    )


# A server that is shutting down is usually being restarted (a new version, other models): it answers again once
# the models are loaded, seconds later. Retry-After says when to come back (as the overloaded 429's does), where the
# openai client would otherwise guess with its own short backoff.
SHUTDOWN_RETRY_AFTER_S = 5


def shutting_down() -> APIError:
    """A request the server took no more work for (it finishes what it holds, then stops): come back shortly."""
    return APIError(
        503, "The server is shutting down. Please retry shortly.", type="server_error", code="shutting_down",
        headers={"retry-after": str(SHUTDOWN_RETRY_AFTER_S)},
    )
