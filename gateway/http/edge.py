"""The one HTTP edge: every route, served straight on ASGI, one way to write an answer
and one way to write an error.

A web framework's per-request machinery (router, handler signature parsing, response
objects, middleware) was the largest single cost on the gateway's hot path (py-spy,
~35% of its CPU at 16 clients), and a proxy needs none of it: the routes are a handful
of fixed paths plus "anything else under /v1", which goes to the request's model
(gateway/http/routes.py). Every answer and every error carries `x-request-id`.

Streams: a watcher on `receive` ends the stream when the client disconnects, which
closes the chain's stream and so the upstream request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from gateway.batch import Batch, use_batch
from gateway.call import RESPONSES, Reply
from gateway.errors import OpenAIError, ShuttingDown, TooLarge, error_body, server_error
from gateway.headers import REQUEST_ID, request_id
from gateway.http.access_log import AccessRecord
from gateway.http.limits import EdgeLimits
from gateway.http.protocol import CLIENT_STATE, ClientState
from gateway.http.routes import ENDPOINTS, Routes
from gateway.runtime import Gateway, Incoming
from gateway.sse import DONE, encode_sse

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = (b"content-type", b"application/json")
_SSE = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx and friends: do not hold events back
]


class Edge:
    def __init__(
        self,
        gateway: Gateway,
        metrics: Callable[[], bytes] | None = None,
        limits: EdgeLimits | None = None,
        admin_key: str | None = None,
        access_log: bool = True,
    ) -> None:
        """metrics: renders /metrics (Prometheus text); None: no /metrics route.
        admin_key: what /metrics and /ready's detail ask for (None: open).
        access_log: one line per request (gateway/http/access_log.py)."""
        self.gateway = gateway
        self.routes = Routes(gateway, metrics, admin_key)
        self.limits = limits or EdgeLimits()
        self.access_log = access_log
        # Loops that run while the server does (started after the gateway's start-up,
        # cancelled before its close): readiness probes, a worker's metrics.
        self.background: list[Callable[[], Coroutine[Any, Any, None]]] = [
            self.routes.probes.keep_fresh
        ]
        self._tasks: list[asyncio.Task[None]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if not self.access_log:
                await self._http(scope, receive, send)
                return
            record = AccessRecord(scope["method"], scope["path"])
            try:
                await self._http(scope, receive, record.watching(send), record)
            finally:
                record.write()
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gateway.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                self._tasks = [asyncio.ensure_future(loop()) for loop in self.background]
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                try:
                    await self.gateway.close()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(
        self, scope: Scope, receive: Receive, send: Send, record: AccessRecord | None = None
    ) -> None:
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            headers[k.decode("latin-1").lower()] = v.decode("latin-1")
        rid = request_id(headers.get(REQUEST_ID))
        path, method = scope["path"], scope["method"]
        limit = self.limits.body_limit(path in ENDPOINTS or not path.startswith("/v1/"))
        try:
            body = await _read(receive, headers.get("content-length"), limit)
        except TooLarge as exc:
            await self._error(send, exc, rid)
            return
        if body is None:
            return  # the client left before sending its request
        incoming = Incoming(
            method=method,
            path=path,
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
            request_id=rid,
        )
        if record is not None:
            record.incoming = incoming
        # A client that leaves while its answer is being made cancels the making: the
        # engine drops the request, an upstream's connection is closed. Our protocol
        # (gateway/http/protocol.py) cancels this task itself; under another server a
        # watcher task does.
        client = scope.get("extensions", {}).get(CLIENT_STATE)
        watch = _Watch(asyncio.current_task(), client)
        watcher = None if client is not None else asyncio.ensure_future(watch.run(receive))
        try:
            reply, endpoint = await self.routes.dispatch(incoming)
        except asyncio.CancelledError:
            watch.task.uncancel()  # type: ignore[union-attr]
            if watch.gone:
                log.info("client left before its answer (request %s): cancelled", rid)
                return
            # The server is shutting down and its grace period is over: this request's
            # work was dropped (its generation aborted); the client is told so.
            log.warning("request %s cancelled by the server's shutdown", rid)
            await self._error(send, ShuttingDown(), rid)
            return
        except OpenAIError as exc:
            await self._error(send, exc, rid)
            return
        except Exception:
            log.exception("unhandled error on %s %s (request %s)", method, path, rid)
            await self._error(send, server_error(), rid)
            return
        finally:
            watch.active = False
            if watcher is not None:
                watcher.cancel()
        try:
            await self._write(send, receive, reply, rid, endpoint)
        except asyncio.CancelledError:  # a stream cut by the server's shutdown
            watch.task.uncancel()  # type: ignore[union-attr]
            log.warning("answer to request %s cut by the server's shutdown", rid)

    async def _write(
        self, send: Send, receive: Receive, reply: Reply, rid: str, endpoint: str
    ) -> None:
        out = [(REQUEST_ID.encode(), rid.encode("latin-1"))]
        out += [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()
        ]
        if reply.body is not None:
            body = reply.body.raw
            out += [_JSON, (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": reply.status, "headers": out})
            await send({"type": "http.response.body", "body": body})
            return
        if reply.stream is not None:
            head = _SSE + out
            parts = encode_sse(reply.stream, done=endpoint != RESPONSES, request_id=rid)
        else:
            assert reply.content is not None
            media = (reply.media_type or "application/octet-stream").encode("latin-1")
            head = [(b"content-type", media), *out]
            parts = reply.content
        await send({"type": "http.response.start", "status": reply.status, "headers": head})
        pump = asyncio.ensure_future(_pump(parts, send))
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watcher):
                if not task.done():
                    task.cancel()
            for task in (pump, watcher):
                try:
                    await task
                except (asyncio.CancelledError, OSError):
                    pass
                except Exception as exc:  # raw content cut off upstream: the client sees it end
                    log.warning("answer to request %s cut off: %r", rid, exc)
            aclose = getattr(parts, "aclose", None)
            if aclose is not None:  # client gone: closes the chain's stream and the upstream
                await aclose()

    async def _error(self, send: Send, exc: OpenAIError, rid: str) -> None:
        """The one place an error answer is written."""
        body = error_body(exc)
        headers = [(REQUEST_ID.encode(), rid.encode("latin-1")), _JSON]
        headers.append((b"content-length", str(len(body)).encode()))
        headers += [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()
        ]
        await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def _read(receive: Receive, length: str | None, limit: int) -> bytes | None:
    """The request's whole body; None if the client left. A body over `limit` is refused
    before it is read when its length is declared, else as soon as it passes the limit."""
    if length is not None and length.isdigit() and int(length) > limit:
        raise TooLarge(limit)
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise TooLarge(limit)
        parts.append(part)
        if not message.get("more_body"):
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def _pump(parts: AsyncIterator[bytes], send: Send) -> None:
    """Writes the parts as they come; frames of one upstream burst go out in one write
    (gateway/batch.py), and the last ones with the end of the answer."""

    async def write(data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})

    batch = Batch(write)
    use_batch(batch)  # this task's context: the stream's generators run here
    tail = b""
    async for part in parts:
        if part is DONE:  # the stream's last frame: it goes with the end of the answer
            tail = part
            continue
        await batch.add(part)
    await send({"type": "http.response.body", "body": batch.take() + tail})


class _Watch:
    """Cancels `task` if the client disconnects while `active` (the answer is being
    made; once it is being written, the writer watches for itself). `client`: the
    protocol's own record of the disconnect, when the server is ours."""

    __slots__ = ("active", "client", "client_gone", "task")

    def __init__(self, task: asyncio.Task[Any] | None, client: ClientState | None) -> None:
        self.task, self.client = task, client
        self.active, self.client_gone = True, False

    @property
    def gone(self) -> bool:
        return self.client_gone or (self.client is not None and self.client.gone)

    async def run(self, receive: Receive) -> None:
        await _disconnected(receive)
        self.client_gone = True
        if self.active and self.task is not None:
            self.task.cancel()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
