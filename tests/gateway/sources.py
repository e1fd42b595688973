"""A stream's source for tests of what reads streams (replay, SSE): chunks from a real
async generator, optionally failing after them, noting whether it was closed."""

from __future__ import annotations

from collections.abc import AsyncIterator

from gateway.payload import Chunk


class Source:
    """Chunks as an async generator; notes whether its `finally` ran (it was closed)."""

    def __init__(self, chunks: list[Chunk], fail: Exception | None = None) -> None:
        self.chunks, self.fail = chunks, fail
        self.closed = False

    async def __call__(self) -> AsyncIterator[Chunk]:
        try:
            for chunk in self.chunks:
                yield chunk
            if self.fail is not None:
                raise self.fail
        finally:
            self.closed = True
