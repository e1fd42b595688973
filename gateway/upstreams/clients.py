"""Which HTTP client carries a group's requests.

- `lean` (gateway/upstreams/transport.py): the gateway's own HTTP/1.1 client, the
  fastest measured here (`bench/overhead.py --transports`).
- `httpx`: httpx's own transport (httpcore), and the one used when the environment
  names a proxy for the upstream (HTTP(S)_PROXY / ALL_PROXY, NO_PROXY honoured).
- `aiohttp`: aiohttp's client through `httpx-aiohttp`, when that package is installed.

`auto` (the default) is `lean`, or `httpx` when a proxy applies. Whatever the client,
the upstream code calls `send(method, url, headers, body, timeouts)` and reads an
httpx.Response; the clients other than `lean` get an httpx.Request built for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from gateway.config.environment import upstream_proxy
from gateway.upstreams.transport import LeanTransport

CLIENTS = ("auto", "lean", "httpx", "aiohttp")


class Client(Protocol):
    async def send(
        self,
        method: str,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: Mapping[str, float | None],
    ) -> httpx.Response: ...

    async def aclose(self) -> None: ...


class ViaHttpx:
    """Any httpx transport, called the way the upstream code calls the lean one."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport

    async def send(
        self,
        method: str,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: Mapping[str, float | None],
    ) -> httpx.Response:
        request = httpx.Request(
            method, url, headers=headers, content=body, extensions={"timeout": dict(timeouts)}
        )
        return await self.transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self.transport.aclose()


def make_client(kind: str, base_url: str, max_connections: int) -> Client:
    proxy = upstream_proxy(base_url)
    if kind == "auto":
        kind = "httpx" if proxy else "lean"
    if kind == "lean":
        return LeanTransport(max_connections)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=256)
    if kind == "httpx":
        return ViaHttpx(httpx.AsyncHTTPTransport(limits=limits, proxy=proxy))
    if kind == "aiohttp":
        try:
            from httpx_aiohttp import AiohttpTransport
        except ImportError as exc:
            raise ValueError("http_client aiohttp needs `pip install httpx-aiohttp`") from exc
        transport: Any = AiohttpTransport()
        return ViaHttpx(transport)
    raise ValueError(f"unknown http_client {kind!r} (known: {', '.join(CLIENTS)})")
