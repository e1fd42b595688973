from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.stores import Decision, Store, StoreError
from gateway.stores.fail_open import FailOpenStore
from gateway.stores.memory import MemoryStore
from gateway.stores.redis import RedisStore
from gateway.testing.clock import FakeClock
from gateway.testing.redis_server import RedisProcess, free_port
from policies import rate_limit
from policies.rate_limit import Bucket

pytestmark = pytest.mark.anyio


# redis_server (session) and redis_process (per test) come from tests/conftest.py.


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """Each store implementation in turn; the Redis one under a prefix of the test's own."""
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    else:
        server: RedisProcess = request.getfixturevalue("redis_server")
        s = RedisStore(server.url, prefix=f"test-{uuid.uuid4().hex}:")
    yield s
    await s.close()


# --- every store ---------------------------------------------------------------------------


async def test_get_set_overwrite(store: Store) -> None:
    assert await store.get("k") is None
    await store.set("k", b"one")
    assert await store.get("k") == b"one"
    await store.set("k", b"two")
    assert await store.get("k") == b"two"


async def test_ttl_expiry(store: Store) -> None:
    await store.set("short", b"x", ttl_s=0.01)
    await store.set("long", b"y", ttl_s=60)
    await store.set("forever", b"z")
    await asyncio.sleep(0.05)
    assert await store.get("short") is None
    assert await store.get("long") == b"y"
    assert await store.get("forever") == b"z"


async def test_overwrite_resets_ttl(store: Store) -> None:
    await store.set("k", b"x", ttl_s=0.01)
    await store.set("k", b"y")
    await asyncio.sleep(0.05)
    assert await store.get("k") == b"y"


async def test_delete(store: Store) -> None:
    await store.set("k", b"v")
    await store.delete("k")
    assert await store.get("k") is None
    await store.delete("never-set")  # not an error


async def test_get_many_keeps_order_with_misses(store: Store) -> None:
    await store.set("a", b"1")
    await store.set("c", b"3")
    assert await store.get_many(["c", "missing", "a", "c"]) == [b"3", None, b"1", b"3"]
    assert await store.get_many([]) == []


async def test_scan_by_prefix_drops_expired(store: Store) -> None:
    await store.set("conv:1", b"")
    await store.set("conv:2", b"", ttl_s=60)
    await store.set("conv:gone", b"", ttl_s=0.01)
    await store.set("cache:1", b"")
    await asyncio.sleep(0.05)
    assert sorted(await store.scan("conv:")) == ["conv:1", "conv:2"]
    assert sorted(await store.scan("")) == ["cache:1", "conv:1", "conv:2"]
    assert await store.scan("nothing:") == []


async def test_scan_prefix_is_literal(store: Store) -> None:
    # Glob characters in the prefix match only themselves (SCAN MATCH is a glob).
    for key in ["a*b:1", "a*b:2", "axb:1", "a?[c]:1", "a\\d"]:
        await store.set(key, b"")
    assert sorted(await store.scan("a*b:")) == ["a*b:1", "a*b:2"]
    assert await store.scan("a?[c]") == ["a?[c]:1"]
    assert await store.scan("a\\") == ["a\\d"]


async def test_binary_values_round_trip(store: Store) -> None:
    value = bytes(range(256)) + b"\x00\r\n\x00"
    await store.set("bin", value)
    await store.set("empty", b"")
    await store.set("ключ ✓", b"\x00")
    assert await store.get("bin") == value
    assert await store.get("empty") == b""
    assert await store.get_many(["ключ ✓", "bin"]) == [b"\x00", value]
    assert "ключ ✓" in await store.scan("ключ")


async def test_ping(store: Store) -> None:
    await store.ping()


# --- take: the token bucket, decided in the store ------------------------------------------

T0 = 1_700_000_000.0
# (now, cost, force) in order: a burst, a refusal, refill, a cost above one, a refund past
# full, a forced charge into debt, a clock that goes backwards, time that drains the debt.
STEPS = [
    (T0, 1, False), (T0, 1, False), (T0, 1, False), (T0, 1, False),
    (T0 + 0.25, 1, False), (T0 + 0.6, 1, False), (T0 + 0.6, 2.5, False),
    (T0 + 1.0, -10, False), (T0 + 1.0, 3, False), (T0 + 1.0, 4, True), (T0 + 0.5, 1, False),
    (T0 + 0.5, -1, False), (T0 + 2.0, 0, False), (T0 + 9.7, 3, False), (T0 + 9.7, 11, False),
]  # fmt: skip


@pytest.mark.parametrize("rate", [10 / 6, 0.0], ids=["bucket", "budget"])
async def test_take_decides_as_the_policy_does(store: Store, rate: float) -> None:
    # The same float operations in the same order: the Lua script's decisions are the
    # policy's to the last bit, not just approximately.
    state: Bucket | None = None
    for now, cost, force in STEPS:
        got = await store.take("rl", cost, rate, 3, now, 60, force=force)
        want, kept = rate_limit.take(state, cost, rate, 3, now, force=force)
        assert got == want, (now, cost, force)
        state = kept or state


async def test_take_reports_a_full_bucket_for_a_new_key(store: Store) -> None:
    assert await store.take("new", 1, 1.0, 10, T0, 60) == Decision(True, 9, 1.0)
    assert await store.take("budget", 4, 0.0, 10, T0, 60) == Decision(True, 6, math.inf)
    refused = await store.take("big", 11, 1.0, 10, T0, 60)
    assert refused == Decision(False, 10, 0.0, math.inf)


