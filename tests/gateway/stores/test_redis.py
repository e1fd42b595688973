"""RedisStore against a real Redis server: namespaces, TTL rounding, a connection pool
busy past its size, an unreachable server, one bucket shared by replicas, the take
script's TTL and its reload after SCRIPT FLUSH."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from gateway.stores import StoreError
from gateway.stores.redis import RedisStore
from gateway.testing.redis_server import RedisProcess, free_port

pytestmark = pytest.mark.anyio


T0 = 1_700_000_000.0


async def test_redis_namespaces_do_not_mix(redis_server: RedisProcess) -> None:
    one = RedisStore(redis_server.url, prefix="one[*]:", timeout_s=1.0)
    two = RedisStore(redis_server.url, prefix="two:", timeout_s=1.0)
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
    store = RedisStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex}:", timeout_s=1.0)
    try:
        await store.set("k", b"v", ttl_s=0.0001)  # PX 0 would be an error
        await asyncio.sleep(0.01)
        assert await store.get("k") is None
    finally:
        await store.close()


async def test_redis_burst_beyond_the_pool_waits_for_connections(
    redis_server: RedisProcess,
) -> None:
    store = RedisStore(
        redis_server.url, prefix=f"test-{uuid.uuid4().hex}:", max_connections=2, timeout_s=1.0
    )
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
    one = RedisStore(redis_server.url, prefix=prefix, timeout_s=1.0)
    two = RedisStore(redis_server.url, prefix=prefix, timeout_s=1.0)
    other = RedisStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex}:", timeout_s=1.0)
    try:
        takes = [s.take("rl", 1, 1.0, 10, T0, 60) for s in (one, two) for _ in range(10)]
        assert sum(d.allowed for d in await asyncio.gather(*takes)) == 10
        assert (await other.take("rl", 1, 1.0, 10, T0, 60)).allowed  # its own namespace
    finally:
        for s in (one, two, other):
            await s.close()


async def test_redis_take_sets_the_keys_ttl(redis_server: RedisProcess) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    store = RedisStore(redis_server.url, prefix=prefix, timeout_s=1.0)
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
    store = RedisStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex}:", timeout_s=1.0)
    raw = Redis.from_url(redis_server.url)
    try:
        assert (await store.take("k", 1, 1.0, 2, T0, 60)).remaining == 1
        await raw.script_flush()  # EVALSHA now answers NOSCRIPT: the store falls back to EVAL
        assert (await store.take("k", 1, 1.0, 2, T0, 60)).remaining == 0
        assert (await store.take("k", 1, 1.0, 2, T0, 60)).allowed is False
    finally:
        await store.close()
        await raw.aclose()
