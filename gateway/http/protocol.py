"""uvicorn's httptools protocol with the edge's limits on the request head and body.

uvicorn bounds neither the size of a request head nor the time it takes to arrive: a
client sending 16 MB of headers, or one byte every few seconds (slowloris), held memory
and a connection for as long as it liked. This subclass counts the head's bytes and
headers as they arrive (431 past the limit), gives the head `header_timeout_s` from the
connection or from the request's first byte, and a body `body_timeout_s` of silence at
most (408); the connection is then closed. Everything else is uvicorn's.

The limits are a class attribute set once at start-up (`configure`), because uvicorn
builds protocol instances itself, one per connection, from the class.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.http.limits import EdgeLimits

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[EdgeLimits] = EdgeLimits()

    @classmethod
    def configure(cls, limits: EdgeLimits) -> None:
        cls.limits = limits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._in_body = False
        self._head_bytes = 0
        self._header_count = 0
        self._last_body = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # ---- connection --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:  # count the head only: the body may come in the same read
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4
            if self._head_bytes > self.limits.max_header_bytes:
                self._reject(431, "The request head is too large.")
                return
        elif self._in_body:
            self._last_body = self.loop.time()
        super().data_received(data)

    # ---- parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # the next request on a kept-alive connection
            self._in_head, self._head_bytes, self._header_count = True, 0, 0
            self._arm_head()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._reject(431, "The request has too many headers.")
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.more_body:
            self._in_body = True
            self._last_body = self.loop.time()
            self._timer = self.loop.call_later(self.limits.body_timeout_s, self._check_body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        super().on_message_complete()

    # ---- timers ------------------------------------------------------------------------

    def _arm_head(self) -> None:
        self._disarm()
        self._timer = self.loop.call_later(self.limits.header_timeout_s, self._head_late)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_late(self) -> None:
        self._timer = None
        if self._in_head and (self.cycle is None or self.cycle.response_complete):
            self._reject(408, "The request head did not arrive in time.")

    def _check_body(self) -> None:
        self._timer = None
        if not self._in_body:
            return
        due = self._last_body + self.limits.body_timeout_s
        if self.loop.time() >= due:
            self._reject(408, "The request body stopped arriving.")
        else:
            self._timer = self.loop.call_at(due, self._check_body)

    def _reject(self, status: int, message: str) -> None:
        """Answers in OpenAI's error shape, then closes the connection."""
        self._disarm()
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