async def test_take_keys_are_separate_buckets(store: Store) -> None:
    assert (await store.take("a", 2, 1.0, 2, T0, 60)).allowed
    assert not (await store.take("a", 1, 1.0, 2, T0, 60)).allowed
    assert (await store.take("b", 2, 1.0, 2, T0, 60)).allowed


async def test_take_is_atomic_under_concurrent_calls(store: Store) -> None:
    results = await asyncio.gather(*(store.take("hot", 1, 1.0, 10, T0, 60) for _ in range(50)))
    assert sum(d.allowed for d in results) == 10
    assert sorted(d.remaining for d in results if d.allowed) == list(range(10))


# --- RedisStore ----------------------------------------------------------------------------


async def test_redis_namespaces_do_not_mix(redis_server: RedisProcess) -> None:
    one = RedisStore(redis_server.url, prefix="one[*]:")
    two = RedisStore(redis_server.url, prefix="two:")
    try:
        await one.set("k", b"1")
        await two.set("k", b"2")
        await two.set("only-two", b"2")
        assert await one.get("k") == b"1"
        assert await two.get("k") == b"2"
        assert await one.get("only-two") is None
        assert await one.scan("") == ["k"]
        assert sorted(await two.scan("")) == ["k", "only-two"]
        await one.delete("k")
        assert await two.get("k") == b"2"
    finally:
        await one.close()
        await two.close()


async def test_redis_tiny_ttl_rounds_up_to_a_millisecond(redis_server: RedisProcess) -> None:
    store = RedisStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex}:")
    try:
        await store.set("k", b"v", ttl_s=0.0001)  # PX 0 would be an error
        await asyncio.sleep(0.01)
        assert await store.get("k") is None
    finally:
        await store.close()


async def test_redis_burst_beyond_the_pool_waits_for_connections(
    redis_server: RedisProcess,
) -> None:
    store = RedisStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex}:", max_connections=2)
    try:
        await store.set("k", b"v")
        assert await asyncio.gather(*(store.get("k") for _ in range(100))) == [b"v"] * 100
    finally:
        await store.close()


async def test_redis_unreachable_raises_store_error() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StoreError) as caught:
            await store.get("k")
        assert caught.value.__cause__ is not None
        with pytest.raises(StoreError):
            await store.set("k", b"v")
        with pytest.raises(StoreError):
            await store.scan("")
        with pytest.raises(StoreError):
            await store.ping()
    finally:
        await store.close()


async def test_redis_replicas_take_from_one_bucket(redis_server: RedisProcess) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    one = RedisStore(redis_server.url, prefix=prefix)
    two = RedisStore(redis_server.url, prefix=prefix)
    other = RedisStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex}:")
    try:
        takes = [s.take("rl", 1, 1.0, 10, T0, 60) for s in (one, two) for _ in range(10)]
        assert sum(d.allowed for d in await asyncio.gather(*takes)) == 10
        assert (await other.take("rl", 1, 1.0, 10, T0, 60)).allowed  # its own namespace
    finally:
        for s in (one, two, other):
            await s.close()


async def test_redis_take_sets_the_keys_ttl(redis_server: RedisProcess) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    store = RedisStore(redis_server.url, prefix=prefix)
    raw = Redis.from_url(redis_server.url)
    try:
        await store.take("bucket", 30, 1.0, 100, T0, 10)
        assert 10_000 < await raw.pttl(prefix + "bucket") <= 30_000  # until full: 30 s > 10
        await store.take("budget", 30, 0.0, 100, T0, 10)
        assert 0 < await raw.pttl(prefix + "budget") <= 10_000  # nothing refills: the ttl
    finally:
        await store.close()
        await raw.aclose()


async def test_redis_take_loads_its_script_again_after_a_flush(redis_server: RedisProcess) -> None:
    store = RedisStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex}:")
    raw = Redis.from_url(redis_server.url)
    try:
        assert (await store.take("k", 1, 1.0, 2, T0, 60)).remaining == 1
        await raw.script_flush()  # EVALSHA now answers NOSCRIPT: the store falls back to EVAL
        assert (await store.take("k", 1, 1.0, 2, T0, 60)).remaining == 0
        assert (await store.take("k", 1, 1.0, 2, T0, 60)).allowed is False
    finally:
        await store.close()
        await raw.aclose()


# --- MemoryStore ---------------------------------------------------------------------------


async def test_memory_evicts_least_recently_used_by_entries() -> None:
    store = MemoryStore(max_entries=3)
    for key in "abc":
        await store.set(key, b"v")
    await store.get("a")  # a is now the most recently used; b the least
    await store.set("d", b"v")
    assert await store.get_many(["a", "b", "c", "d"]) == [b"v", None, b"v", b"v"]
    assert len(store) == 3


async def test_memory_evicts_least_recently_used_by_bytes() -> None:
    store = MemoryStore(max_bytes=10)  # each entry below is 1 + 4 bytes
    await store.set("a", b"1111")
    await store.set("b", b"2222")
    await store.get("a")
    await store.set("c", b"3333")
    assert await store.get_many(["a", "b", "c"]) == [b"1111", None, b"3333"]
    assert store.num_bytes == 10
    await store.set("a", b"1")  # overwriting shrinks the count
    assert store.num_bytes == 7
    await store.set("huge", b"x" * 100)  # can never fit: dropped, nothing else evicted
    assert await store.get_many(["huge", "a", "c"]) == [None, b"1", b"3333"]


async def test_memory_forgets_expired_entries_in_its_bounds() -> None:
    store = MemoryStore()
    await store.set("k", b"1234", ttl_s=0.01)
    await asyncio.sleep(0.02)
    assert await store.scan("") == []
    assert len(store) == 0
    assert store.num_bytes == 0


# --- FailOpenStore -------------------------------------------------------------------------


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
