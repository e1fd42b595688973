"""FailOpenStore: a store that dies, stalls or is slow is stepped around (a miss, an
allowed take) within its timeout, one probe at a time finds it back, and cancellation
passes through."""

from __future__ import annotations

import asyncio

import pytest

from gateway.stores import Decision, Store, StoreError
from gateway.stores.fail_open import FailOpenStore
from gateway.stores.memory import MemoryStore
from gateway.stores.redis import RedisStore
from gateway.testing.clock import FakeClock
from gateway.testing.redis_server import RedisProcess

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0


class CountingStore:
    """Passes every call on to `inner`, counting how many reached it."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.calls = 0

    async def get(self, key: str) -> bytes | None:
        self.calls += 1
        return await self.inner.get(key)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        self.calls += 1
        return await self.inner.get_many(keys)

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self.calls += 1
        await self.inner.set(key, value, ttl_s)

    async def delete(self, key: str) -> None:
        self.calls += 1
        await self.inner.delete(key)

    async def scan(self, prefix: str) -> list[str]:
        self.calls += 1
        return await self.inner.scan(prefix)

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
        self.calls += 1
        return await self.inner.take(key, cost, rate_per_s, burst, now, ttl_s, force=force)

    async def ping(self) -> None:
        self.calls += 1
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


class SlowStore(MemoryStore):
    """A store whose get takes `delay_s` (a Redis that stalls)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.gets = 0
        self.entered = asyncio.Event()

    async def get(self, key: str) -> bytes | None:
        self.gets += 1
        self.entered.set()
        await asyncio.sleep(self.delay_s)
        return await super().get(key)


async def test_fail_open_over_a_redis_that_dies(redis_process: RedisProcess) -> None:
    bypasses: list[str] = []
    inner = CountingStore(RedisStore(redis_process.url, prefix="fo:"))
    # Timeouts roomy enough for a loaded test machine: a dead server fails at once anyway.
    clock = FakeClock()
    store = FailOpenStore(
        inner, timeout_s=0.25, cooldown_s=0.2, on_bypass=bypasses.append, clock=clock
    )
    assert store.kind == "redis"
    try:
        await store.set("k", b"v")
        assert await store.get("k") == b"v"
        assert not store.degraded and store.last_error is None

        redis_process.kill()
        async with asyncio.timeout(1):  # a miss at once, not after retries or a hang
            assert await store.get("k") is None
        assert store.degraded
        assert bypasses == ["get"]
        assert store.last_error is not None and store.last_error.startswith("get:")

        # Within the cooldown nothing reaches Redis, and every call still counts.
        reached = inner.calls
        assert await store.get("k") is None
        assert await store.get_many(["k", "j"]) == [None, None]
        assert await store.scan("") == []
        await store.set("k", b"w")
        await store.delete("k")
        assert inner.calls == reached
        assert bypasses == ["get", "get", "get_many", "scan", "set", "delete"]

        redis_process.restart()
        clock.advance(0.25)  # the cooldown passes
        # The probe reaches the restarted (empty) server and ends the degraded state.
        assert await store.get("k") is None
        assert inner.calls == reached + 1
        assert not store.degraded
        await store.set("k", b"back")
        assert await store.get("k") == b"back"
        assert len(bypasses) == 6
    finally:
        await store.close()


async def test_fail_open_take_allows_while_the_store_is_down(redis_process: RedisProcess) -> None:
    bypasses: list[str] = []
    inner = CountingStore(RedisStore(redis_process.url, prefix="fo:"))
    store = FailOpenStore(inner, timeout_s=0.25, cooldown_s=60, on_bypass=bypasses.append)
    try:
        assert (await store.take("rl", 2, 1.0, 2, T0, 60)).allowed
        assert not (await store.take("rl", 1, 1.0, 2, T0, 60)).allowed
        redis_process.kill()
        async with asyncio.timeout(1):
            assert await store.take("rl", 1, 1.0, 2, T0, 60) == Decision(True, 2, 0.0)
        reached = inner.calls
        assert (await store.take("rl", 1, 1.0, 2, T0, 60)).allowed  # cooling down: not sent
        assert inner.calls == reached
        assert bypasses == ["take", "take"] and store.degraded
    finally:
        await store.close()


async def test_fail_open_over_a_redis_that_stalls(redis_process: RedisProcess) -> None:
    store = FailOpenStore(
        RedisStore(redis_process.url, prefix="fo:", timeout_s=1),  # only the wrapper times out
        timeout_s=0.2,
        cooldown_s=0,
    )
    try:
        await store.set("a", b"A")
        await store.set("b", b"B")
        redis_process.pause()
        async with asyncio.timeout(1):
            assert await store.get("a") is None
        assert store.degraded
        redis_process.resume()
        # The reply to the abandoned GET a arrives late; it must not answer the probe's GET b.
        await asyncio.sleep(0.05)
        assert await store.get("b") == b"B"
        assert not store.degraded
        assert await store.get_many(["a", "b"]) == [b"A", b"B"]
    finally:
        await store.close()


async def test_fail_open_check_follows_the_server(redis_process: RedisProcess) -> None:
    store = FailOpenStore(RedisStore(redis_process.url), timeout_s=0.25, cooldown_s=60)
    try:
        assert await store.check()
        redis_process.kill()
        assert not await store.check()
        assert store.degraded
        with pytest.raises(StoreError):
            await store.ping()
        redis_process.restart()
        # Readiness asks the store itself, cooldown or not.
        assert await store.check()
        assert not store.degraded
    finally:
        await store.close()


async def test_fail_open_slow_store_is_a_miss_within_the_timeout() -> None:
    bypasses: list[str] = []
    slow = SlowStore(delay_s=10)
    await slow.set("k", b"v")
    store = FailOpenStore(slow, timeout_s=0.05, on_bypass=bypasses.append)
    async with asyncio.timeout(1):
        assert await store.get("k") is None
    assert bypasses == ["get"]
    assert store.degraded
    assert store.last_error == "get: TimeoutError: no answer within 50 ms"


async def test_fail_open_sends_one_probe_at_a_time() -> None:
    slow = SlowStore(delay_s=10)
    store = FailOpenStore(slow, timeout_s=0.05, cooldown_s=0)
    assert await store.get("k") is None
    assert store.degraded and slow.gets == 1
    # The first call is the probe (and stalls); the second bypasses while it is out.
    async with asyncio.timeout(1):
        assert list(await asyncio.gather(store.get("k"), store.get("k"))) == [None, None]
    assert slow.gets == 2
    slow.delay_s = 0
    await slow.set("k", b"v")
    assert await store.get("k") == b"v"
    assert not store.degraded


async def test_fail_open_lets_cancellation_through() -> None:
    bypasses: list[str] = []
    slow = SlowStore(delay_s=10)
    store = FailOpenStore(slow, timeout_s=0.05, cooldown_s=0, on_bypass=bypasses.append)
    assert await store.get("k") is None  # degraded: the next call is a probe
    store.timeout_s = 10
    slow.entered.clear()
    probe = asyncio.create_task(store.get("k"))
    await slow.entered.wait()
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert bypasses == ["get"]  # a cancelled call is not a bypass
    # The cancelled probe did not leave the store thinking one is still out.
    slow.delay_s = 0
    assert await store.get("k") is None
    assert slow.gets == 3
    assert not store.degraded
