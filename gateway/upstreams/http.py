"""Any OpenAI-compatible server as an upstream (vLLM, SGLang, llama.cpp, Ollama, OpenAI,
or our own `llm-gateway backend`), through one pooled httpx client per backend.

- The request is re-encoded without the fields the client left unset, with `model`
  replaced by the configured upstream name (aliasing).
- Errors become OpenAI-shaped `UpstreamError`s whatever shape the upstream used: its
  4xx (and 429, with Retry-After) pass on with its message; its 5xx become 502, no
  connection 503, a timeout 504. The routing plugin reads `upstream_status` to decide
  on retries and circuit breaking.
- Streams are parsed as SSE; an error event, a broken connection or an end without
  `[DONE]` raises, so the client's stream ends with an error event, never a silent 200.
  Closing the iterator (client gone) closes the upstream connection, which is how an
  OpenAI-compatible server learns to stop generating.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import httpx
import msgspec

from gateway.errors import UpstreamError
from gateway.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
)
from gateway.upstreams.base import ChatResult, CompletionResult
from gateway.upstreams.transport import LeanTransport
from policies.retry import parse_retry_after

T = TypeVar("T")

_PASS_ON = {400, 401, 403, 404, 409, 413, 415, 422, 429}
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


class HttpUpstream:
    def __init__(
        self,
        base_url: str,
        *,
        name: str | None = None,
        api_key: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
        max_connections: int = 512,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name or self.base_url
        headers = {"content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._headers = httpx.Headers(headers)
        # Requests go straight to the transport with httpx's Request/Response types: an
        # AsyncClient's per-request work (URL merging, cookies, auth and redirect hooks)
        # cost the gateway more than the HTTP exchange itself (py-spy), and a proxy to a
        # configured server needs none of it.
        self._transport = transport or LeanTransport(max_connections)
        self._timeouts = {
            "connect": connect_timeout,
            "read": read_timeout,
            "write": read_timeout,
            "pool": connect_timeout,
        }
        self._urls = {p: httpx.URL(self.base_url + p) for p in _PATHS}
        self._encoder = msgspec.json.Encoder()

    async def chat(
        self, request: ChatCompletionRequest, upstream_model: str | None = None
    ) -> ChatResult:
        body = self._body(request, upstream_model)
        if request.stream:
            return await self._stream("/chat/completions", body, ChatCompletionChunk)
        return await self._post("/chat/completions", body, ChatCompletion)

    async def complete(
        self, request: CompletionRequest, upstream_model: str | None = None
    ) -> CompletionResult:
        body = self._body(request, upstream_model)
        if request.stream:
            return await self._stream("/completions", body, Completion)
        return await self._post("/completions", body, Completion)

    async def ready(self) -> bool:
        short = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}
        try:
            response = await self._send("GET", "/models", b"", short)
            await response.aclose()
        except httpx.HTTPError:
            return False
        return response.status_code < 500

    async def close(self) -> None:
        await self._transport.aclose()

    # ---- internals ---------------------------------------------------------------------

    def _body(self, request: msgspec.Struct, upstream_model: str | None) -> bytes:
        fields = {k: v for k, v in msgspec.structs.asdict(request).items() if v is not None}
        if upstream_model:
            fields["model"] = upstream_model
        return self._encoder.encode(fields)

    async def _send(
        self, method: str, path: str, body: bytes, timeouts: dict[str, float] | None = None
    ) -> httpx.Response:
        request = httpx.Request(
            method,
            self._urls[path],
            headers=self._headers,
            content=body,
            extensions={"timeout": timeouts or self._timeouts},
        )
        return await self._transport.handle_async_request(request)

    async def _post(self, path: str, body: bytes, type_: type[T]) -> T:
        try:
            response = await self._send("POST", path, body)
            try:
                content = b"".join([part async for part in response.stream])  # type: ignore[union-attr]
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if response.status_code >= 400:
            raise self._status_error(response.status_code, content, response.headers)
        try:
            return msgspec.json.decode(content, type=type_)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise UpstreamError(f"upstream {self.name} sent an invalid response: {exc}") from None

    async def _stream(self, path: str, body: bytes, type_: type[T]) -> AsyncIterator[T]:
        """Opened on first iteration: the status is checked before any chunk is yielded,
        so an upstream 4xx/5xx still reaches the client as a proper HTTP error."""
        try:
            response = await self._send("POST", path, body)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if response.status_code >= 400:
            try:
                content = b"".join([part async for part in response.stream])  # type: ignore[union-attr]
            except httpx.HTTPError:
                content = b""
            await response.aclose()
            raise self._status_error(response.status_code, content, response.headers)
        return self._chunks(response, type_)

    async def _chunks(self, response: httpx.Response, type_: type[T]) -> AsyncIterator[T]:
        decoder = msgspec.json.Decoder(type_)
        done = False
        try:
            async for line in _lines(response):
                if not line.startswith(b"data:"):
                    continue  # comments, event:/id: lines, blank separators
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                if data.startswith(b'{"error"'):
                    raise self._status_error(502, data, response.headers, mid_stream=True)
                try:
                    yield decoder.decode(data)
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    raise UpstreamError(
                        f"upstream {self.name} sent an invalid chunk: {exc}"
                    ) from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, mid_stream=True) from None
        finally:
            await response.aclose()
        if not done:
            raise UpstreamError(
                f"upstream {self.name} ended the stream before it was complete",
                code="upstream_stream_cut",
            )

    def _transport_error(self, exc: httpx.HTTPError, mid_stream: bool = False) -> UpstreamError:
        where = " mid-stream" if mid_stream else ""
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamError(
                f"upstream {self.name} timed out{where}", status_code=504, code="upstream_timeout"
            )
        return UpstreamError(
            f"upstream {self.name} is unreachable{where}: {type(exc).__name__}",
            status_code=503,
            code="upstream_unavailable",
        )

    def _status_error(
        self, status: int, content: bytes, headers: httpx.Headers, mid_stream: bool = False
    ) -> UpstreamError:
        message, type_, param, code = _error_fields(content)
        retry_after = parse_retry_after(headers.get("retry-after"), time.time())
        if status in _PASS_ON and not mid_stream:
            return UpstreamError(
                message or f"upstream {self.name} refused the request ({status})",
                status_code=status,
                upstream_status=status,
                retry_after=retry_after,
                error_type=type_ or _TYPES.get(status, "invalid_request_error"),
                param=param,
                code=code,
            )
        return UpstreamError(
            f"upstream {self.name} failed ({status}): {message or 'no details'}",
            status_code=502,
            upstream_status=status,
            retry_after=retry_after,
            code=code,
        )


_PATHS = ("/chat/completions", "/completions", "/models")


async def _lines(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body's lines (LF or CRLF) as they arrive."""
    buffer = b""
    async for part in response.stream:  # type: ignore[union-attr]
        buffer += part
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r")
    if buffer:
        yield buffer.rstrip(b"\r")


def _error_fields(content: bytes) -> tuple[str, str | None, str | None, str | None]:
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
