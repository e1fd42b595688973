"""The soak test's traffic (bench/soak.py): client loops that run until cancelled, each
recording the outcome of every request it makes in a Tally.

Well-behaved clients share one httpx.AsyncClient; misbehaving ones use raw asyncio
streams: a slow reader (small socket buffers, one SSE line every 200 ms), clients that
hang up mid-answer, bad bodies, and a body or a head sent in part and then silence.

An outcome is the status code, or "cut" (the server closed before the answer was
complete), "disconnected" (the client hung up on purpose), "timeout" (no answer within
the client's limit), "refused" (no connection), or "error:<exception>". Nothing a
request does ends its loop: failures are counted.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.loadgen import build_request

HOST = "127.0.0.1"
MODEL = "m"
CHAT = "/v1/chat/completions"
CLIENT_TIMEOUT_S = 120.0  # one client's whole turn (a conversation: all its turns)
PAUSE_S = (0.2, 0.8)  # between one loop's turns
SLOW_LINE_S = 0.2
TURNS = 3  # per conversation
PROMPTS = [
    "Name a colour.", "What is two plus two?", "Say hello in French.",
    "Give me a fruit.", "What is the capital of Italy?", "Name an animal that swims.",
    "Write one word about rain.", "What day comes after Monday?", "Count to three.",
    "Name a planet.", "What is water made of?", "Suggest a name for a cat.",
]  # fmt: skip
GREEDY_PROMPTS = PROMPTS[:4]  # temperature 0: exact-cache hits after the first of each


@dataclass(slots=True)
class Tally:
    """Outcomes per client kind: for the minute in progress, and in all."""

    minute: dict[str, Counter[str]] = field(default_factory=dict)
    total: dict[str, Counter[str]] = field(default_factory=dict)
    cache: Counter[str] = field(default_factory=Counter)  # x-cache of greedy answers, minute

    def add(self, kind: str, outcome: str) -> None:
        self.minute.setdefault(kind, Counter())[outcome] += 1
        self.total.setdefault(kind, Counter())[outcome] += 1

    def take(self) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
        """This minute's outcomes by kind and greedy x-cache values; starts a new minute."""
        minute = {k: dict(v) for k, v in sorted(self.minute.items())}
        cache = dict(self.cache)
        self.minute, self.cache = {}, Counter()
        return minute, cache


@dataclass(slots=True)
class Ctx:
    port: int
    client: httpx.AsyncClient
    tally: Tally
    wait_s: float  # how long a half-sent request may wait for the server to close it


Record = Callable[..., None]  # record(outcome, kind=None): kind refines the loop's kind
Client = Callable[[Ctx, random.Random, Record], Awaitable[None]]


# ---- well-behaved clients (httpx) ------------------------------------------------------


def chat(prompt: str, max_tokens: int, temperature: float, stream: bool = False) -> Any:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    if stream:
        body["stream"] = True
    return body


def answered(r: httpx.Response) -> str:
    if r.status_code != 200:
        return str(r.status_code)
    return "200" if r.json().get("choices") else "200 without choices"


async def json_miss(ctx: Ctx, rng: random.Random, record: Record) -> None:
    body = chat(rng.choice(PROMPTS), rng.randint(8, 32), 0.7)
    record(answered(await ctx.client.post(CHAT, json=body)))


async def json_greedy(ctx: Ctx, rng: random.Random, record: Record) -> None:
    r = await ctx.client.post(CHAT, json=chat(rng.choice(GREEDY_PROMPTS), 16, 0.0))
    ctx.tally.cache[r.headers.get("x-cache", "none")] += 1
    record(answered(r))


