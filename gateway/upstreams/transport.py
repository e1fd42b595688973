"""A lean HTTP/1.1 transport for httpx, on asyncio streams.

httpx's default pool (httpcore) scans every pooled connection and polls its socket on
each request, so its cost grows with concurrency: measured on this project's 2-core
machine behind the gateway, ~1.2 ms added at one client and p99 over 100 ms at 16. This
transport keeps what a gateway needs and nothing else: per-origin LIFO pools of idle
keep-alive connections (take one, or open one; give it back once its response was read
to the end), Content-Length and chunked bodies streamed as they arrive, connect and
read timeouts, TLS through asyncio's ssl support. HTTP/1.1 only; no proxies, no
redirects, no HTTP/2 (an upstream is a known server, not the open web).

httpx keeps its API on top (headers, timeouts, errors: httpx.ConnectError,
httpx.ReadTimeout, httpx.RemoteProtocolError), so the upstream client code does not
change; pass `transport=LeanTransport()` to httpx.AsyncClient.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable

import httpx

_MAX_HEAD = 64 * 1024


class _Conn:
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


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_idle_per_origin: int = 256, ssl_context: ssl.SSLContext | None = None):
        self.max_idle = max_idle_per_origin
        self._ssl = ssl_context
        self._idle: defaultdict[tuple[str, str, int], list[_Conn]] = defaultdict(list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await request.aread()
        timeouts = request.extensions.get("timeout", {})
        return await self.send(
            request.method, request.url, request.headers.raw, body, timeouts, request
        )

    async def send(
        self,
        method: str,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: dict[str, float],
        request: httpx.Request | None = None,
    ) -> httpx.Response:
        """One exchange without building an httpx.Request (~20 µs a request, more than
        the rest of this transport's work): what the gateway's upstream client calls.
        `headers`: raw (name, value) pairs; `timeouts`: connect and read, seconds."""
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme!r}", request=request)
        port = url.port or (443 if scheme == "https" else 80)
        origin = (scheme, url.host, port)
        head = self._head(method, url, headers, len(body))
        for attempt in (0, 1):  # a pooled connection may have been closed by the peer
            reused, conn = await self._connection(origin, timeouts.get("connect"), request)
            conn.writer.write(head + body)
            watchdog = _Watchdog(conn, timeouts.get("read"))
            try:
                status, headers = await self._read_head(conn, request)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                watchdog.cancel()
                conn.close()
                if watchdog.fired:
                    raise httpx.ReadTimeout(
                        "timed out waiting for the response", request=request
                    ) from exc
                if reused and attempt == 0:
                    continue  # stale keep-alive connection: retry once on a fresh one
                raise httpx.RemoteProtocolError(
                    f"connection lost: {exc!r}", request=request
                ) from exc
            except BaseException:
                watchdog.cancel()
                conn.close()
                raise
            watchdog.touch()
            stream = _Body(self, origin, conn, headers, watchdog, request)
            return httpx.Response(status, headers=headers, stream=stream, request=request)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()

    # ---- internals ---------------------------------------------------------------------

    def _head(
        self, method: str, url: httpx.URL, headers: list[tuple[bytes, bytes]], length: int
    ) -> bytes:
        lines = [method.encode() + b" " + url.raw_path + b" HTTP/1.1"]
        has_host = False
        for k, v in headers:
            lk = k.lower()
            if lk == b"host":
                has_host = True
            if lk in (b"content-length", b"transfer-encoding", b"connection"):
                continue
            lines.append(k + b": " + v)
        if not has_host:
            lines.append(b"host: " + url.netloc)
        if length or method in ("POST", "PUT", "PATCH"):
            lines.append(b"content-length: " + str(length).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def _connection(
        self, origin: tuple[str, str, int], timeout: float | None, request: httpx.Request | None
    ) -> tuple[bool, _Conn]:
        idle = self._idle[origin]
        while idle:
            conn = idle.pop()
            if conn.usable:
                return True, conn
            conn.close()
        scheme, host, port = origin
        context = None
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, limit=_MAX_HEAD
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"connect to {host}:{port} timed out", request=request
            ) from exc
        except OSError as exc:
            raise httpx.ConnectError(
                f"cannot connect to {host}:{port}: {exc}", request=request
            ) from exc
        return False, _Conn(reader, writer)

    async def _read_head(
        self, conn: _Conn, request: httpx.Request | None
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        try:
            raw = await conn.reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise httpx.RemoteProtocolError("response head too large", request=request) from exc
        lines = raw[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise httpx.RemoteProtocolError(f"bad status line {lines[0][:80]!r}", request=request)
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers.append((k.strip(), v.strip()))
        return int(parts[1]), headers

    def _release(self, origin: tuple[str, str, int], conn: _Conn) -> None:
        idle = self._idle[origin]
        if len(idle) < self.max_idle and conn.usable:
            idle.append(conn)
        else:
            conn.close()


class _Watchdog:
    """The read timeout of one exchange (the gap allowed between bytes): each read only
    notes the time, and one timer checks it lazily, aborting the connection once it has
    been quiet that long (the pending read then fails and is reported as a timeout).
    An asyncio.timeout around every read cost more than the read itself."""

    __slots__ = ("_conn", "_handle", "_loop", "_timeout", "fired", "last")

    def __init__(self, conn: _Conn, timeout: float | None) -> None:
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


class _Body(httpx.AsyncByteStream):
    """The response body, read as it arrives; the connection goes back to the pool when
    the body was read to its end, and is closed if the reader stops early."""

    def __init__(
        self,
        transport: LeanTransport,
        origin: tuple[str, str, int],
        conn: _Conn,
        headers: list[tuple[bytes, bytes]],
        watchdog: _Watchdog,
        request: httpx.Request | None,
    ) -> None:
        self.transport, self.origin, self.conn = transport, origin, conn
        self.watchdog, self.request = watchdog, request
        self.length: int | None = None
        self.chunked = False
        self.keep_alive = True
        for k, v in headers:
            lk = k.lower()
            if lk == b"content-length":
                self.length = int(v)
            elif lk == b"transfer-encoding" and b"chunked" in v.lower():
                self.chunked = True
            elif lk == b"connection" and v.lower() == b"close":
                self.keep_alive = False
        self.done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """The body as it arrives: one piece per read of the socket (for a chunked body,
        every HTTP chunk that read completed, joined), so a burst of server-sent events
        costs one pass through the layers above rather than one per event."""
        reader = self.conn.reader
        try:
            if self.chunked:
                async for data in self._chunked(reader):
                    yield data
            elif self.length is not None:
                left = self.length
                while left:
                    data = await self._read(reader.read(min(left, 65536)))
                    if not data:
                        raise httpx.RemoteProtocolError("body ended early", request=self.request)
                    left -= len(data)
                    yield data
            else:  # neither: the body runs to the end of the connection
                self.keep_alive = False
                while data := await self._read(reader.read(65536)):
                    yield data
            self.done = True
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            raise httpx.RemoteProtocolError(
                f"connection lost: {exc!r}", request=self.request
            ) from exc

    async def _chunked(self, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        buffer = b""
        while True:
            parts: list[bytes] = []
            while True:  # every chunk the buffer holds whole
                eol = buffer.find(b"\r\n")
                if eol < 0:
                    break
                try:
                    size = int(buffer[:eol].split(b";")[0].strip(), 16)
                except ValueError:
                    raise httpx.RemoteProtocolError(
                        "bad chunk size line", request=self.request
                    ) from None
                if size == 0:
                    end = buffer.find(b"\r\n\r\n", eol)  # the last chunk, then trailers
                    if end < 0:
                        break
                    if len(buffer) > end + 4:
                        self.keep_alive = False  # bytes past the body: not reusable
                    if parts:
                        yield b"".join(parts)
                    return
                if len(buffer) < eol + size + 4:
                    break
                parts.append(buffer[eol + 2 : eol + 2 + size])
                buffer = buffer[eol + size + 4 :]
            if parts:
                yield b"".join(parts) if len(parts) > 1 else parts[0]
            data = await self._read(reader.read(65536))
            if not data:
                raise httpx.RemoteProtocolError("body ended early", request=self.request)
            buffer = buffer + data if buffer else data

    async def _read(self, aw: Awaitable[bytes]) -> bytes:
        try:
            data = await aw
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if self.watchdog.fired:
                raise self._timed_out() from exc
            raise
        if not data and self.watchdog.fired:
            raise self._timed_out()
        self.watchdog.touch()
        return data

    def _timed_out(self) -> httpx.ReadTimeout:
        return httpx.ReadTimeout("timed out reading the response", request=self.request)

    async def aclose(self) -> None:
        self.watchdog.cancel()
        if self.done and self.keep_alive:
            self.transport._release(self.origin, self.conn)
        else:
            self.conn.close()  # read partly: the connection's state is unknown
