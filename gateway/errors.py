"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Exception tree:

    OpenAIError                 any error the gateway answers itself
    ├── InvalidRequest          400 invalid_request_error (bad body, bad parameter)
    ├── ModelNotFound           404 invalid_request_error, code model_not_found
    └── UpstreamError           5xx from a failing upstream

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


class UpstreamError(OpenAIError):
    status_code = 502
    error_type = "server_error"


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


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        500, "The server had an error while processing your request.", "server_error"
    )


EXCEPTION_HANDLERS = {
    OpenAIError: handle_openai_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
