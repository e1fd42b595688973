"""LeanTransport (gateway/upstreams/transport.py) against a real HTTP/1.1 server on a
loopback port, written here on asyncio streams so each test scripts the server's side.

Asserted: requests arrive with their method, target, headers and body, and responses
come back whole (through `send` and through httpx.AsyncClient); a chunked body is handed
over chunk by chunk as it arrives; a connection is reused once its body was read to the
end, and not when the server said `connection: close` or the reader stopped early; with
`max_connections=1` a second request waits for the connection and then gets that same
one, or fails with httpx.PoolTimeout unsent; refused connections, silent servers and
stalled bodies become httpx.ConnectError / httpx.ReadTimeout; and nothing is sent twice:
a GET on a reused connection the server dropped goes again on a fresh one, while a POST
fails with httpx.RemoteProtocolError, and a failure on a fresh connection is never retried.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.upstreams.transport import LeanTransport

pytestmark = pytest.mark.anyio

TIMEOUTS = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}


@dataclass(frozen=True)
class Received:
    """One request as the server read it."""

    index: int  # 1 for the first request the server read, 2 for the next, ...
    connection: int  # 1 for the first connection the server accepted, ...
    method: str
    target: str
    headers: list[tuple[str, str]]  # names lower-cased, in order
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


# Writes the response to one request; returns whether to read another on the connection.
Answer = Callable[[Received, asyncio.StreamWriter], Awaitable[bool]]


class Upstream:
    """A raw HTTP/1.1 server on a loopback port that records every request it reads.
    `answer` writes each response; returning False closes the connection, so a request
    read and then dropped is one `answer` that writes nothing and returns False."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.received: list[Received] = []
        self.connections = 0
        self._handlers: list[asyncio.Task[Any]] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = httpx.URL(f"http://127.0.0.1:{port}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._handlers:
            task.cancel()  # handlers still waiting on a test's event
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.append(task)
        try:
            while (request := await self._read(reader, connection)) is not None:
                self.received.append(request)
                if not await self.answer(request, writer):
                    break
        except ConnectionError:
            pass  # the client went away
        finally:
            writer.close()

    async def _read(self, reader: asyncio.StreamReader, connection: int) -> Received | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # the client closed the connection
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        length = int(dict(headers).get("content-length", "0"))
        body = await reader.readexactly(length)
        index = len(self.received) + 1
        return Received(index, connection, method, target, headers, body)


def _response(body: bytes, *headers: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"content-length: {len(body)}", *headers]
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


async def _echo(request: Received, writer: asyncio.StreamWriter) -> bool:
    """Answers `METHOD target body`, keeping the connection."""
    writer.write(_response(f"{request.method} {request.target} ".encode() + request.body))
    await writer.drain()
    return True


def _drop(*indices: int) -> Answer:
    """Echoes, except that the requests with these indices are read and then dropped."""

    async def answer(request: Received, writer: asyncio.StreamWriter) -> bool:
        if request.index in indices:
            return False
        return await _echo(request, writer)

    return answer


def _in_two_parts(first: bytes, then: bytes, go: asyncio.Event) -> Answer:
    """Answers the first request with `first`, then `then` once `go` is set (never, for
    an event nobody sets); echoes the requests after it."""

    async def answer(request: Received, writer: asyncio.StreamWriter) -> bool:
        if request.index > 1:
            return await _echo(request, writer)
        writer.write(first)
        await writer.drain()
        await go.wait()  # until set, or until the server's teardown cancels the handler
        writer.write(then)
        await writer.drain()
        return True

    return answer


async def _get(transport: LeanTransport, url: httpx.URL, **timeouts: float) -> bytes:
    response = await transport.send("GET", url, [], b"", {**TIMEOUTS, **timeouts})
    return await response.aread()  # reads to the end, then closes the body


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_get_and_a_post_go_through_with_their_headers_and_body() -> None:
    async def answer(request: Received, writer: asyncio.StreamWriter) -> bool:
        writer.write(_response(b"got:" + request.body, "x-upstream: yes"))
        await writer.drain()
        return True

    async with Upstream(answer) as up:
        transport = LeanTransport()
        try:
            headers = [(b"x-test", b"1")]
            get = await transport.send("GET", up.url.join("/a?b=1"), headers, b"", TIMEOUTS)
            assert get.status_code == 200 and get.headers["x-upstream"] == "yes"
            assert await get.aread() == b"got:"
            post = await transport.send("POST", up.url.join("/p"), headers, b"{}", TIMEOUTS)
            assert await post.aread() == b"got:{}"
            empty = await transport.send("POST", up.url.join("/e"), [], b"", TIMEOUTS)
            assert await empty.aread() == b"got:"
        finally:
            await transport.aclose()
    get_seen, post_seen, empty_seen = up.received
    assert (get_seen.method, get_seen.target, get_seen.body) == ("GET", "/a?b=1", b"")
    assert get_seen.header("x-test") == ["1"]
    assert get_seen.header("host") == [up.url.netloc.decode()]
    assert get_seen.header("content-length") == []  # a GET without a body says nothing
    assert (post_seen.method, post_seen.target, post_seen.body) == ("POST", "/p", b"{}")
    assert post_seen.header("content-length") == ["2"]
    assert empty_seen.header("content-length") == ["0"]  # a POST always says its length


async def test_it_serves_httpx_async_client() -> None:
    async with (
        Upstream(_echo) as up,
        httpx.AsyncClient(transport=LeanTransport(), base_url=up.url) as client,
    ):
        reply = await client.post("/v1/x", json={"a": 1})
    assert reply.status_code == 200 and reply.text == 'POST /v1/x {"a":1}'
    (seen,) = up.received
    assert seen.header("content-type") == ["application/json"]
    assert seen.header("content-length") == [str(len(seen.body))]
    assert seen.header("connection") == []  # the transport frames the exchange itself


async def test_a_chunked_body_arrives_chunk_by_chunk() -> None:
    more = asyncio.Event()  # the rest only once the client holds the first chunk
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    answer = _in_two_parts(head + b"6;ext=1\r\nhello \r\n", b"5\r\nworld\r\n0\r\n\r\n", more)
    async with Upstream(answer) as up:
        transport = LeanTransport()
        try:
            response = await transport.send("GET", up.url.join("/s"), [], b"", TIMEOUTS)
            pieces = []
            async with asyncio.timeout(5):  # a transport that waited for the end hangs here
                async for piece in response.aiter_raw():
                    pieces.append(piece)
                    more.set()
            assert pieces == [b"hello ", b"world"]
            assert await _get(transport, up.url.join("/next")) == b"GET /next "
        finally:
            await transport.aclose()
    assert up.connections == 1  # the last chunk ended the body cleanly: reused


async def test_a_connection_is_reused_for_the_next_request() -> None:
    async with Upstream(_echo) as up:
        transport = LeanTransport()
        try:
            assert await _get(transport, up.url.join("/1")) == b"GET /1 "
            assert await _get(transport, up.url.join("/2")) == b"GET /2 "
        finally:
            await transport.aclose()
    assert up.connections == 1
    assert [(r.index, r.connection) for r in up.received] == [(1, 1), (2, 1)]


async def test_connection_close_from_the_server_is_honoured() -> None:
    async def answer(request: Received, writer: asyncio.StreamWriter) -> bool:
        writer.write(_response(b"bye", "connection: close"))
        await writer.drain()
        return True  # kept open all the same: only the header can tell the client

    async with Upstream(answer) as up:
        transport = LeanTransport()
        try:
            assert await _get(transport, up.url.join("/1")) == b"bye"
            assert await _get(transport, up.url.join("/2")) == b"bye"
        finally:
            await transport.aclose()
    assert [r.connection for r in up.received] == [1, 2]


async def test_a_body_left_unread_closes_its_connection() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"
    async with Upstream(_in_two_parts(head + b"abc", b"", asyncio.Event())) as up:
        transport = LeanTransport()
        try:
            response = await transport.send("GET", up.url.join("/1"), [], b"", TIMEOUTS)
            async for piece in response.aiter_raw():
                assert piece == b"abc"
                break
            await response.aclose()  # read partly: the connection's state is unknown
            assert await _get(transport, up.url.join("/2")) == b"GET /2 "
        finally:
            await transport.aclose()
    assert [r.connection for r in up.received] == [1, 2]


async def test_with_one_connection_a_second_request_waits_for_it() -> None:
    rest = asyncio.Event()
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n"
    async with Upstream(_in_two_parts(head + b"ab", b"cd", rest)) as up:
        transport = LeanTransport(max_connections=1)
        try:
            first = await transport.send("GET", up.url.join("/1"), [], b"", TIMEOUTS)
            second = asyncio.ensure_future(_get(transport, up.url.join("/2")))
            for _ in range(5):  # turns of the loop in which the second could go ahead
                await asyncio.sleep(0.01)
            assert not second.done() and len(up.received) == 1
            rest.set()
            assert await first.aread() == b"abcd"  # its end frees the connection
            assert await second == b"GET /2 "
        finally:
            await transport.aclose()
    assert up.connections == 1  # the second got the first's connection, kept alive


async def test_no_connection_free_within_the_pool_timeout_is_a_pool_timeout() -> None:
    rest = asyncio.Event()
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    async with Upstream(_in_two_parts(head + b"a", b"b", rest)) as up:
        transport = LeanTransport(max_connections=1)
        try:
            first = await transport.send("GET", up.url.join("/1"), [], b"", TIMEOUTS)
            with pytest.raises(httpx.PoolTimeout):
                await _get(transport, up.url.join("/2"), pool=0.05)
            assert len(up.received) == 1  # the second was never sent
            rest.set()
            assert await first.aread() == b"ab"
        finally:
            await transport.aclose()


async def test_a_refused_connection_is_a_connect_error() -> None:
    transport = LeanTransport()
    try:
        with pytest.raises(httpx.ConnectError):
            await _get(transport, httpx.URL(f"http://127.0.0.1:{_closed_port()}/"))
        with pytest.raises(httpx.UnsupportedProtocol):
            await _get(transport, httpx.URL("ftp://127.0.0.1/"))
    finally:
        await transport.aclose()


async def test_a_silent_server_is_a_read_timeout_and_frees_the_slot() -> None:
    async def answer(request: Received, writer: asyncio.StreamWriter) -> bool:
        if request.target == "/silent":
            await asyncio.Event().wait()  # until the server's teardown cancels the handler
        return await _echo(request, writer)

    async with Upstream(answer) as up:
        transport = LeanTransport(max_connections=1)
        try:
            with pytest.raises(httpx.ReadTimeout):
                await _get(transport, up.url.join("/silent"), read=0.05)
            # The one slot is free again; the timed-out connection is not reused.
            assert await _get(transport, up.url.join("/2"), pool=0.05) == b"GET /2 "
        finally:
            await transport.aclose()
    assert [(r.target, r.connection) for r in up.received] == [("/silent", 1), ("/2", 2)]


async def test_a_body_that_stalls_is_a_read_timeout() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"
    async with Upstream(_in_two_parts(head + b"abc", b"", asyncio.Event())) as up:
        transport = LeanTransport()
        try:
            response = await transport.send("GET", up.url, [], b"", {**TIMEOUTS, "read": 0.05})
            pieces = []
            with pytest.raises(httpx.ReadTimeout):
                async for piece in response.aiter_raw():
                    pieces.append(piece)
            assert pieces == [b"abc"]
            await response.aclose()
        finally:
            await transport.aclose()


async def test_a_get_on_a_dropped_reused_connection_goes_again_on_a_fresh_one() -> None:
    async with Upstream(_drop(2)) as up:
        transport = LeanTransport()
        try:
            assert await _get(transport, up.url.join("/1")) == b"GET /1 "
            assert await _get(transport, up.url.join("/2")) == b"GET /2 "
        finally:
            await transport.aclose()
    seen = [(r.target, r.connection) for r in up.received]
    assert seen == [("/1", 1), ("/2", 1), ("/2", 2)]  # dropped on the reused one, then again


async def test_a_post_on_a_dropped_reused_connection_fails_and_is_not_sent_again() -> None:
    async with Upstream(_drop(2)) as up:
        transport = LeanTransport()
        try:
            first = await transport.send("POST", up.url.join("/1"), [], b"a", TIMEOUTS)
            assert await first.aread() == b"POST /1 a"
            with pytest.raises(httpx.RemoteProtocolError):
                await transport.send("POST", up.url.join("/2"), [], b"b", TIMEOUTS)
        finally:
            await transport.aclose()
    assert [(r.target, r.body, r.connection) for r in up.received] == [
        ("/1", b"a", 1),
        ("/2", b"b", 1),  # read once by the server, and only once
    ]
    assert up.connections == 1


async def test_a_get_dropped_on_a_fresh_connection_is_not_retried() -> None:
    async with Upstream(_drop(1)) as up:
        transport = LeanTransport()
        try:
            with pytest.raises(httpx.RemoteProtocolError):
                await _get(transport, up.url.join("/1"))
        finally:
            await transport.aclose()
    assert len(up.received) == 1 and up.connections == 1
