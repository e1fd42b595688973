"""The conversation context plugin keeps conversations apart and stays up: tenants
never share one, ids are checked, calls without the header or on legacy completions are
untouched, concurrent requests on one conversation both land without holding up others,
and a dead or flaky store serves without history and never overwrites what it could
not read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.call import COMPLETIONS, Call, Reply, make_call
from gateway.chain import Chain, ChainEntry
from gateway.errors import InvalidRequest
from gateway.payload import Chunk
from gateway.stores import StoreError
from gateway.stores.fail_open import FailOpenStore
from gateway.stores.memory import MemoryStore
from gateway.testing.conformance import collect, plugin_host
from plugins.context import ConversationContext, store_key
from tests.plugins.context_bench import Recorder, bot, chat, setup, user

pytestmark = pytest.mark.anyio

pytestmark = pytest.mark.anyio


async def test_tool_calls_and_results_are_kept_whole() -> None:
    s = await setup()
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
    }
    s.upstream.tool_calls = [call]
    await s.say(user("weather?"))
    s.upstream.tool_calls = None
    result = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    await s.say(result)
    assistant = {"role": "assistant", "tool_calls": [call]}
    assert s.upstream.seen[-1] == [user("weather?"), assistant, result]
    assert await s.stored() == [user("weather?"), assistant, result, bot("reply 2")]


async def test_another_tenant_with_the_same_id_sees_nothing() -> None:
    s = await setup()
    await s.say(user("secret"), tenant="a")
    await s.say(user("hello"), tenant="b")
    assert s.upstream.seen[-1] == [user("hello")]
    assert await s.stored(tenant="a") == [user("secret"), bot("reply 1")]
    assert await s.stored(tenant="b") == [user("hello"), bot("reply 2")]


def test_tenants_that_look_alike_get_different_keys() -> None:
    assert store_key("a", "b:c") != store_key("a:b", "c")


@pytest.mark.parametrize("bad", ["", "x" * 129, "has space", "a/b", "ünïcode", "a\nb"])
async def test_an_invalid_id_is_a_400_naming_the_header(bad: str) -> None:
    s = await setup()
    with pytest.raises(InvalidRequest) as info:
        await s.say(user("hi"), conversation=bad)
    assert info.value.status_code == 400
    assert info.value.param == "x-conversation-id"
    assert s.upstream.seen == []


@pytest.mark.parametrize("good", ["a", "x" * 128, "user-1.session_2:3"])
async def test_valid_ids(good: str) -> None:
    s = await setup()
    await s.say(user("hi"), conversation=good)
    assert await s.stored(good) == [user("hi"), bot("reply 1")]


async def test_without_the_header_the_call_is_untouched() -> None:
    s = await setup()
    call = chat(user("hi"), conversation=None)
    reply = await s.chain.run(call)
    assert s.upstream.requests == [call]
    assert s.upstream.requests[0] is call
    assert "x-conversation-id" not in reply.headers
    assert await s.store.scan("") == []


async def test_legacy_completions_are_untouched() -> None:
    s = await setup()
    call = make_call(COMPLETIONS, {"model": "m", "prompt": "hi"}, conversation_id="conv-1")
    seen: list[Call] = []

    async def terminal(c: Call) -> Reply:
        seen.append(c)
        return Reply(stream=_nothing())

    chain = Chain([ChainEntry("context", s.plugin)], terminal)
    await chain.run(call)
    assert seen == [call]
    assert await s.store.scan("") == []


async def _nothing() -> AsyncIterator[Chunk]:
    return
    yield  # an async generator that yields nothing


@pytest.mark.parametrize("stream", [False, True])
async def test_concurrent_requests_on_one_conversation_both_land(stream: bool) -> None:
    s = await setup()
    s.upstream.yields = 5  # without the lock the second would load before the first stores
    a, b = chat(user("a"), stream=stream), chat(user("b"), stream=stream)

    async def run(call: Call) -> str:
        return await collect(await s.chain.run(call))

    assert list(await asyncio.gather(run(a), run(b))) == ["reply 1", "reply 2"]
    assert s.upstream.seen[1] == [user("a"), bot("reply 1"), user("b")]
    assert await s.stored() == [user("a"), bot("reply 1"), user("b"), bot("reply 2")]


async def test_a_stream_holds_the_conversation_until_it_ends() -> None:
    s = await setup()
    first = await s.chain.run(chat(user("a"), stream=True))
    second = asyncio.ensure_future(s.chain.run(chat(user("b"))))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not second.done() and len(s.upstream.seen) == 1
    assert await collect(first) == "reply 1"
    assert await collect(await second) == "reply 2"
    assert s.upstream.seen[1] == [user("a"), bot("reply 1"), user("b")]


async def test_other_conversations_are_not_held_up() -> None:
    s = await setup()
    first = await s.chain.run(chat(user("a"), stream=True))
    assert await s.say(user("b"), conversation="other") == "reply 2"
    await collect(first)


class DeadStore:
    kind = "memory"

    async def get(self, key: str) -> bytes | None:
        raise StoreError("down")

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        raise StoreError("down")

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        raise StoreError("down")

    async def delete(self, key: str) -> None:
        raise StoreError("down")

    async def scan(self, prefix: str) -> list[str]:
        raise StoreError("down")

    async def ping(self) -> None:
        raise StoreError("down")

    async def close(self) -> None:
        return None


async def test_a_dead_store_serves_requests_without_history() -> None:
    plugin = ConversationContext()
    await plugin.startup(gateway=plugin_host(FailOpenStore(DeadStore())))
    upstream = Recorder()
    chain = Chain([ChainEntry(plugin.name, plugin)], upstream)
    assert await collect(await chain.run(chat(user("one")))) == "reply 1"
    assert await collect(await chain.run(chat(user("two"), stream=True))) == "reply 2"
    assert upstream.seen[-1] == [user("two")]


class FlakyStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.failing_gets = 0

    async def get(self, key: str) -> bytes | None:
        if self.failing_gets:
            self.failing_gets -= 1
            raise StoreError("timed out")
        return await super().get(key)


async def test_a_history_that_could_not_be_read_is_not_overwritten() -> None:
    inner = FlakyStore()
    plugin = ConversationContext()
    # No cooldown: the write after the failed read would reach the store.
    store = FailOpenStore(inner, cooldown_s=0.0)
    await plugin.startup(gateway=plugin_host(store))
    upstream = Recorder()
    chain = Chain([ChainEntry(plugin.name, plugin)], upstream)
    await collect(await chain.run(chat(user("one"))))
    inner.failing_gets = 1
    await collect(await chain.run(chat(user("two"))))
    assert upstream.seen[-1] == [user("two")]  # answered, without history
    await collect(await chain.run(chat(user("three"))))
    assert upstream.seen[-1] == [user("one"), bot("reply 1"), user("three")]


@pytest.mark.parametrize(
    "settings",
    [
        {"max_context_tokens": 0},
        {"reserve_output_tokens": -1},
        {"ttl_s": 0},
        {"max_stored_messages": 0},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        ConversationContext(**settings)
