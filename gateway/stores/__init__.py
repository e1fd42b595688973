"""The shared key-value store caches and conversation memory keep their state in.

One async interface, two implementations: `MemoryStore` (in process, the embedded
default) and `RedisStore` (a real Redis or Valkey server, shared by gateway replicas).
Plugins never see either directly: the gateway wraps the configured one in
`FailOpenStore`, which turns a slow or dead store into misses within its timeout (the
request goes on without the cache), counts each bypass and reports itself degraded.

Values are bytes (callers encode with msgspec); keys are text. `ttl_s` None: no expiry.
"""

from __future__ import annotations

from typing import Protocol


class StoreError(Exception):
    """The store could not do what was asked (unreachable, timed out, bad reply)."""


class Store(Protocol):
    kind: str  # "memory" or "redis": for metrics, logs and /ready

    async def get(self, key: str) -> bytes | None: ...

    async def get_many(self, keys: list[str]) -> list[bytes | None]: ...

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def scan(self, prefix: str) -> list[str]:
        """Every live key that starts with `prefix` (start-up rebuilds; not a hot path)."""
        ...

    async def ping(self) -> None:
        """Raises StoreError when the store cannot answer."""
        ...

    async def close(self) -> None: ...
