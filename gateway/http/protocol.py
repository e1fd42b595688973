"""uvicorn's httptools protocol with the edge's limits on the request head and body.

uvicorn bounds neither the size of a request head nor the time it takes to arrive: a
client sending 16 MB of headers, or one byte every few seconds (slowloris), held memory
and a connection for as long as it liked. This subclass counts the head's bytes and
headers as they arrive (431 past the limit), gives the head `header_timeout_s` from the
connection or from the request's first byte, and a body `body_timeout_s` of silence at
most (408); the connection is then closed. Everything else is uvicorn's.

It also cancels the request's task when its client disconnects before the answer has
started, so the edge need not run a watcher task per request to notice (it marks the
request's `scope["extensions"]["llm_gateway.client"]` as gone first).

The limits are a class attribute set once at start-up (`configure`), because uvicorn
builds protocol instances itself, one per connection, from the class.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.http.limits import EdgeLimits

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
CLIENT_STATE = "llm_gateway.client"  # scope["extensions"] key


class ClientState:
    """Per request: whether its client has gone (set by the protocol on disconnect)."""

    __slots__ = ("gone",)

    def __init__(self) -> None:
        self.gone = False


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[EdgeLimits] = EdgeLimits()

    @classmethod
    def configure(cls, limits: EdgeLimits) -> None:
        cls.limits = limits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._request_task: asyncio.Task[None] | None = None
        self._client: ClientState | None = None
        self._in_head = True
        self._in_body = False
        self._head_bytes = 0
        self._since = 0.0  # when the head began, or the body's last bytes came
        self._timer: asyncio.TimerHandle | None = None

    # ---- connection --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._since = self.loop.time()
        # One timer per connection, checking lazily: a request only notes times, it never
        # arms or cancels a timer of its own (that cost more than the checks).
        self._timer = self.loop.call_later(self._period(), self._check)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)
        # The client left while its answer was being made: stop making it (the engine
        # drops the request, an upstream's connection is closed). A stream being written
        # is stopped by the edge's writer, which notices the disconnect itself.
        task, client = self._request_task, self._client
        if task is not None and client is not None and not task.done():
            client.gone = True
            if self.cycle is not None and not self.cycle.response_started:
                task.cancel()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # uvicorn's own, keeping the task: connection_lost may have to cancel it.
        task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        self._request_task = task

    def data_received(self, data: bytes) -> None:
        if self._in_head:  # count the head only: the body may come in the same read
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4
            if self._head_bytes > self.limits.max_header_bytes:
                self._reject(431, "The request head is too large.")
                return
        elif self._in_body:
            self._since = self.loop.time()
        super().data_received(data)

    # ---- parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # What the edge reads to tell a client that left from a server shutting down.
        self._client = ClientState()
        self.scope["extensions"] = {CLIENT_STATE: self._client}  # type: ignore[dict-item]
        if not self._in_head:  # the next request on a kept-alive connection
            self._in_head, self._head_bytes = True, 0
            self._since = self.loop.time()

    def on_headers_complete(self) -> None:
        self._in_head = False
        # Counted once the head is in (its bytes were bounded while it arrived, so the
        # count is too): a per-header hook would cost every request a call per header.
        if len(self.headers) > self.limits.max_headers:
            self._reject(431, "The request has too many headers.")
            return
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.more_body:
            self._in_body = True
            self._since = self.loop.time()

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    # ---- the timer ---------------------------------------------------------------------

    def _period(self) -> float:
        return min(self.limits.header_timeout_s, self.limits.body_timeout_s) / 2

    def _check(self) -> None:
        """A head or body overdue is refused; otherwise look again later. A connection
        idle between requests (or waiting for its answer) is uvicorn's keep-alive
        timer's, or the app's, business."""
        self._timer = None
        now = self.loop.time()
        waiting_head = self._in_head and (self.cycle is None or self.cycle.response_complete)
        if waiting_head and now - self._since >= self.limits.header_timeout_s:
            self._reject(408, "The request head did not arrive in time.")
            return
        if self._in_body and now - self._since >= self.limits.body_timeout_s:
            self._reject(408, "The request body stopped arriving.")
            return
        self._timer = self.loop.call_later(self._period(), self._check)

    def _reject(self, status: int, message: str) -> None:
        """Answers in OpenAI's error shape, then closes the connection."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._in_head = self._in_body = False
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
            code = "request_timeout" if status == 408 else "request_header_too_large"
            body = (
                b'{"error":{"message":"' + message.encode() + b'","type":"invalid_request_error",'
                b'"param":null,"code":"' + code.encode() + b'"}}'
            )
            head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
            head += b"content-type: application/json\r\nconnection: close\r\n"
            head += b"content-length: %d\r\n\r\n" % len(body)
            self.transport.write(head + body)
        if self.cycle is not None:
            self.cycle.disconnected = True  # the app, if running, sees the client gone
            self.cycle.message_event.set()
        self.transport.close()