async def stream(ctx: Ctx, rng: random.Random, record: Record) -> None:
    body = chat(rng.choice(PROMPTS), rng.randint(8, 32), 0.7, stream=True)
    async with ctx.client.stream("POST", CHAT, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            record(str(r.status_code))
            return
        done, failed = False, False
        async for line in r.aiter_lines():
            done = done or line.strip() == "data: [DONE]"
            failed = failed or line.startswith('data: {"error"')
        record("stream error" if failed else "200" if done else "cut")


async def conversation(ctx: Ctx, rng: random.Random, record: Record) -> None:
    headers = {"x-conversation-id": f"soak-{rng.getrandbits(48):012x}"}
    for _ in range(TURNS):
        body = chat(rng.choice(PROMPTS), 16, 0.7)
        r = await ctx.client.post(CHAT, json=body, headers=headers)
        record(answered(r))
        if r.status_code != 200:
            return


# ---- misbehaving clients (raw asyncio streams) -----------------------------------------


async def open_raw(
    port: int, rcvbuf: int | None = None, limit: int = 2**16
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    if rcvbuf is not None:  # before connecting, so the window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=limit)


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ", 2)[1]), headers


async def body_lines(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """The body's lines, de-chunked, as they arrive."""
    if "chunked" not in headers.get("transfer-encoding", ""):
        for line in (await reader.readexactly(int(headers.get("content-length", 0)))).split(b"\n"):
            yield line
        return
    pending = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            break
        *lines, pending = (pending + data[:-2]).split(b"\n")
        for line in lines:
            yield line
    if pending:
        yield pending


async def read_answer(reader: asyncio.StreamReader) -> int:
    status, headers = await read_head(reader)
    async for _ in body_lines(reader, headers):
        pass
    return status


def raw_chat(port: int, body: Any, headers: dict[str, str] | None = None) -> bytes:
    return build_request(HOST, port, CHAT, json.dumps(body).encode(), headers or {})


async def slow_reader(ctx: Ctx, rng: random.Random, record: Record) -> None:
    body = chat(rng.choice(PROMPTS), rng.randint(8, 32), 0.7, stream=True)
    reader, writer = await open_raw(ctx.port, rcvbuf=2048, limit=2048)
    try:
        writer.write(raw_chat(ctx.port, body))
        status, headers = await read_head(reader)
        done = False
        async for line in body_lines(reader, headers):
            if line.strip():
                done = done or line.strip() == b"data: [DONE]"
                await asyncio.sleep(SLOW_LINE_S)
        record(str(status) if status != 200 or done else "cut")
    finally:
        writer.close()


async def disconnect(ctx: Ctx, rng: random.Random, record: Record) -> None:
    """A chat request, streamed or not, whose client hangs up after 0.1-1.5 s (an answer
    that arrives whole before then counts as its status)."""
    streamed = rng.random() < 0.5
    body = chat(rng.choice(PROMPTS), 32, 0.7, stream=streamed)
    reader, writer = await open_raw(ctx.port)
    kind = "disconnect.stream" if streamed else "disconnect.json"
    try:
        writer.write(raw_chat(ctx.port, body))
        try:
            status = await asyncio.wait_for(read_answer(reader), rng.uniform(0.1, 1.5))
        except TimeoutError:
            record("disconnected", kind)
            return
        record(str(status), kind)
    finally:
        writer.close()


@functools.cache
def bad_requests(port: int) -> dict[str, bytes]:
    """Requests the gateway must refuse (400, 413, 431), by name."""
    hi = [{"role": "user", "content": "hi"}]
    deep = b'{"model": "m", "messages": ' + json.dumps(hi).encode()
    deep += b', "x": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    many = {f"x-soak-{i}": "1" for i in range(150)}
    body = json.dumps({"model": MODEL, "messages": hi, "max_tokens": 8}).encode()
    return {
        "invalid_json": build_request(HOST, port, CHAT, b'{"model": "m", "messages": [', {}),
        "no_messages": raw_chat(port, {"model": MODEL, "max_tokens": 8}),
        "deep_1000": build_request(HOST, port, CHAT, deep, {}),
        "body_2mb": raw_chat(port, {"model": MODEL, "messages": hi, "pad": "x" * 2**21}),
        "headers_150": build_request(HOST, port, CHAT, body, many),
    }


async def bad_body(ctx: Ctx, rng: random.Random, record: Record) -> None:
    name, raw = rng.choice(sorted(bad_requests(ctx.port).items()))
    reader, writer = await open_raw(ctx.port)
    try:
        writer.write(raw)
        record(str(await read_answer(reader)), f"bad.{name}")
    except (ConnectionError, asyncio.IncompleteReadError):
        record("cut", f"bad.{name}")
    finally:
        writer.close()


async def half_sent(ctx: Ctx, rng: random.Random, record: Record) -> None:
    """A body shorter than its content-length, or a head cut short, then silence: the
    gateway should answer 408 and close. "<status> kept open" if it answers but does not
    close; "timeout" if it does neither within wait_s."""
    if rng.random() < 0.5:
        kind, raw = "half.body", build_request(HOST, ctx.port, CHAT, b"", {})
        raw = raw.replace(b"content-length: 0", b"content-length: 1000") + b'{"model": "m", '
    else:
        kind, raw = "half.head", f"POST {CHAT} HTTP/1.1\r\nhost: {HOST}\r\n".encode()
    reader, writer = await open_raw(ctx.port)
    try:
        writer.write(raw)
        try:
            status = await asyncio.wait_for(read_answer(reader), ctx.wait_s)
        except TimeoutError:
            record("timeout", kind)
            return
        except asyncio.IncompleteReadError:
            record("cut", kind)
            return
        try:
            closed = await asyncio.wait_for(reader.read(1), 2.0) == b""
        except TimeoutError:
            closed = False
        record(str(status) if closed else f"{status} kept open", kind)
    finally:
        writer.close()


# ---- the mix -----------------------------------------------------------------------------

CLIENTS: dict[str, tuple[int, Client, str]] = {
    "json_miss": (1, json_miss, "chat, temperature 0.7, max_tokens 8-32 (cache misses)"),
    "json_greedy": (1, json_greedy, f"chat, temperature 0, {len(GREEDY_PROMPTS)} fixed "
                    "prompts, max_tokens 16 (exact-cache hits after the first)"),
    "stream": (1, stream, "streamed chat read to the end, temperature 0.7, max_tokens 8-32"),
    "slow_reader": (1, slow_reader, "streamed chat, raw socket, SO_RCVBUF 2 KiB, one SSE "
                    f"line every {SLOW_LINE_S * 1e3:.0f} ms, max_tokens 8-32"),
    "disconnect": (1, disconnect, "chat (half streamed), raw socket, client closes after "
                   "0.1-1.5 s, max_tokens 32"),
    "bad_body": (1, bad_body, "invalid JSON / no messages / nested 1,000 deep / 2 MB body / "
                 "150 headers (expect 400/413/431)"),
    "half_sent": (1, half_sent, "content-length 1000 with 15 bytes sent, or half a head; "
                  "then silence (expect 408 and a close)"),
    "conversation": (1, conversation, f"x-conversation-id, {TURNS} turns, temperature 0.7, "
                     "max_tokens 16"),
}  # fmt: skip


def describe() -> dict[str, Any]:
    return {
        "loops": {k: {"count": n, "what": what} for k, (n, _, what) in CLIENTS.items()},
        "pause_between_turns_s": list(PAUSE_S),
        "client_timeout_s": CLIENT_TIMEOUT_S,
    }


def failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError | ConnectionRefusedError):
        return "refused"
    if isinstance(exc, httpx.TransportError | ConnectionError | asyncio.IncompleteReadError):
        return "cut"
    return f"error:{type(exc).__name__}"


async def run_loop(ctx: Ctx, kind: str, client: Client, rng: random.Random) -> None:
    def record(outcome: str, sub: str | None = None) -> None:
        ctx.tally.add(sub or kind, outcome)

    while True:
        try:
            await asyncio.wait_for(client(ctx, rng, record), CLIENT_TIMEOUT_S)
        except Exception as exc:  # whatever one request does, the soak goes on: counted
            record(failure(exc))
        await asyncio.sleep(rng.uniform(*PAUSE_S))


def start(ctx: Ctx, seed: int) -> list[asyncio.Task[None]]:
    """Every loop of the mix as a task; cancel them to stop."""
    tasks = []
    for kind, (count, client, _) in CLIENTS.items():
        for i in range(count):
            rng = random.Random(f"{seed}:{kind}:{i}")
            tasks.append(asyncio.create_task(run_loop(ctx, kind, client, rng)))
    return tasks
