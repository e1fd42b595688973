"""A fast fake OpenAI-compatible server on raw asyncio streams, for tests, plugin
authors and bench/overhead.py (it must cost far less than what it helps measure). It
records what it was sent and can be scripted to answer with exact bytes, so tests can
check that a proxy in front of it changes nothing on the way in or out.

    python -m gateway.testing.mock_upstream --port 9001 [--chunks 8] [--delay-ms 0]
        [--status 500] [--retry-after 2] [--die-after 3] [--name a]

Routes:
- POST /v1/chat/completions and /v1/completions: JSON, or SSE (`stream: true`) with
  `--chunks` content chunks, a usage chunk and `data: [DONE]`.
- Any other path under /v1 (passthrough: /v1/embeddings, /v1/responses,
  /v1/audio/speech, /v1/moderations, ...), any method: a small JSON echo
  `{"path": ..., "method": ...}`.
- GET /v1/models, GET /stats, POST /control: none of them recorded or scripted.

Every answer carries `x-request-id: mock-<n>` (n counts every request the process
answered, so ids never repeat, not even across a reset).

GET /stats: `requests` (generation and passthrough requests seen), `connections` (open
now) and `peak_connections` (the most at once, since the last reset), `cancelled` (streams
the client cut off), and of the last such request: `last_body` (its JSON, or null),
`last_raw_b64` (its body bytes, base64), `last_method`, `last_path`, `last_query`,
`last_headers` (names lower-cased), `last_id` (the x-request-id it was answered with),
`auth` (its Authorization header).

POST /control takes a JSON object of behaviour fields to change:
- status, chunks, delay_ms, die_after, retry_after: as the flags below;
- answer_b64 + answer_type: answer every recorded request with exactly these bytes and
  this content type (status `status`), instead of the default answer or error;
- events_b64 (a list): answer `stream: true` requests with `text/event-stream` and
  exactly these frames, one HTTP chunk each, verbatim (a `data: [DONE]` frame only if
  the list has one);
- headers: extra response headers sent on every answer, errors included;
- drop: true reads each recorded request, then closes the connection without answering;
- reset: true puts the behaviour back to the start-up one and clears the stats.

Failure modes: --status answers every recorded request with that status in OpenAI's
error shape (--retry-after adds the header); --die-after N closes the connection after
N frames of a stream, with no [DONE]. Keep-alive HTTP/1.1, Content-Length bodies only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests"}
_GENERATION = ("/chat/completions", "/completions")


@dataclass(slots=True)
class Behaviour:
    name: str = "mock"
    chunks: int = 8
    delay_s: float = 0.0  # before the answer, and between stream chunks
    status: int = 200
    retry_after: str | None = None
    die_after: int | None = None
    answer: bytes | None = None  # scripted: the whole body of every recorded answer
    answer_type: str = "application/json"
    events: list[bytes] | None = None  # scripted: the frames of every stream
    headers: dict[str, str] = field(default_factory=dict)  # added to every answer
    drop: bool = False  # read each recorded request, then close the connection unanswered


@dataclass(slots=True)
class Stats:
    requests: int = 0
    connections: int = 0  # open now
    peak_connections: int = 0  # the most open at once
    cancelled: int = 0  # streams whose client went away before the end
    last_body: Any = None
    last_raw: bytes = b""
    last_method: str = ""
    last_path: str = ""
    last_query: str = ""
    last_headers: dict[str, str] = field(default_factory=dict)
    last_id: str = ""
    auth: str | None = None  # the last Authorization header seen
    by_path: dict[str, int] = field(default_factory=dict)


class MockUpstream:
    def __init__(self, behaviour: Behaviour) -> None:
        self.b = behaviour
        self.initial = dataclasses.replace(behaviour)  # what `reset` goes back to
        self.stats = Stats()
        self.answered = 0  # numbers the x-request-id of each answer

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        s = self.stats
        s.connections += 1
        s.peak_connections = max(s.peak_connections, s.connections)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                keep = await self._route(method, target, headers, body, writer)
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.stats.connections -= 1
            with contextlib.suppress(Exception):
                writer.close()

    def _headers(self) -> dict[str, str]:
        """Headers for the next answer: a fresh request id and the scripted extras."""
        self.answered += 1
        out = {"x-request-id": f"mock-{self.answered}"}
        if self.b.headers:
            out.update(self.b.headers)
        return out

    async def _route(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        w: asyncio.StreamWriter,
    ) -> bool:
        path, _, query = target.partition("?")
        s = self.stats
        s.by_path[path] = s.by_path.get(path, 0) + 1
        if method == "GET" and path.endswith("/stats"):
            return await _send(w, 200, json.dumps(self._stats()).encode(), self._headers())
        if method == "POST" and path.endswith("/control"):  # change behaviour at run time
            try:
                self._control(json.loads(body or b"{}"))
            except (AttributeError, TypeError, ValueError) as exc:  # unknown field, bad value
                error = _error(repr(exc), "invalid_request_error")
                return await _send(w, 400, error, self._headers())
            return await _send(w, 200, b"{}", self._headers())
        if method == "GET" and path.endswith("/models"):
            data = {"object": "list", "data": [{"id": "mock", "object": "model", "created": 0}]}
            return await _send(w, 200, json.dumps(data).encode(), self._headers())
        extra = self._headers()
        generation = method == "POST" and path.endswith(_GENERATION)
        if not generation and not path.startswith("/v1/"):
            return await _send(w, 404, _error("not found", "not_found_error"), extra)
        s.requests += 1
        s.auth = headers.get("authorization")
        s.last_raw, s.last_method, s.last_path, s.last_query = body, method, path, query
        s.last_headers, s.last_id = headers, extra["x-request-id"]
        request = _json(body) if generation or body[:1] == b"{" else None
        s.last_body = request
        if self.b.drop:  # read, then gone: the client cannot know whether it was done
            w.transport.abort()
            return False
        if self.b.delay_s:
            await asyncio.sleep(self.b.delay_s)
        stream = isinstance(request, dict) and bool(request.get("stream"))
        if self.b.events is not None and stream:
            return await self._stream(w, self.b.events, extra)
        if self.b.answer is not None:
            return await _send(w, self.b.status, self.b.answer, extra, self.b.answer_type)
        if self.b.status != 200:
            if self.b.retry_after:
                extra["retry-after"] = self.b.retry_after
            return await _send(
                w, self.b.status, _error(f"mock {self.b.name} failing", "server_error"), extra
            )
        if not generation:
            echo = json.dumps({"path": path, "method": method}).encode()
            return await _send(w, 200, echo, extra)
        chat = path.endswith("/chat/completions")
        model = request.get("model", "mock") if isinstance(request, dict) else "mock"
        if not stream:
            return await _send(w, 200, json.dumps(_complete(chat, model, self.b)).encode(), extra)
        return await self._stream(w, _frames(chat, model, self.b), extra)

    def _stats(self) -> dict[str, Any]:
        s = self.stats
        return {
            "requests": s.requests,
            "connections": s.connections,
            "peak_connections": s.peak_connections,
            "cancelled": s.cancelled,
            "last_body": s.last_body,
            "last_raw_b64": base64.b64encode(s.last_raw).decode(),
            "last_method": s.last_method,
            "last_path": s.last_path,
            "last_query": s.last_query,
            "last_headers": s.last_headers,
            "last_id": s.last_id,
            "auth": s.auth,
            "name": self.b.name,
        }

    def _control(self, changes: dict[str, Any]) -> None:
        if changes.pop("reset", False):
            self.b = dataclasses.replace(self.initial, headers=dict(self.initial.headers))
            now_open = self.stats.connections
            self.stats = Stats(connections=now_open, peak_connections=now_open)
        for k, v in changes.items():
            if k == "delay_ms":
                self.b.delay_s = v / 1e3
            elif k == "answer_b64":
                self.b.answer = None if v is None else base64.b64decode(v)
            elif k == "events_b64":
                self.b.events = None if v is None else [base64.b64decode(e) for e in v]
            else:
                setattr(self.b, k, v)

    async def _stream(
        self, w: asyncio.StreamWriter, frames: Iterable[bytes], extra: dict[str, str]
    ) -> bool:
        """Sends `frames` (an iterable of SSE frames) as a chunked event stream."""
        status = self.b.status
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        head += "content-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        w.write(head.encode() + b"\r\n")
        try:
            for i, data in enumerate(frames):
                if self.b.die_after is not None and i >= self.b.die_after:
                    w.transport.abort()  # the upstream dies mid-answer
                    return False
                await _chunk(w, data)
                if self.b.delay_s:
                    await asyncio.sleep(self.b.delay_s)
            w.write(b"0\r\n\r\n")
            await w.drain()
        except ConnectionError:
            self.stats.cancelled += 1
            return False
        return True


def _frames(chat: bool, model: str, b: Behaviour) -> Iterator[bytes]:
    """The default stream: `chunks` content chunks, the usage chunk, [DONE]."""
    for i in range(b.chunks):
        yield b"data: " + json.dumps(_piece(chat, model, i, b)).encode() + b"\n\n"
    yield b"data: " + json.dumps(_usage_chunk(chat, model, b)).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


def _json(body: bytes) -> Any:
    try:
        return json.loads(body or b"{}")
    except ValueError:
        return None


async def _chunk(w: asyncio.StreamWriter, data: bytes) -> None:
    w.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await w.drain()
    if w.is_closing() or w.transport.get_extra_info("socket") is None:
        raise ConnectionError("client went away")


async def _send(
    w: asyncio.StreamWriter,
    status: int,
    body: bytes,
    extra: dict[str, str],
    content_type: str = "application/json",
) -> bool:
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-type: {content_type}\r\n"
    head += f"content-length: {len(body)}\r\n"
    for k, v in extra.items():
        head += f"{k}: {v}\r\n"
    w.write(head.encode() + b"\r\n" + body)
    await w.drain()
    return True


def _error(message: str, type_: str) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": None, "code": None}}
    ).encode()


def _usage(b: Behaviour) -> dict[str, int]:
    return {"prompt_tokens": 5, "completion_tokens": b.chunks, "total_tokens": 5 + b.chunks}


def _complete(chat: bool, model: str, b: Behaviour) -> dict[str, Any]:
    text = "".join(f"tok{i} " for i in range(b.chunks))
    base = {"id": "mock-1", "created": int(time.time()), "model": model, "usage": _usage(b)}
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }
        return base | {"object": "chat.completion", "choices": [choice]}
    return base | {
        "object": "text_completion",
        "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
    }


def _piece(chat: bool, model: str, i: int, b: Behaviour) -> dict[str, Any]:
    base = {"id": "mock-1", "created": 0, "model": model}
    last = i == b.chunks - 1
    if chat:
        delta = {"content": f"tok{i} "} | ({"role": "assistant"} if i == 0 else {})
        choice = {"index": 0, "delta": delta, "finish_reason": "stop" if last else None}
        return base | {"object": "chat.completion.chunk", "choices": [choice]}
    choice = {"index": 0, "text": f"tok{i} ", "finish_reason": "stop" if last else None}
    return base | {"object": "text_completion", "choices": [choice]}


def _usage_chunk(chat: bool, model: str, b: Behaviour) -> dict[str, Any]:
    obj = "chat.completion.chunk" if chat else "text_completion"
    return {
        "id": "mock-1",
        "object": obj,
        "created": 0,
        "model": model,
        "choices": [],
        "usage": _usage(b),
    }


async def serve(behaviour: Behaviour, host: str, port: int) -> None:
    mock = MockUpstream(behaviour)
    server = await asyncio.start_server(mock.handle, host, port, backlog=1024)
    print(f"mock upstream {behaviour.name} on http://{host}:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description="fake OpenAI-compatible upstream")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9001)
    ap.add_argument("--name", default="mock")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--status", type=int, default=200)
    ap.add_argument("--retry-after", default=None)
    ap.add_argument("--die-after", type=int, default=None)
    a = ap.parse_args()
    b = Behaviour(a.name, a.chunks, a.delay_ms / 1e3, a.status, a.retry_after, a.die_after)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(b, a.host, a.port))


if __name__ == "__main__":
    main()
