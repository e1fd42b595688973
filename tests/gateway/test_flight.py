"""A shared stream holds only what its slowest reader has not read yet, up to a bound:
a reader that falls further behind is cut off with an error, the others go on, and a
flight whose first chunks are gone takes no new followers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.call import close_stream
from gateway.flight import Flight, TooSlow
from gateway.payload import Chunk, Payload
from gateway.replay import record

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


async def test_recording_a_subscription_takes_the_answer_the_flight_assembled() -> None:
    """Conversation memory over the exact cache: `record` on a subscription adds to the
    flight's one assembly instead of assembling the same chunks again, and hands the
    answer only to a reader that read to the end."""
    stored: list[Payload] = []
    finished = asyncio.Event()
    flight = Flight()

    async def cache(body: Payload) -> None:
        stored.append(body)

    flight.pump(_upstream(3, 2, finished), cache)
    to_end, gone = flight.subscribe(), flight.subscribe()
    reader_kept: list[Payload] = []
    leaver_kept: list[Payload] = []

    async def keep_reader(body: Payload) -> None:
        reader_kept.append(body)

    async def keep_leaver(body: Payload) -> None:
        leaver_kept.append(body)

    recorded = record(to_end, keep_reader)
    assert recorded is to_end  # no second assembler layered on
    abandoned = record(gone, keep_leaver)
    await anext(abandoned)
    await close_stream(abandoned)  # this client went away mid-answer
    assert len([c async for c in recorded]) == 4
    await finished.wait()
    assert reader_kept == [flight.body] and stored == [flight.body]
    assert reader_kept[0].data["choices"][0]["message"]["content"] == "yyyyyy"
    assert leaver_kept == []


async def test_records_of_one_stream_share_one_assembly_and_each_keeper_gets_it() -> None:
    got: list[tuple[str, Payload]] = []

    def keeper(name: str) -> Callable[[Payload], Awaitable[None]]:
        async def keep(body: Payload) -> None:
            got.append((name, body))

        return keep

    inner = record(_upstream(2, 1, asyncio.Event()), keeper("semantic cache"))
    outer = record(inner, keeper("context"))
    assert outer is inner
    assert len([c async for c in outer]) == 3
    assert [name for name, _ in got] == ["semantic cache", "context"]
    assert got[0][1] is got[1][1]
    assert got[0][1].data["choices"][0]["message"]["content"] == "yy"
