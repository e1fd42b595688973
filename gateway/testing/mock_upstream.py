"""A fast fake OpenAI-compatible server on raw asyncio streams, for tests, plugin
authors and bench/overhead.py (it must cost far less than what it helps measure).

    python -m gateway.testing.mock_upstream --port 9001 [--chunks 8] [--delay-ms 0]
        [--status 500] [--retry-after 2] [--die-after 3] [--name a]

It answers POST /v1/chat/completions and /v1/completions (JSON, or SSE with `--chunks`
content chunks and a usage chunk), GET /v1/models, GET /stats (requests seen, streams
the client cut off, the last request body, as JSON) and POST /control (a JSON object of
behaviour fields to change: status, chunks, delay_ms, die_after, retry_after). Failure
modes: --status answers every generation request with that status in OpenAI's error
shape (--retry-after adds the header); --die-after N closes the connection after N
chunks of a stream, with no [DONE]. Keep-alive HTTP/1.1, Content-Length bodies only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Behaviour:
    name: str = "mock"
    chunks: int = 8
    delay_s: float = 0.0  # before the answer, and between stream chunks
    status: int = 200
    retry_after: str | None = None
    die_after: int | None = None


@dataclass(slots=True)
class Stats:
    requests: int = 0
    cancelled: int = 0  # streams whose client went away before the end
    last_body: Any = None
    auth: str | None = None  # the last Authorization header seen
    by_path: dict[str, int] = field(default_factory=dict)


class MockUpstream:
    def __init__(self, behaviour: Behaviour) -> None:
        self.b = behaviour
        self.stats = Stats()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                keep = await self._route(method, path, headers, body, writer)
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes, w: asyncio.StreamWriter
    ) -> bool:
        s = self.stats
        s.by_path[path] = s.by_path.get(path, 0) + 1
        if method == "GET" and path.endswith("/stats"):
            payload = {
                "requests": s.requests,
                "cancelled": s.cancelled,
                "last_body": s.last_body,
                "auth": s.auth,
                "name": self.b.name,
            }
            return await _send(w, 200, json.dumps(payload).encode())
        if method == "POST" and path.endswith("/control"):  # change behaviour at run time
            for k, v in json.loads(body or b"{}").items():
                setattr(
                    self.b, "delay_s" if k == "delay_ms" else k, v / 1e3 if k == "delay_ms" else v
                )
            return await _send(w, 200, b"{}")
        if method == "GET" and path.endswith("/models"):
            data = {"object": "list", "data": [{"id": "mock", "object": "model", "created": 0}]}
            return await _send(w, 200, json.dumps(data).encode())
        if method != "POST" or not path.endswith(("/chat/completions", "/completions")):
            return await _send(w, 404, _error("not found", "not_found_error"))
        s.requests += 1
        s.auth = headers.get("authorization")
        request = json.loads(body or b"{}")
        s.last_body = request
        if self.b.delay_s:
            await asyncio.sleep(self.b.delay_s)
        if self.b.status != 200:
            extra = {"retry-after": self.b.retry_after} if self.b.retry_after else {}
            return await _send(
                w, self.b.status, _error(f"mock {self.b.name} failing", "server_error"), extra
            )
        chat = path.endswith("/chat/completions")
        model = request.get("model", "mock")
        if not request.get("stream"):
            return await _send(w, 200, json.dumps(_complete(chat, model, self.b)).encode())
        return await self._stream(w, chat, model)

    async def _stream(self, w: asyncio.StreamWriter, chat: bool, model: str) -> bool:
        w.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        try:
            for i in range(self.b.chunks):
                if self.b.die_after is not None and i >= self.b.die_after:
                    w.transport.abort()  # the upstream dies mid-answer
                    return False
                await _chunk(
                    w, b"data: " + json.dumps(_piece(chat, model, i, self.b)).encode() + b"\n\n"
                )
                if self.b.delay_s:
                    await asyncio.sleep(self.b.delay_s)
            await _chunk(
                w, b"data: " + json.dumps(_usage_chunk(chat, model, self.b)).encode() + b"\n\n"
            )
            await _chunk(w, b"data: [DONE]\n\n")
            w.write(b"0\r\n\r\n")
            await w.drain()
        except ConnectionError:
            self.stats.cancelled += 1
            return False
        return True


async def _chunk(w: asyncio.StreamWriter, data: bytes) -> None:
    w.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await w.drain()
    if w.is_closing() or w.transport.get_extra_info("socket") is None:
        raise ConnectionError("client went away")


async def _send(
    w: asyncio.StreamWriter, status: int, body: bytes, extra: dict[str, str] | None = None
) -> bool:
    reason = {200: "OK", 404: "Not Found", 429: "Too Many Requests"}.get(status, "Error")
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
    head += f"content-length: {len(body)}\r\n"
    for k, v in (extra or {}).items():
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
