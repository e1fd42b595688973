"""The gateway's app served in this process to an httpx client, start-up and shut-down
included: for tests that want the whole HTTP edge without a server process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from gateway.http import Edge


@asynccontextmanager
async def app_client(app: Edge) -> AsyncIterator[httpx.AsyncClient]:
    await app.gateway.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client
    finally:
        await app.gateway.close()
