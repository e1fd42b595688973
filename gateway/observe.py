"""Watching a stream without adding a layer to it.

Metrics (first-token time, usage), tracing (the span's attributes and its end), routing
(the backend's outcome) and admission (the place a stream holds) each need to see a
stream's chunks or its end, not change them. Each used to wrap the stream in a generator
of its own: five layers every chunk passed through. `watch(stream, watcher)` puts them
all on one `Watched` stream: one layer, however many watch.

A watcher has `chunk(chunk)`, called for every chunk on its way out, and `end(error)`,
called exactly once: with None when the stream ended, with the exception it raised, or
with `CLOSED` when the reader closed it early (a client that went away). `end` may be a
coroutine function (it is awaited). Watchers run in the order they were added, which is
from the inside out: the one nearest the upstream first.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from gateway.call import close_stream
from gateway.payload import Chunk

log = logging.getLogger(__name__)


class _Closed(Exception):
    """The reader closed the stream before its end."""


CLOSED = _Closed()


class Watcher(Protocol):
    def chunk(self, chunk: Chunk) -> None: ...

    def end(self, error: BaseException | None) -> Any: ...


class Watched:
    __slots__ = ("_done", "_stream", "drop", "watchers")

    def __init__(self, stream: AsyncIterator[Chunk]) -> None:
        self._stream = stream
        self.watchers: list[Watcher] = []
        # Chunks to leave out of what the reader gets (after the watchers saw them).
        self.drop: Callable[[Chunk], bool] | None = None
        self._done = False

    def __aiter__(self) -> Watched:
        return self

    async def __anext__(self) -> Chunk:
        while True:
            try:
                chunk = await self._stream.__anext__()
            except StopAsyncIteration:
                await self._end(None)
                raise
            except BaseException as exc:
                await self._end(exc)
                raise
            for watcher in self.watchers:
                watcher.chunk(chunk)
            if self.drop is None or not self.drop(chunk):
                return chunk

    async def aclose(self) -> None:
        try:
            await close_stream(self._stream)
        finally:
            await self._end(CLOSED)

    async def _end(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        for watcher in self.watchers:
            try:
                result = watcher.end(error)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # one watcher's failure must not cost the others their end
                log.exception("a stream watcher failed at the end of its stream")


def watch(stream: AsyncIterator[Chunk], watcher: Watcher) -> Watched:
    """`stream` with `watcher` on it: the same Watched when it already is one."""
    watched = stream if isinstance(stream, Watched) else Watched(stream)
    watched.watchers.append(watcher)
    return watched


def drop(stream: AsyncIterator[Chunk], unwanted: Callable[[Chunk], bool]) -> Watched:
    """`stream` without the chunks `unwanted` picks (watchers still see them)."""
    watched = stream if isinstance(stream, Watched) else Watched(stream)
    previous = watched.drop
    watched.drop = unwanted if previous is None else (lambda c: previous(c) or unwanted(c))
    return watched
