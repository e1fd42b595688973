"""Watching a stream: one Watched layer for every watcher, each told of every chunk and
of the end exactly once (ended, failed, or closed by the reader)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.observe import CLOSED, Watched, drop, watch
from gateway.payload import Chunk

pytestmark = pytest.mark.anyio


class Seen:
    def __init__(self) -> None:
        self.chunks: list[int] = []
        self.ends: list[BaseException | None] = []

    def chunk(self, chunk: Chunk) -> None:
        self.chunks.append(chunk.data["n"])

    async def end(self, error: BaseException | None) -> None:  # may be async
        self.ends.append(error)


async def _numbers(n: int, fail_at: int | None = None) -> AsyncIterator[Chunk]:
    for i in range(n):
        if i == fail_at:
            raise ValueError("upstream broke")
        yield Chunk.of({"n": i})


async def test_one_layer_for_many_watchers_each_told_once() -> None:
    a, b = Seen(), Seen()
    stream = watch(watch(_numbers(3), a), b)
    assert isinstance(stream, Watched) and stream.watchers == [a, b]
    assert [c.data["n"] async for c in stream] == [0, 1, 2]
    assert a.chunks == b.chunks == [0, 1, 2] and a.ends == b.ends == [None]
    await stream.aclose()  # after the end: nobody is told twice
    assert a.ends == [None]


async def test_a_failure_and_a_reader_leaving_reach_the_watchers() -> None:
    failing = Seen()
    with pytest.raises(ValueError):
        [c async for c in watch(_numbers(5, fail_at=2), failing)]
    assert failing.chunks == [0, 1] and isinstance(failing.ends[0], ValueError)
    left = Seen()
    stream = watch(_numbers(5), left)
    await anext(stream)
    await stream.aclose()
    assert left.ends == [CLOSED]


async def test_dropped_chunks_are_seen_by_watchers_not_readers() -> None:
    seen = Seen()
    stream = drop(watch(_numbers(4), seen), lambda c: c.data["n"] % 2 == 1)
    assert [c.data["n"] async for c in stream] == [0, 2]
    assert seen.chunks == [0, 1, 2, 3]


async def test_a_failing_watcher_does_not_cost_the_others_their_end() -> None:
    class Broken(Seen):
        async def end(self, error: BaseException | None) -> None:
            raise RuntimeError("watcher bug")

    after = Seen()
    stream = watch(watch(_numbers(1), Broken()), after)
    assert [c.data["n"] async for c in stream] == [0]
    assert after.ends == [None]
