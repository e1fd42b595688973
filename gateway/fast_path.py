"""The generation routes and /v1/embeddings served straight on ASGI, in front of the
Litestar app.

Litestar's per-request machinery (router, handler signature parsing, response
objects, middleware) was the largest single cost on the gateway's hot path (py-spy,
~35% of its CPU at 16 clients). POST /v1/chat/completions and /v1/completions do the
same work as the Litestar handlers — `serve_call` is shared — with the ASGI messages
written directly; every other route, lifespan included, goes to the Litestar app.

Streams: a watcher on `receive` ends the stream when the client disconnects, which
closes the chain's stream and so the upstream request (as Litestar's Stream does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

import msgspec

from gateway.app import SSE_HEADERS, Gateway, serve_call
from gateway.call import Endpoint, close_stream
from gateway.embeddings_route import serve_embeddings
from gateway.errors import SERVER_ERROR_MESSAGE, OpenAIError
from gateway.schemas import ChatCompletionRequest, CompletionRequest, ErrorBody, ErrorResponse
from gateway.sse import encode_sse

log = logging.getLogger(__name__)

T = TypeVar("T")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

EMBEDDINGS = "/v1/embeddings"
ROUTES: dict[str, tuple[Endpoint, type[Any]]] = {
    "/v1/chat/completions": ("chat.completions", ChatCompletionRequest),
    "/v1/completions": ("completions", CompletionRequest),
}
_JSON = (b"content-type", b"application/json")
_SSE = [(b"content-type", b"text/event-stream")] + [
    (k.lower().encode(), v.encode()) for k, v in SSE_HEADERS.items()
]


class FastRoutes:
    def __init__(self, app: Any, gateway: Gateway) -> None:  # the Litestar app
        self.app, self.gateway = app, gateway
        self._encoder = msgspec.json.Encoder()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = ROUTES.get(scope["path"])
            if route is not None:
                await self._serve(route, scope, receive, send)
                return
            if scope["path"] == EMBEDDINGS:
                await self._embeddings(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = await _read(scope, receive)
        if request is None:
            return
        headers, raw = request
        body = await self._answer(scope, send, serve_embeddings(self.gateway, raw, headers))
        if body is None:
            return
        out = [_JSON, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": out})
        await send({"type": "http.response.body", "body": body})

    async def _serve(
        self, route: tuple[Endpoint, type[Any]], scope: Scope, receive: Receive, send: Send
    ) -> None:
        request = await _read(scope, receive)
        if request is None:
            return
        headers, raw = request
        answer = await self._answer(scope, send, serve_call(self.gateway, *route, raw, headers))
        if answer is None:
            return
        reply, extra = answer
        out = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
        if reply.body is not None:
            body = self._encoder.encode(reply.body)
            out += [_JSON, (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": out})
            await send({"type": "http.response.body", "body": body})
            return
        assert reply.stream is not None
        await send({"type": "http.response.start", "status": 200, "headers": _SSE + out})
        frames = encode_sse(reply.stream)
        pump = asyncio.ensure_future(self._pump(frames, send))
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watcher):
                if not task.done():
                    task.cancel()
            for task in (pump, watcher):
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
            await close_stream(frames)  # client gone: closes the chain's stream and the upstream

    async def _answer(self, scope: Scope, send: Send, work: Awaitable[T]) -> T | None:
        """What `work` returns; None once an error has been sent in OpenAI's shape."""
        try:
            return await work
        except OpenAIError as exc:
            await self._error(
                send, exc.status_code, exc.message, exc.error_type, exc.param, exc.code
            )
        except Exception:
            log.exception("unhandled error on POST %s", scope["path"])
            await self._error(send, 500, SERVER_ERROR_MESSAGE, "server_error", None, None)
        return None

    async def _pump(self, frames: Any, send: Send) -> None:
        async for frame in frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _error(
        self,
        send: Send,
        status: int,
        message: str,
        type_: str,
        param: str | None,
        code: str | None,
    ) -> None:
        body = self._encoder.encode(
            ErrorResponse(error=ErrorBody(message=message, type=type_, param=param, code=code))
        )
        headers = [_JSON, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _read(scope: Scope, receive: Receive) -> tuple[dict[str, str], bytes] | None:
    """The request's headers (lower-case names) and whole body; None if the client left."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    raw = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        raw += message.get("body", b"")
        if not message.get("more_body"):
            return headers, raw


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
