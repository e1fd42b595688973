"""A lean HTTP/1.1 transport for the gateway's upstream calls, on asyncio streams.

httpx's default pool (httpcore) scans every pooled connection and polls its socket on
each request, so its cost grows with concurrency: measured on this project's 2-core
machine behind the gateway, ~1.2 ms added at one client and p99 over 100 ms at 16. This
transport keeps what a gateway needs and nothing else: per-origin connection caps and
LIFO pools of idle keep-alive connections (gateway/upstreams/connections.py), bodies
streamed as they arrive, connect/read/write/pool timeouts, TLS with one SSL context.
HTTP/1.1 only; no redirects, no HTTP/2 (an upstream is a known server, not the open
web); an upstream reached through a proxy uses httpx's own transport instead
(gateway/upstreams/proxied.py).

Nothing is sent twice: a request goes on a fresh connection after a reused one failed
only when its method is idempotent (GET, HEAD, OPTIONS, DELETE, PUT). A POST written to
a connection that then fails may have been read by the upstream: it fails with
httpx.RemoteProtocolError, and the caller must not retry it (urllib3 and httpx draw the
same line).

httpx keeps its API on top (URL, Response, errors: httpx.ConnectError,
httpx.ReadTimeout, httpx.PoolTimeout, httpx.RemoteProtocolError), and
`handle_async_request` serves httpx.AsyncClient too; the gateway calls `send`, which
skips building an httpx.Request.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Mapping

import httpx

from gateway.upstreams.connections import Conn, Origin, Watchdog

_MAX_HEAD = 64 * 1024
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        max_connections: int = 512,
        max_idle_per_origin: int = 256,
        keepalive_expiry: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.max_idle = max_idle_per_origin
        self.keepalive_expiry = keepalive_expiry
        self._ssl = ssl_context
        self._origins: dict[tuple[str, str, int], Origin] = {}

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
        timeouts: Mapping[str, float | None],
        request: httpx.Request | None = None,
    ) -> httpx.Response:
        """One exchange without building an httpx.Request (~20 µs a request, more than
        the rest of this transport's work). `headers`: raw (name, value) pairs;
        `timeouts`: connect, read, write and pool, seconds."""
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme!r}", request=request)
        port = url.port or (443 if scheme == "https" else 80)
        origin = self._origin((scheme, url.host, port))
        await origin.acquire(timeouts.get("pool"), request)
        try:
            return await self._exchange(origin, method, url, headers, body, timeouts, request)
        except BaseException:
            origin.release()  # on success the body holds the slot until it is closed
            raise

    async def _exchange(
        self,
        origin: Origin,
        method: str,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: Mapping[str, float | None],
        request: httpx.Request | None,
    ) -> httpx.Response:
        head = self._head(method, url, headers, len(body))
        conn = origin.take_idle()
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self._connect(url, timeouts.get("connect"), request)
            watchdog = Watchdog(conn, timeouts.get("read"))
            try:
                await self._write(conn, head + body, timeouts.get("write"), request)
                status, response_headers = await self._read_head(conn, request)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                watchdog.cancel()
                conn.close()
                if watchdog.fired:
                    raise httpx.ReadTimeout(
                        "timed out waiting for the response", request=request
                    ) from exc
                if reused and method in IDEMPOTENT:
                    conn, reused = None, False  # a stale keep-alive connection: once more
                    continue
                raise httpx.RemoteProtocolError(
                    f"connection lost after the request was sent: {exc!r}", request=request
                ) from exc
            except BaseException:
                watchdog.cancel()
                conn.close()
                raise
            watchdog.touch()
            stream = _Body(origin, conn, response_headers, watchdog, request)
            return httpx.Response(status, headers=response_headers, stream=stream, request=request)

    async def aclose(self) -> None:
        for origin in self._origins.values():
            origin.close()

    # ---- internals ---------------------------------------------------------------------

    def _origin(self, key: tuple[str, str, int]) -> Origin:
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = Origin(
                self.max_connections, self.max_idle, self.keepalive_expiry
            )
        return origin

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

    async def _connect(
        self, url: httpx.URL, timeout: float | None, request: httpx.Request | None
    ) -> Conn:
        host, port = url.host, url.port or (443 if url.scheme == "https" else 80)
        context = None
        if url.scheme == "https":
            if self._ssl is None:  # loading the CA bundle costs milliseconds: do it once
                self._ssl = ssl.create_default_context()
            context = self._ssl
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
        return Conn(reader, writer)

    async def _write(
        self, conn: Conn, data: bytes, timeout: float | None, request: httpx.Request | None
    ) -> None:
        conn.writer.write(data)
        if conn.writer.transport.get_write_buffer_size() == 0:
            return  # all in the kernel already (the usual case): nothing to wait for
        try:
            async with asyncio.timeout(timeout):
                await conn.writer.drain()
        except TimeoutError as exc:
            raise httpx.WriteTimeout("timed out sending the request", request=request) from exc

    async def _read_head(
        self, conn: Conn, request: httpx.Request | None
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


class _Body(httpx.AsyncByteStream):
    """The response body, read as it arrives; the connection goes back to the pool when
    the body was read to its end, and is closed if the reader stops early."""

    def __init__(
        self,
        origin: Origin,
        conn: Conn,
        headers: list[tuple[bytes, bytes]],
        watchdog: Watchdog,
        request: httpx.Request | None,
    ) -> None:
        self.origin, self.conn = origin, conn
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
        self.closed = False

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
        if self.closed:
            return
        self.closed = True
        self.watchdog.cancel()
        if self.done and self.keep_alive:
            self.origin.give_back(self.conn)
        else:
            self.conn.close()  # read partly: the connection's state is unknown
        self.origin.release()
