"""A lean HTTP/1.1 load generator on raw asyncio streams (bench/overhead.py's client).

Each client holds one keep-alive connection and sends requests back to back (closed
loop), or requests start on a fixed schedule over a pool of connections (open loop).
Latency is request start to the last byte of the response (the end of a stream
included). Parsing is the minimum needed: Content-Length or chunked bodies.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds
    errors: int = 0
    elapsed: float = 0.0


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> int:
        """Sends one request, reads the whole response; returns the status."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked = 0, False
        for line in lines[1:]:
            low = line.lower()
            if low.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
            elif low.startswith(b"transfer-encoding:") and b"chunked" in low:
                chunked = True
        if chunked:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
    head += f"content-length: {len(body)}\r\n"
    for k, v in headers.items():
        head += f"{k}: {v}\r\n"
    return head.encode() + b"\r\n" + body


async def closed_loop(host: str, port: int, raw: bytes, clients: int, requests: int) -> Result:
    """`clients` connections, `requests` in all, each client sending back to back."""
    result = Result()
    per = [requests // clients + (i < requests % clients) for i in range(clients)]
    conns = [await Connection.open(host, port) for _ in range(clients)]
    for c in conns:  # warm each connection once, unmeasured
        await c.request(raw)

    async def client(conn: Connection, n: int) -> None:
        for _ in range(n):
            began = time.perf_counter()
            status = await conn.request(raw)
            if status == 200:
                result.latencies.append(time.perf_counter() - began)
            else:
                result.errors += 1

    began = time.perf_counter()
    await asyncio.gather(*(client(c, n) for c, n in zip(conns, per, strict=True)))
    result.elapsed = time.perf_counter() - began
    for c in conns:
        c.close()
    return result


async def open_loop(host: str, port: int, raw: bytes, rate: float, seconds: float) -> Result:
    """Starts requests at `rate` per second for `seconds`, whatever the answers do; idle
    connections are reused, new ones opened when all are busy."""
    result = Result()
    idle: list[Connection] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(scheduled: float) -> None:
        conn = idle.pop() if idle else await Connection.open(host, port)
        try:
            status = await conn.request(raw)
        except (ConnectionError, asyncio.IncompleteReadError):
            result.errors += 1
            return
        if status == 200:
            result.latencies.append(time.perf_counter() - scheduled)  # includes any queueing
        else:
            result.errors += 1
        idle.append(conn)

    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        at = start + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(at)))
    await asyncio.gather(*tasks)
    result.elapsed = time.perf_counter() - start
    for c in idle:
        c.close()
    return result
