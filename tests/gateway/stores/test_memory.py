"""MemoryStore's bounds: least-recently-used eviction by entries and by bytes, and
expired entries leaving the bounds."""

from __future__ import annotations

import asyncio

import pytest

from gateway.stores.memory import MemoryStore

pytestmark = pytest.mark.anyio


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
