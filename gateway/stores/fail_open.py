"""`FailOpenStore`: a slow or dead store becomes misses, never a failed request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from gateway.stores import Store, StoreError
from policies.rate_limit import Decision

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# What a store that is down or slow raises (TimeoutError, from asyncio.timeout, is an OSError).
_FAILURES = (StoreError, OSError)


class FailOpenStore:
    """Wraps a `Store` so that every call ends within `timeout_s` and never raises: a
    failure reads as a miss (get: None, get_many: all None, scan: []), a write is
    dropped and a take is allowed (a rate limit that cannot count lets requests
    through). Each such call is a bypass, reported through `on_bypass(op)`.

    After a failure the store is degraded: for `cooldown_s` calls skip the inner store
    at once (a dead Redis then costs nothing per request), and after that a single call
    at a time goes through as a probe; the first probe that succeeds ends the degraded
    state. Cancellation is never swallowed.
    """

    def __init__(
        self,
        inner: Store,
        *,
        timeout_s: float = 0.05,
        cooldown_s: float = 1.0,
        on_bypass: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self._clock = clock  # injected by tests, which advance it instead of sleeping
        self.kind = inner.kind
        self.timeout_s = timeout_s
        self.cooldown_s = cooldown_s
        self.last_error: str | None = None
        self._on_bypass = on_bypass
        self._degraded = False
        self._failed_at = 0.0  # the clock's time of the last failure
        self._probing = False

    @property
    def degraded(self) -> bool:
        return self._degraded

    async def _run(
        self,
        op: str,
        miss: T,
        fn: Callable[P, Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        probe = self._degraded
        if probe and (self._probing or self._clock() - self._failed_at < self.cooldown_s):
            self._bypass(op)
            return miss
        if probe:
            self._probing = True
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await fn(*args, **kwargs)
        except _FAILURES as e:
            self._fail(op, e)
            self._bypass(op)
            return miss
        finally:
            if probe:
                self._probing = False
        if probe:
            # Only the probe ends the degraded state: a call that started before the failure
            # and finished after it says nothing about the store now.
            self._recover()
        return result

    def _bypass(self, op: str) -> None:
        if self._on_bypass is not None:
            self._on_bypass(op)

    def _fail(self, op: str, error: BaseException) -> None:
        detail = str(error) or f"no answer within {self.timeout_s * 1000:g} ms"
        self.last_error = f"{op}: {type(error).__name__}: {detail}"
        self._failed_at = self._clock()
        if not self._degraded:
            self._degraded = True
            log.warning(
                "%s store degraded, bypassing it for %g s: %s",
                self.kind,
                self.cooldown_s,
                self.last_error,
            )

    def _recover(self) -> None:
        if self._degraded:
            self._degraded = False
            log.warning("%s store answers again", self.kind)

    async def get(self, key: str) -> bytes | None:
        return await self._run("get", None, self.inner.get, key)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return await self._run("get_many", [None] * len(keys), self.inner.get_many, keys)

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        await self._run("set", None, self.inner.set, key, value, ttl_s)

    async def delete(self, key: str) -> None:
        await self._run("delete", None, self.inner.delete, key)

    async def scan(self, prefix: str) -> list[str]:
        return await self._run("scan", [], self.inner.scan, prefix)

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
        # Allowed, with nothing known about the bucket: shown as a full one.
        miss = Decision(True, burst, 0.0)
        take = self.inner.take
        return await self._run(
            "take", miss, take, key, cost, rate_per_s, burst, now, ttl_s, force=force
        )

    async def check(self) -> bool:
        """Pings the inner store now, cooldown or not (for readiness); True if it answered."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.inner.ping()
        except _FAILURES as e:
            self._fail("ping", e)
            return False
        self._recover()
        return True

    async def ping(self) -> None:
        if not await self.check():
            raise StoreError(self.last_error)

    async def close(self) -> None:
        await self.inner.close()
