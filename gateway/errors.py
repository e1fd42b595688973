"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Exception tree:

    OpenAIError                 any error the gateway answers itself
    ├── InvalidRequest          400 invalid_request_error (bad body, bad parameter)
    ├── ModelNotFound           404 invalid_request_error, code model_not_found
    ├── NotFound                404 not_found_error (no such route or object)
    ├── MethodNotAllowed        405 invalid_request_error
    ├── Unauthorized            401 authentication_error (missing or unknown API key)
    ├── TooLarge                413 invalid_request_error: a body over the limit
    ├── ShuttingDown            503 server_error: cancelled by the server's shutdown
    └── UpstreamError           an upstream's refusal (its 4xx/429 passed on) or failure
                                (502 bad answer, 503 unreachable, 504 timed out)

The SDK maps the status code to its exception class (400 BadRequestError, 404
NotFoundError, ...), so the status matters as much as the body. `error_body` is the
one place an error becomes bytes; the HTTP edge writes every error through it.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from gateway.schemas import ErrorBody, ErrorResponse

SERVER_ERROR_MESSAGE = "The server had an error while processing your request."

_encoder = msgspec.json.Encoder()


class OpenAIError(Exception):
    status_code = 500
    error_type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}  # sent with the error (an upstream's Retry-After...)


class InvalidRequest(OpenAIError):
    status_code = 400
    error_type = "invalid_request_error"


class ModelNotFound(OpenAIError):
    status_code = 404
    error_type = "invalid_request_error"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )


class NotFound(OpenAIError):
    status_code = 404
    error_type = "invalid_request_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="not_found")


class MethodNotAllowed(OpenAIError):
    status_code = 405
    error_type = "invalid_request_error"

    def __init__(self, method: str, path: str) -> None:
        super().__init__(f"{method} is not allowed on {path}.", code="method_not_allowed")


class TooLarge(OpenAIError):
    status_code = 413
    error_type = "invalid_request_error"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The request body is larger than this server accepts ({limit} bytes).",
            code="request_too_large",
            headers={"connection": "close"},  # the rest of the body is not read
        )


class ShuttingDown(OpenAIError):
    status_code = 503
    error_type = "server_error"

    def __init__(self) -> None:
        super().__init__(
            "The server is shutting down; send the request again.",
            code="server_shutting_down",
            headers={"retry-after": "1"},
        )


class Unauthorized(OpenAIError):
    status_code = 401
    error_type = "authentication_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_api_key")


class UpstreamError(OpenAIError):
    """An upstream failed or refused. status_code: what the client gets (the upstream's
    own 4xx/429 pass through, its 5xx and connection failures become 502/503/504);
    upstream_status: what the upstream said (None: no answer at all), which retry and
    circuit-breaking decisions read; retry_after: its Retry-After, in seconds; headers:
    the upstream's headers on the expose list, passed back to the client; delivered:
    whether the request may have reached the upstream (False only when it failed before
    anything was sent); lost: the upstream closed the connection before answering
    anything (no status line; for a stream, no event): it died or restarted. A request
    without an answer is retried elsewhere only when not delivered, or lost (routing's
    `retry_lost`); a timed-out one never is: its upstream may still be working on it."""

    status_code = 502
    error_type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 502,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        error_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        delivered: bool = True,
        lost: bool = False,
    ) -> None:
        super().__init__(message, param=param, code=code, headers=headers)
        self.status_code = status_code
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        self.delivered = delivered
        self.lost = lost
        if error_type is not None:
            self.error_type = error_type


def error_body(exc: OpenAIError) -> bytes:
    return _encoder.encode(
        ErrorResponse(
            error=ErrorBody(
                message=exc.message, type=exc.error_type, param=exc.param, code=exc.code
            )
        )
    )


def server_error() -> OpenAIError:
    """What a client gets for a failure that is the gateway's own (logged, not shown)."""
    return OpenAIError(SERVER_ERROR_MESSAGE)


_PATH = re.compile(r" - at `\$\.?(.*)`$")


def invalid_body(exc: msgspec.ValidationError | msgspec.DecodeError) -> InvalidRequest:
    """Turns msgspec's message ("Expected `float` <= 2.0 - at `$.temperature`") into a 400."""
    text = str(exc)
    match = _PATH.search(text)
    param = match.group(1) if match and match.group(1) else None
    message = _PATH.sub("", text) if match else text
    if isinstance(exc, msgspec.ValidationError):
        message = f"Invalid value for '{param}': {message}" if param else message
        return InvalidRequest(message, param=param, code="invalid_value")
    return InvalidRequest(
        f"Could not parse the request body as JSON: {message}", code="invalid_json"
    )


def error_fields(content: bytes) -> tuple[str, str | None, str | None, str | None]:
    """(message, type, param, code) from OpenAI's {"error": {...}}, FastAPI's
    {"detail": ...}, {"message": ...}, {"error": "text"} or plain text."""
    try:
        data: Any = msgspec.json.decode(content)
    except msgspec.DecodeError:
        return content.decode(errors="replace").strip()[:500], None, None, None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            message = err.get("message") or err.get("detail") or ""
            if not isinstance(message, str):
                message = msgspec.json.encode(message).decode()
            return (
                message[:2000],
                _str(err.get("type")),
                _str(err.get("param")),
                _str(err.get("code")),
            )
        if isinstance(err, str):
            return err[:2000], None, None, None
    return str(data)[:500], None, None, None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
