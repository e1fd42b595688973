"""A shared stream holds only what its slowest reader has not read yet, up to a bound:
a reader that falls further behind is cut off with an error, the others go on, and a
flight whose first chunks are gone takes no new followers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.flight import Flight, TooSlow
from gateway.payload import Chunk, Payload

pytestmark = pytest.mark.anyio


async def _upstream(n: int, size: int, gate: asyncio.Event) -> AsyncIterator[Chunk]:
    head = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    for _ in range(n):
        delta = {"content": "y" * size}
        yield Chunk.of({**head, "choices": [{"index": 0, "delta": delta}]})
        await asyncio.sleep(0)
    end = {"index": 0, "delta": {}, "finish_reason": "stop"}
    yield Chunk.of({**head, "choices": [end]})
    gate.set()


async def test_a_stalled_reader_is_cut_off_and_the_buffer_stays_bounded() -> None:
    kept: list[Payload] = []

    async def keep(body: Payload) -> None:
        kept.append(body)

    finished = asyncio.Event()
    flight = Flight(max_bytes=20_000)
    flight.pump(_upstream(100, 1000, finished), keep)  # ~100 KB in all
    fast, stalled = flight.subscribe(), flight.subscribe()
    first = await anext(stalled)  # reads one chunk, then stops reading
    assert first is not None
    got = [c async for c in fast]
    assert len(got) == 101  # the reader keeping up got everything
    assert flight._bytes <= 20_000  # never held the whole answer for the stalled one
    with pytest.raises(TooSlow):
        await anext(stalled)
    await finished.wait()
    assert len(kept) == 1  # the answer was still complete, and kept
    assert not flight.joinable


async def test_readers_that_keep_up_share_the_stream_and_nothing_stays_buffered() -> None:
    finished = asyncio.Event()
    flight = Flight(max_bytes=20_000)

    async def keep(body: Payload) -> None:
        return None

    flight.pump(_upstream(50, 1000, finished), keep)

    async def read(stream: AsyncIterator[Chunk]) -> list[Chunk]:
        return [c async for c in stream]

    got = await asyncio.gather(read(flight.subscribe()), read(flight.subscribe()))
    assert len(got[0]) == len(got[1]) == 51
    assert flight._bytes == 0 and not flight._buffer  # all read: all dropped
