"""`RedisStore`: a Redis or Valkey server shared by gateway replicas (redis-py asyncio)."""

from __future__ import annotations

import re
from typing import cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.stores import StoreError

# Redis's own errors, and what the socket layer raises under them (TimeoutError is an OSError).
_FAILURES = (RedisError, OSError)


def _glob_escape(text: str) -> str:
    """`text` as a literal in a SCAN MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class RedisStore:
    """Keys live under `prefix`, so several gateways (or tests) can share one server.

    One pooled client for the store's lifetime. Retries are off and socket timeouts are
    short: a dead or stalled server fails the call at once (as `StoreError`), and
    `FailOpenStore` turns that into a miss instead of holding the request.
    """

    kind = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "llm-gateway:",
        timeout_s: float = 0.05,
        max_connections: int = 64,
    ) -> None:
        self.prefix = prefix
        # A burst of more calls than connections waits (up to timeout_s) for a free one; the
        # plain pool would fail them at once and FailOpenStore would read a healthy server
        # as down.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._client = Redis.from_pool(pool)  # owns the pool: aclose() closes both

    async def get(self, key: str) -> bytes | None:
        try:
            # decode_responses is off: redis-py hands back bytes, whatever its stubs allow.
            value = cast("bytes | None", await self._client.get(self.prefix + key))
        except _FAILURES as e:
            raise StoreError(f"redis GET failed: {e!r}") from e
        return value

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []  # MGET with no keys is an error
        prefix = self.prefix
        try:
            values = cast("list[bytes | None]", await self._client.mget([prefix + k for k in keys]))
        except _FAILURES as e:
            raise StoreError(f"redis MGET failed: {e!r}") from e
        return values

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        # PX takes whole milliseconds and rejects 0: round up to at least 1 ms.
        px = None if ttl_s is None else max(1, round(ttl_s * 1000))
        try:
            await self._client.set(self.prefix + key, value, px=px)
        except _FAILURES as e:
            raise StoreError(f"redis SET failed: {e!r}") from e

    async def delete(self, key: str) -> None:
        try:
            await self._client.delete(self.prefix + key)
        except _FAILURES as e:
            raise StoreError(f"redis DEL failed: {e!r}") from e

    async def scan(self, prefix: str) -> list[str]:
        match = _glob_escape(self.prefix + prefix) + "*"
        skip = len(self.prefix)
        try:
            keys = [key async for key in self._client.scan_iter(match=match, count=1000)]
        except _FAILURES as e:
            raise StoreError(f"redis SCAN failed: {e!r}") from e
        # SCAN may return a key more than once (while the server rehashes).
        return [key.decode()[skip:] for key in dict.fromkeys(keys)]

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except _FAILURES as e:
            raise StoreError(f"redis PING failed: {e!r}") from e

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except _FAILURES as e:
            raise StoreError(f"redis close failed: {e!r}") from e
