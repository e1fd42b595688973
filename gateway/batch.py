"""Events that arrive together leave together.

An upstream's server-sent events often come several to one socket read (under load
almost always). Writing each to the client on its own costs a system call and a pass
through the HTTP server per event: the largest share of the gateway's CPU on streams
(py-spy at 16 streaming clients: ~45% in socket writes). So the edge gives each stream
a `Batch` (through a context variable: the chain's generators run in the edge's task
and see it), and the upstream reader marks a read's events as one burst: `hold()`
before yielding them, `await release()` once they are all out and before it waits on
the socket again. Frames the edge receives while a burst is held are kept and written
in one piece at `release()`; frames outside a burst (a cache replay, the engine, any
stream without such a reader) are written at once. Nothing is ever held across a wait
for the upstream, so batching adds no latency.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar


class Batch:
    __slots__ = ("_write", "holding", "parts")

    def __init__(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        self._write = write
        self.holding = False
        self.parts: list[bytes] = []

    def hold(self) -> None:
        self.holding = True

    async def release(self) -> None:
        self.holding = False
        await self.flush()

    async def add(self, frame: bytes) -> None:
        self.parts.append(frame)
        if not self.holding:
            await self.flush()

    async def flush(self) -> None:
        if self.parts:
            parts, self.parts = self.parts, []
            await self._write(parts[0] if len(parts) == 1 else b"".join(parts))

    def take(self) -> bytes:
        """What is waiting, taken out (to go with the answer's last write)."""
        parts, self.parts = self.parts, []
        return b"".join(parts)


_current: ContextVar[Batch | None] = ContextVar("llm_gateway_batch", default=None)


def current_batch() -> Batch | None:
    """The batch of the stream the running code feeds, if the edge set one."""
    return _current.get()


def use_batch(batch: Batch) -> None:
    """Sets the batch for the running task (the edge's writer, before it reads)."""
    _current.set(batch)
