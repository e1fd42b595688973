"""`MemoryStore`: the in-process store, an LRU dict with per-key expiry."""

from __future__ import annotations

import math
import struct
import time
from collections import OrderedDict
from collections.abc import Callable

from policies import rate_limit
from policies.rate_limit import Bucket, Decision

# A bucket's state as a value: used, stamp (two doubles).
_BUCKET = struct.Struct("<dd")


class MemoryStore:
    """Bounded by entry count and by bytes (key length + value length); the least recently
    used entries go first. Expired entries are dropped when touched or scanned.

    The methods are coroutines only to fit `Store`: none of them awaits, so a call runs to
    completion without giving up the event loop.
    """

    kind = "memory"

    def __init__(
        self,
        max_entries: int = 100_000,
        max_bytes: int = 512 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be positive")
        self._clock = clock  # injected by tests, which advance it instead of sleeping
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.num_bytes = 0
        # key -> (value, expires_at on the clock; inf: never); LRU order
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _lookup(self, key: str, now: float) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at <= now:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return value

    def _remove(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self.num_bytes -= len(key) + len(value)

    async def get(self, key: str) -> bytes | None:
        return self._lookup(key, self._clock())

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        now = self._clock()
        return [self._lookup(key, now) for key in keys]

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self._store(key, value, ttl_s)

    def _store(self, key: str, value: bytes, ttl_s: float | None) -> None:
        if key in self._entries:
            self._remove(key)
        size = len(key) + len(value)
        if size > self.max_bytes:
            return  # could never fit; storing it would only flush everything else
        expires_at = math.inf if ttl_s is None else self._clock() + ttl_s
        self._entries[key] = (value, expires_at)
        self.num_bytes += size
        while len(self._entries) > self.max_entries or self.num_bytes > self.max_bytes:
            self._remove(next(iter(self._entries)))

    async def delete(self, key: str) -> None:
        if key in self._entries:
            self._remove(key)

    async def scan(self, prefix: str) -> list[str]:
        now = self._clock()
        expired = [key for key, (_, expires_at) in self._entries.items() if expires_at <= now]
        for key in expired:
            self._remove(key)
        return [key for key in self._entries if key.startswith(prefix)]

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
        # Atomic as it stands: nothing here awaits, so no other take runs in between.
        raw = self._lookup(key, self._clock())
        state = None
        if raw is not None and len(raw) == _BUCKET.size:
            state = Bucket(*_BUCKET.unpack(raw))
        decision, kept = rate_limit.take(state, cost, rate_per_s, burst, now, force=force)
        if kept is not None:
            keep = rate_limit.keep_s(kept, rate_per_s, now, ttl_s)
            self._store(key, _BUCKET.pack(kept.used, kept.stamp), keep)
        return decision

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()
        self.num_bytes = 0
