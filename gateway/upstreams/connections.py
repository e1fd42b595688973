"""Connections to one upstream origin: a cap on how many are open, a LIFO pool of idle
keep-alive ones, and the read timeout of one exchange.

- The cap (`max_connections`) counts connections in use; a request that finds them all
  busy waits up to the pool timeout for one, then fails with httpx.PoolTimeout (the
  request was never sent: safe to try elsewhere).
- An idle connection is reused only while it is younger than `keepalive_expiry`: servers
  close idle connections after a few seconds (uvicorn: 5), and a request written into one
  the server is closing may or may not have been read, so it could not be safely retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import httpx


class Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()

    @property
    def usable(self) -> bool:
        # A keep-alive peer that closed meanwhile shows as EOF on the reader.
        return not self.writer.is_closing() and not self.reader.at_eof()


@dataclass(slots=True)
class Origin:
    """One scheme://host:port: its connection slots and its idle connections."""

    max_connections: int
    max_idle: int
    keepalive_expiry: float
    idle: list[tuple[Conn, float]] = field(default_factory=list)  # (conn, idle since)
    slots: asyncio.Semaphore = field(init=False)
    _sweep: asyncio.TimerHandle | None = None

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.max_connections)

    async def acquire(self, timeout: float | None, request: httpx.Request | None) -> None:
        """A slot for one exchange: at once when under the cap, else when one is freed."""
        if not self.slots.locked():
            await self.slots.acquire()  # free: returns without waiting
            return
        try:
            async with asyncio.timeout(timeout):
                await self.slots.acquire()
        except TimeoutError as exc:
            raise httpx.PoolTimeout(
                f"all {self.max_connections} connections to the upstream are busy",
                request=request,
            ) from exc

    def release(self) -> None:
        self.slots.release()

    def take_idle(self) -> Conn | None:
        """The most recently used idle connection still fit for a request, if any."""
        now = time.monotonic()
        while self.idle:
            conn, since = self.idle.pop()
            if conn.usable and now - since < self.keepalive_expiry:
                return conn
            conn.close()
        return None

    def give_back(self, conn: Conn) -> None:
        if len(self.idle) < self.max_idle and conn.usable:
            self.idle.append((conn, time.monotonic()))
            if self._sweep is None:
                self._schedule_sweep()
        else:
            conn.close()

    def _schedule_sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweep = loop.call_later(self.keepalive_expiry, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Closes the idle connections past their expiry or closed by the server, so a
        quiet gateway does not sit on sockets the upstream has given up (CLOSE_WAIT)."""
        self._sweep = None
        now = time.monotonic()
        keep = []
        for conn, since in self.idle:
            if conn.usable and now - since < self.keepalive_expiry:
                keep.append((conn, since))
            else:
                conn.close()
        self.idle = keep
        if keep:
            self._schedule_sweep()

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conn, _ in self.idle:
            conn.close()
        self.idle.clear()


class Watchdog:
    """The read timeout of one exchange (the gap allowed between bytes): each read only
    notes the time, and one timer checks it lazily, aborting the connection once it has
    been quiet that long (the pending read then fails and is reported as a timeout).
    An asyncio.timeout around every read cost more than the read itself."""

    __slots__ = ("_conn", "_handle", "_loop", "_timeout", "fired", "last")

    def __init__(self, conn: Conn, timeout: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._conn, self._timeout = conn, timeout
        self.fired = False
        self.last = self._loop.time()
        self._handle: asyncio.TimerHandle | None = None
        if timeout is not None:
            self._handle = self._loop.call_at(self.last + timeout, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        assert self._timeout is not None
        due = self.last + self._timeout
        if self._loop.time() >= due:
            self.fired, self._handle = True, None
            self._conn.abort()
        else:  # there was progress since: look again when the gap could be up
            self._handle = self._loop.call_at(due, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
