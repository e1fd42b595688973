"""Single flight: identical requests in flight at once go upstream once and share it.

The first caller of a key becomes the flight's leader and makes the upstream call;
callers that arrive before it finishes follow it instead of calling upstream again.

- A complete answer: followers wait for it and get the same body.
- A stream: a pump task reads the upstream stream into a buffer and every subscriber
  (the leader's client included) reads the buffer at its own pace, so no client's
  speed or departure holds the others back. Chunks everyone has read are dropped; a
  subscriber so far behind that the buffer would pass `max_bytes` is cut off (its
  stream ends with an error), and a flight whose first chunks are gone takes no new
  followers. The upstream generation is cancelled only when the last subscriber has
  gone.
- A failure before anything was sent (the leader's call raised) lets each follower try
  on its own; a stream that breaks mid-way breaks for every subscriber, as it did for
  the leader (their clients have part of the answer already).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

from gateway.call import close_stream
from gateway.errors import OpenAIError
from gateway.payload import Chunk, Payload
from gateway.replay import Keep, hand_over, record

# What a shared stream may hold for its slowest reader (chunks everyone has read are
# dropped); past it, the readers furthest behind are cut off.
MAX_BUFFER_BYTES = 8 * 2**20


class Flight:
    __slots__ = (
        "_base",
        "_buffer",
        "_bytes",
        "_changed",
        "_cut",
        "_next_id",
        "_on_settle",
        "_positions",
        "_pump",
        "_stream_opened",
        "body",
        "error",
        "finished",
        "max_bytes",
        "subscribers",
    )

    def __init__(
        self, on_settle: Callable[[], None] | None = None, max_bytes: int = MAX_BUFFER_BYTES
    ) -> None:
        self.body: Payload | None = None  # the complete answer, once there is one
        self.error: BaseException | None = None
        self.finished = False
        self.subscribers = 0
        self.max_bytes = max_bytes
        # Chunks not yet read by every subscriber: _buffer[0] is chunk number _base.
        self._buffer: deque[Chunk] = deque()
        self._base = 0
        self._bytes = 0
        self._positions: dict[int, int] = {}  # subscriber -> number of its next chunk
        self._cut: set[int] = set()  # subscribers dropped for falling too far behind
        self._next_id = 0
        self._changed = asyncio.Event()
        self._stream_opened = False
        self._pump: asyncio.Task[None] | None = None
        self._on_settle = on_settle  # Flights forgets the key: later callers start anew

    @property
    def joinable(self) -> bool:
        """Whether a new subscriber can still get the stream from its first chunk."""
        return self._base == 0

    @property
    def streaming(self) -> bool:
        return self._stream_opened

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_started(self) -> None:
        """Until the leader's stream opened or its answer (or failure) is in."""
        while not (self._stream_opened or self.finished):
            await self._changed.wait()

    async def wait_finished(self) -> None:
        while not self.finished:
            await self._changed.wait()

    # ---- the leader's side --------------------------------------------------------------

    def settle(self, body: Payload | None, error: BaseException | None = None) -> None:
        self.body, self.error, self.finished = body, error, True
        if self._on_settle is not None:
            self._on_settle()
        self._notify()

    def pump(
        self, stream: AsyncIterator[Chunk], on_complete: Callable[[Payload], Awaitable[None]]
    ) -> None:
        """Starts reading the leader's upstream stream into the buffer."""
        self._stream_opened = True
        self._pump = asyncio.create_task(self._run(stream, on_complete))
        self._notify()

    async def _run(
        self, stream: AsyncIterator[Chunk], on_complete: Callable[[Payload], Awaitable[None]]
    ) -> None:
        kept: list[Payload] = []  # record() hands over the answer only when it is complete

        async def keep(body: Payload) -> None:
            kept.append(body)

        try:
            async for chunk in record(stream, keep):
                self._buffer.append(chunk)
                self._bytes += len(chunk.raw)
                if self._bytes > self.max_bytes:
                    self._drop_slowest()
                self._notify()
        except BaseException as exc:
            self.settle(None, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        body = kept[0] if kept else None
        self.settle(body, None if body is not None else _CutOff())
        if body is not None:
            await on_complete(body)

    # ---- every subscriber's side --------------------------------------------------------

    def subscribe(self, keep: Callable[[Chunk], bool] | None = None) -> AsyncIterator[Chunk]:
        """The stream's chunks from the first, as they arrive (those `keep` accepts).
        Counted as a subscriber from now, not from its first read: a client that has
        not started reading yet must keep the generation alive."""
        assert self.joinable, "the stream's first chunks are gone: follow no more"
        self.subscribers += 1
        sid, self._next_id = self._next_id, self._next_id + 1
        self._positions[sid] = 0
        return _Subscription(self, keep, sid)

    async def _read(self, keep: Callable[[Chunk], bool] | None, sid: int) -> AsyncIterator[Chunk]:
        i = 0
        try:
            while True:
                while i < self._base + len(self._buffer):
                    if sid in self._cut:
                        raise TooSlow()
                    chunk = self._buffer[i - self._base]
                    i += 1
                    self._positions[sid] = i
                    if i - 1 == self._base:
                        self._trim()
                    if keep is None or keep(chunk):
                        yield chunk
                if sid in self._cut:
                    raise TooSlow()
                if self.finished:
                    if self.error is not None and not isinstance(self.error, _CutOff):
                        raise self.error
                    return
                await self._changed.wait()
        finally:
            await self._leave(sid)

    def _trim(self) -> None:
        """Drops the chunks every subscriber has read."""
        low = min(self._positions.values(), default=self._base + len(self._buffer))
        while self._base < low and self._buffer:
            self._bytes -= len(self._buffer.popleft().raw)
            self._base += 1

    def _drop_slowest(self) -> None:
        """The buffer is over its bound: the subscribers furthest behind are cut off (their
        streams end with an error), so one stalled client cannot make the gateway hold a
        whole answer for everyone. The leader's own pump keeps going for the others."""
        while self._bytes > self.max_bytes and self._positions:
            low = min(self._positions.values())
            for sid, position in list(self._positions.items()):
                if position == low:
                    self._cut.add(sid)
                    del self._positions[sid]
            self._trim()

    async def _leave(self, sid: int | None = None) -> None:
        if sid is not None:
            self._positions.pop(sid, None)
            self._cut.discard(sid)
            self._trim()
        self.subscribers -= 1
        if self.subscribers == 0 and not self.finished and self._pump is not None:
            self._pump.cancel()  # nobody is listening: stop the generation upstream
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump


class _Subscription:
    """One reader of a flight's stream; leaving counts even before the first read."""

    __slots__ = ("_flight", "_gen", "_keep", "_keeps", "_left", "_sid")

    def __init__(self, flight: Flight, keep: Callable[[Chunk], bool] | None, sid: int) -> None:
        self._flight, self._keep, self._sid = flight, keep, sid
        self._gen: AsyncIterator[Chunk] | None = None
        self._left = False
        self._keeps: list[Keep] = []

    def on_complete(self, keep: Keep) -> None:
        """`keep` gets the flight's answer (assembled once, by the pump) if this reader
        reads it to its clean end (gateway/replay.py's record)."""
        self._keeps.append(keep)

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> Chunk:
        if self._left:
            raise StopAsyncIteration
        if self._gen is None:
            self._gen = self._flight._read(self._keep, self._sid)
        try:
            return await anext(self._gen)
        except StopAsyncIteration:
            self._left = True
            body = self._flight.body
            if body is not None and self._keeps:
                await hand_over(self._keeps, body)
            raise
        except BaseException:
            self._left = True
            raise

    async def aclose(self) -> None:
        if self._left:
            return
        self._left = True
        if self._gen is None:
            await self._flight._leave(self._sid)
        else:
            await close_stream(self._gen)


class TooSlow(OpenAIError):
    """A subscriber fell so far behind a shared stream that keeping its part would have
    meant holding more than the flight's bound: its stream ends with this error."""

    status_code = 503
    error_type = "server_error"

    def __init__(self) -> None:
        super().__init__(
            "This stream was read too slowly and was cut off; ask again.", code="client_too_slow"
        )


class _CutOff(Exception):
    """The upstream stream ended without finishing every choice (nothing to keep)."""


class Flights:
    """The flights in progress, by key."""

    def __init__(self) -> None:
        self._by_key: dict[str, Flight] = {}

    def get(self, key: str) -> Flight | None:
        return self._by_key.get(key)

    def start(self, key: str) -> Flight:
        flight = Flight(lambda: self.end(key, flight))
        self._by_key[key] = flight
        return flight

    def end(self, key: str, flight: Flight) -> None:
        if self._by_key.get(key) is flight:
            del self._by_key[key]

    def __len__(self) -> int:
        return len(self._by_key)
