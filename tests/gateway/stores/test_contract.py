"""What every store (memory, Redis) promises, each in turn: get/set/delete with TTLs,
ordered get_many, literal prefix scans, binary values, and the token bucket's take decided
in the store as policies/rate_limit.py decides it, atomically under concurrent calls."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.stores import Decision, Store
from gateway.stores.memory import MemoryStore
from gateway.stores.redis import RedisStore
from gateway.testing.redis_server import RedisProcess
from policies import rate_limit
from policies.rate_limit import Bucket

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """Each store implementation in turn; the Redis one under a prefix of the test's own."""
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    else:
        server: RedisProcess = request.getfixturevalue("redis_server")
        # A generous timeout: these tests are about what a store does, not how fast.
        s = RedisStore(server.url, prefix=f"test-{uuid.uuid4().hex}:", timeout_s=1.0)
    yield s
    await s.close()


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
