"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Exception tree:

    OpenAIError                 any error the gateway answers itself
    ├── InvalidRequest          400 invalid_request_error (bad body, bad parameter)
    ├── ModelNotFound           404 invalid_request_error, code model_not_found
    ├── Unauthorized            401 authentication_error (missing or unknown API key)
    └── UpstreamError           an upstream's refusal (its 4xx/429 passed on) or failure
                                (502 bad answer, 503 unreachable, 504 timed out)

The SDK maps the status code to its exception class (400 BadRequestError, 404
NotFoundError, ...), so the status matters as much as the body.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from gateway.schemas import ErrorBody, ErrorResponse

log = logging.getLogger(__name__)


class OpenAIError(Exception):
    status_code = 500
    error_type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_response(self) -> Response[bytes]:
        return error_response(
            self.status_code, self.message, self.error_type, self.param, self.code
        )


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


class Unauthorized(OpenAIError):
    status_code = 401
    error_type = "authentication_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_api_key")


class UpstreamError(OpenAIError):
    """An upstream failed or refused. status_code: what the client gets (the upstream's
    own 4xx/429 pass through, its 5xx and connection failures become 502/503/504);
    upstream_status: what the upstream said (None: no answer at all), which retry and
    circuit-breaking decisions read; retry_after: its Retry-After, in seconds."""

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
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.status_code = status_code
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        if error_type is not None:
            self.error_type = error_type


def error_response(
    status: int, message: str, type_: str, param: str | None = None, code: str | None = None
) -> Response[bytes]:
    body = ErrorResponse(error=ErrorBody(message=message, type=type_, param=param, code=code))
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json")


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


# ---- Litestar exception handlers ----------------------------------------------------------

_HTTP_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def handle_openai_error(_: Request[Any, Any, Any], exc: OpenAIError) -> Response[bytes]:
    return exc.to_response()


def handle_http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    type_ = _HTTP_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return error_response(status, str(exc.detail), type_)


SERVER_ERROR_MESSAGE = "The server had an error while processing your request."


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, SERVER_ERROR_MESSAGE, "server_error")


EXCEPTION_HANDLERS = {
    OpenAIError: handle_openai_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
