"""Stamps each reply with `<header>: tenant=<tenant>; below_ms=<ms>` and counts streamed
chunks into the final chunk's system_fingerprint ("...+chunks=<n>")."""

from __future__ import annotations

import time

from gateway.call import Call, Chunk, Reply
from gateway.plugin import Next, Plugin

__all__ = ["Stamp"]

CHUNKS = "stamp.chunks"  # call.state key: per-call state lives on the call


class Stamp(Plugin):
    name = "stamp"

    def __init__(self, *, header: str = "x-stamp") -> None:
        self.header = header
        self.calls = 0  # across calls: fine on the instance (not per-call state)

    async def handle(self, *, call: Call, call_next: Next) -> Reply:
        self.calls += 1
        began = time.perf_counter()
        reply = await call_next(call)
        below_ms = (time.perf_counter() - began) * 1e3
        reply.headers[self.header] = f"tenant={call.tenant}; below_ms={below_ms:.2f}"
        return reply

    async def on_chunk(self, *, call: Call, chunk: Chunk) -> Chunk:
        count = call.state.get(CHUNKS, 0) + 1
        call.state[CHUNKS] = count
        data = chunk.data  # the chunk's JSON, every field (read-only: make a new chunk)
        if data.get("usage") is not None:  # the usage chunk closes a stream
            fingerprint = f"{data.get('system_fingerprint') or ''}+chunks={count}"
            return Chunk.of({**data, "system_fingerprint": fingerprint})
        return chunk
