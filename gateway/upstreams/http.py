"""Any OpenAI-compatible server as an upstream (vLLM, SGLang, llama.cpp, Ollama, OpenAI,
or our own `llm-gateway backend`), over one pooled HTTP/1.1 transport per backend.

- Lossless: the request body goes out as the client sent it (plugins' edits and the
  model alias applied, nothing else re-encoded); JSON answers come back as their bytes;
  server-sent events keep their frames; any other answer (audio, files) streams through.
- Headers: the group's API key, its extra headers and query parameters, and what the
  gateway passes (request id, trace context, allowed client headers) go out; the
  upstream's headers on the expose list come back, on answers and errors alike, with
  its own request id as `x-upstream-request-id`.
- Errors become OpenAI-shaped `UpstreamError`s whatever shape the upstream used: its
  4xx (and 429, with Retry-After) pass on with its message; its 5xx become 502, no
  connection 503, a timeout 504. The routing plugin reads `upstream_status` to decide
  on retries and circuit breaking.
- Streams: an error event, a broken connection, or an end without `[DONE]` (for the
  Responses API: without its final event) raises, so the client's stream ends with an
  error event, never a silent 200. The first event is awaited before the answer goes
  back: an upstream that fails before it fails the call, which routing may retry on
  another backend (a backend killed with requests queued loses none of them). Closing
  the stream (client gone) closes the upstream connection, which is how an
  OpenAI-compatible server learns to stop generating.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping
from typing import Any
from urllib.parse import urlencode

import httpx

from gateway.batch import current_batch
from gateway.call import CHAT, COMPLETIONS, EMBEDDINGS, PASSTHROUGH, RESPONSES, Call, Reply
from gateway.errors import UpstreamError, error_fields
from gateway.headers import DEFAULT_EXPOSE, REQUEST_ID, UPSTREAM_REQUEST_ID, HeaderRules
from gateway.multipart import replace_field
from gateway.payload import Chunk, DecodeErrors, Payload
from gateway.upstreams.clients import Client, make_client
from gateway.upstreams.sse_reader import EventReader
from gateway.views import AnswerView, ResponseEventView, ResponseObjectView
from policies.retry import parse_retry_after

_PASS_ON = {400, 401, 403, 404, 409, 413, 415, 422, 429}
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
_PATHS = {
    CHAT: "/chat/completions",
    COMPLETIONS: "/completions",
    RESPONSES: "/responses",
    EMBEDDINGS: "/embeddings",
}
# Failures before anything was written: the request never reached the upstream.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
# Failures after sending that mean the connection broke (reset, closed, garbled), unlike
# a timeout, which may mean the upstream is still working.
_DROPPED = (httpx.NetworkError, httpx.RemoteProtocolError)
# How a Responses API stream ends when it ends properly (it has no [DONE]).
_RESPONSE_ENDS = frozenset({"response.completed", "response.failed", "response.incomplete"})
_JSON = "application/json"


class HttpUpstream:
    endpoints = frozenset({CHAT, COMPLETIONS, RESPONSES, EMBEDDINGS, PASSTHROUGH})

    def __init__(
        self,
        base_url: str,
        *,
        name: str | None = None,
        api_key: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
        max_connections: int = 512,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        expose: HeaderRules | None = None,
        http_client: str = "auto",
        transport: Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name or self.base_url
        fixed = {k.lower(): v for k, v in (headers or {}).items()}
        if api_key:
            fixed["authorization"] = f"Bearer {api_key}"
        self._fixed = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in fixed.items()]
        self._fixed_names = frozenset(fixed)
        self._query = urlencode(dict(query or {}))
        self._expose = expose or HeaderRules(DEFAULT_EXPOSE)
        # Requests go straight to the transport, without an httpx.Request: an AsyncClient's
        # per-request work (URL merging, cookies, auth and redirect hooks), and then the
        # Request object itself (~20 µs), cost more than the HTTP exchange (py-spy); a
        # proxy to a configured server needs none of it. httpx's Response, URL and errors
        # stay the API.
        self._transport = transport or make_client(http_client, self.base_url, max_connections)
        self._timeouts = {
            "connect": connect_timeout,
            "read": read_timeout,
            "write": read_timeout,
            "pool": connect_timeout,
        }
        self._urls: dict[str, httpx.URL] = {}

    async def send(self, call: Call, model: str | None, headers: Mapping[str, str]) -> Reply:
        path = _PATHS.get(call.endpoint) if call.endpoint != PASSTHROUGH else None
        content, content_type = self._content(call, model)
        out = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in headers.items()
            if k not in self._fixed_names
        ]
        out += self._fixed
        if content_type is not None:
            out.append((b"content-type", content_type.encode("latin-1")))
        response = await self._open(call.method, path or call.path, call.query, content, out)
        status = response.status_code
        if status >= 400:
            body = await _read_all(response)
            raise self._status_error(status, body, response.headers)
        reply_headers = self._exposed(response.headers)
        if call.endpoint == PASSTHROUGH:
            media = response.headers.get("content-type")
            return Reply(
                content=self._bytes(response), headers=reply_headers, status=status,
                media_type=media,
            )  # fmt: skip
        if call.stream:
            events = self._events(response, need_done=call.endpoint != RESPONSES)
            # The first event is awaited here: an upstream that fails before it (it died
            # with the request queued, or its first event is an error) fails the call, where
            # routing may still send it elsewhere and the client gets a plain error answer.
            first = await anext(events, None)
            stream = events if first is None else Resumed(first, events)
            return Reply(stream=stream, headers=reply_headers)
        try:
            raw = b"".join([part async for part in response.stream])  # type: ignore[union-attr]
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, answered=True) from None
        finally:
            await response.aclose()
        payload = Payload.from_bytes(raw)
        try:  # a quick look that it is JSON of the right shape; kept for metrics
            payload.view(ResponseObjectView if call.endpoint == RESPONSES else AnswerView)
        except DecodeErrors as exc:
            raise UpstreamError(f"upstream {self.name} sent an invalid response: {exc}") from None
        return Reply(body=payload, headers=reply_headers)

    async def ready(self) -> bool:
        short = {"connect": 2.0, "read": 2.0}
        try:
            response = await self._transport.send(
                "GET", self._url("/models", ""), self._fixed, b"", short
            )
            await response.aclose()
        except httpx.HTTPError:
            return False
        return response.status_code < 500

    def alive(self) -> bool:
        return True  # nothing of this process can die here; an outage is readiness

    async def close(self) -> None:
        await self._transport.aclose()

    # ---- internals ---------------------------------------------------------------------

    def _content(self, call: Call, model: str | None) -> tuple[bytes, str | None]:
        if call.content is not None:
            content = call.content
            if model and model != call.model:
                content = replace_field(content, call.content_type, "model", model)
            return content, call.content_type
        if call.method in ("GET", "DELETE", "HEAD"):
            return b"", None
        body = call.body
        if model and model != call.request.model:
            body = Payload.of({**body.data, "model": model})
        return body.raw, _JSON

    def _url(self, path: str, query: str) -> httpx.URL:
        key = path + "?" + query
        url = self._urls.get(key)
        if url is None:
            both = "&".join(q for q in (self._query, query) if q)
            url = httpx.URL(self.base_url + path + ("?" + both if both else ""))
            if len(self._urls) < 1024:  # the fixed routes; passthrough paths vary
                self._urls[key] = url
        return url

    async def _open(
        self,
        method: str,
        path: str,
        query: str,
        content: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> httpx.Response:
        url = self._url(path, query)
        try:
            return await self._transport.send(method, url, headers, content, self._timeouts)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None

    def _exposed(self, headers: httpx.Headers) -> dict[str, str]:
        out = self._expose.pick_raw(headers.raw)
        upstream_id = out.pop(REQUEST_ID, None) or headers.get(REQUEST_ID)
        if upstream_id:
            out[UPSTREAM_REQUEST_ID] = upstream_id
        return out

    async def _bytes(self, response: httpx.Response) -> AsyncIterator[bytes]:
        try:
            async for part in response.stream:  # type: ignore[union-attr]
                yield part
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, mid_stream=True) from None
        finally:
            await response.aclose()

    async def _events(self, response: httpx.Response, need_done: bool) -> AsyncGenerator[Chunk]:
        """The upstream's events as they arrive. The events of one socket read are one
        burst for the edge's batch (gateway/batch.py). Reads on past `[DONE]` to the
        body's end, so the connection goes back to the pool rather than being closed."""
        reader = EventReader()
        finished = False
        yielded = False  # an error before the first event: the upstream answered nothing
        batch = current_batch()
        try:
            async for data in response.stream:  # type: ignore[union-attr]
                events = reader.feed(data)
                burst = batch is not None and len(events) > 1
                if burst:
                    batch.hold()  # type: ignore[union-attr]
                for chunk in events:
                    if need_done and chunk.raw.startswith(b'{"error"'):
                        raise self._status_error(502, chunk.raw, response.headers, mid_stream=True)
                    if not need_done and _ends_response(chunk):
                        finished = True
                    yield chunk
                    yielded = True
                if burst:
                    await batch.release()  # type: ignore[union-attr]
        except httpx.HTTPError as exc:
            if not (reader.done if need_done else finished):
                raise self._transport_error(exc, mid_stream=yielded) from None
            # the answer was complete; only the connection's end was not clean
        finally:
            await response.aclose()
        if not (reader.done if need_done else finished):
            raise UpstreamError(
                f"upstream {self.name} ended the stream before it was complete",
                code="upstream_stream_cut",
                lost=not yielded,
            )

    def _transport_error(
        self, exc: httpx.HTTPError, mid_stream: bool = False, answered: bool = False
    ) -> UpstreamError:
        """No answer: 503 or 504. `delivered` says whether the request may have reached
        the upstream (anything after connecting); `lost`, whether the upstream dropped the
        connection before answering anything (answered: its status line had come)."""
        where = " mid-stream" if mid_stream else ""
        delivered = mid_stream or not isinstance(exc, _NOT_SENT)
        lost = delivered and not (mid_stream or answered) and isinstance(exc, _DROPPED)
        if isinstance(exc, httpx.PoolTimeout):
            return UpstreamError(
                f"upstream {self.name}: all connections busy", status_code=503,
                code="upstream_busy", delivered=False,
            )  # fmt: skip
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamError(
                f"upstream {self.name} timed out{where}", status_code=504,
                code="upstream_timeout", delivered=delivered,
            )  # fmt: skip
        return UpstreamError(
            f"upstream {self.name} is unreachable{where}: {type(exc).__name__}",
            status_code=503,
            code="upstream_unavailable",
            delivered=delivered,
            lost=lost,
        )

    def _status_error(
        self, status: int, content: bytes, headers: httpx.Headers, mid_stream: bool = False
    ) -> UpstreamError:
        message, type_, param, code = error_fields(content)
        retry_after = parse_retry_after(headers.get("retry-after"), time.time())
        exposed = self._exposed(headers)
        if status in _PASS_ON and not mid_stream:
            return UpstreamError(
                message or f"upstream {self.name} refused the request ({status})",
                status_code=status,
                upstream_status=status,
                retry_after=retry_after,
                error_type=type_ or _TYPES.get(status, "invalid_request_error"),
                param=param,
                code=code,
                headers=exposed,
            )
        return UpstreamError(
            f"upstream {self.name} failed ({status}): {message or 'no details'}",
            status_code=502,
            upstream_status=status,
            retry_after=retry_after,
            code=code,
            headers=exposed,
        )


class Resumed:
    """A stream whose first chunk was read ahead: gives it, then the rest as they come
    (no generator layer: after the first, each step is the inner stream's own)."""

    __slots__ = ("_first", "_rest")

    def __init__(self, first: Chunk, rest: AsyncGenerator[Chunk]) -> None:
        self._first: Chunk | None = first
        self._rest = rest

    def __aiter__(self) -> Resumed:
        return self

    def __anext__(self) -> Awaitable[Chunk]:
        first = self._first
        if first is None:
            return self._rest.__anext__()
        self._first = None
        return _now(first)

    async def aclose(self) -> None:
        await self._rest.aclose()


async def _now(chunk: Chunk) -> Chunk:
    return chunk


def _ends_response(chunk: Chunk) -> bool:
    name: Any = chunk.event
    if name is None:
        try:
            name = chunk.view(ResponseEventView).type
        except DecodeErrors:
            return False
    return name in _RESPONSE_ENDS


async def _read_all(response: httpx.Response) -> bytes:
    try:
        return b"".join([part async for part in response.stream])  # type: ignore[union-attr]
    except httpx.HTTPError:
        return b""
    finally:
        await response.aclose()
