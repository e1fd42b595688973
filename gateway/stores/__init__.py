"""The shared key-value store caches and conversation memory keep their state in.

One async interface, two implementations: `MemoryStore` (in process, the embedded
default) and `RedisStore` (a real Redis or Valkey server, shared by gateway replicas).
Plugins never see either directly: the gateway wraps the configured one in
`FailOpenStore`, which turns a slow or dead store into misses within its timeout (the
request goes on without the cache), counts each bypass and reports itself degraded.

Values are bytes (callers encode with msgspec); keys are text. `ttl_s` None: no expiry.

`take` is the one operation that decides as well as stores: an atomic take from a token
bucket (policies/rate_limit.py), so that replicas sharing a Redis count together. It
fails open too: a store that cannot answer allows the take.
"""

from __future__ import annotations

from typing import Protocol

from policies.rate_limit import Decision

__all__ = ["Decision", "Store", "StoreError"]


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

    async def take(
        self,
        key: str,
        cost: float,
        rate_per_s: float,
        burst: float,
        now: float,
        ttl_s: float,
        *,
        force: bool = False,
    ) -> Decision:
        """Takes `cost` from the bucket at `key` if it fits, in one atomic step (see
        policies/rate_limit.py `take`: a negative cost refunds; `force` charges past the
        burst; rate_per_s 0 is a budget nothing refills). The state is kept `ttl_s`
        after the take, and a refilling bucket at least until it is full again."""
        ...

    async def ping(self) -> None:
        """Raises StoreError when the store cannot answer."""
        ...

    async def close(self) -> None: ...
