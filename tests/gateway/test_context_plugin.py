"""The conversation context plugin on the real chain runtime, over a fake upstream that
records what it was sent, with the real in-process store."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.call import CHAT, COMPLETIONS, Call, Reply, make_call
from gateway.chain import Chain, ChainEntry
from gateway.errors import InvalidRequest, UpstreamError
from gateway.payload import Chunk, Payload
from gateway.stores import StoreError
from gateway.stores.fail_open import FailOpenStore
from gateway.stores.memory import MemoryStore
from gateway.testing.conformance import check_plugin, collect, plugin_host
from plugins.context import ConversationContext, decode_history, store_key
from policies.context import estimate_tokens

pytestmark = pytest.mark.anyio

Msg = dict[str, Any]


class Recorder:
    """Answers "reply <n>" (n counts upstream calls), as a body or a stream, and records
    the messages each call was sent. fail: raise instead of answering; cut: the stream
    raises after its first content chunk; unfinished: it ends without a finish reason."""

    def __init__(self) -> None:
        self.seen: list[list[Msg]] = []
        self.requests: list[Call] = []
        self.fail = self.cut = self.unfinished = False
        self.tool_calls: list[Msg] | None = None
        self.yields = 0  # times each call gives up the event loop before answering

    async def __call__(self, call: Call) -> Reply:
        self.requests.append(call)
        self.seen.append([_plain(m) for m in call.body.data["messages"]])
        text = f"reply {len(self.seen)}"
        for _ in range(self.yields):
            await asyncio.sleep(0)
        if self.fail:
            raise UpstreamError("upstream down", status_code=502, upstream_status=500)
        if call.stream:
            return Reply(stream=self._chunks(text))
        message: Msg = {"role": "assistant", "content": None if self.tool_calls else text}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
        head = {"id": "x", "object": "chat.completion", "created": 0, "model": "m"}
        return Reply(body=Payload.of({**head, "choices": [choice], "usage": usage}))

    async def _chunks(self, text: str) -> AsyncIterator[Chunk]:
        def chunk(delta: Msg, finish: str | None = None) -> Chunk:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            head = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
            return Chunk.of({**head, "choices": [choice]})

        yield chunk({"role": "assistant", "content": ""})
        for i, word in enumerate(text.split(" ")):
            yield chunk({"content": word if i == 0 else " " + word})
            await asyncio.sleep(0)
            if self.cut:
                raise UpstreamError("connection reset", status_code=502)
        if not self.unfinished:
            yield chunk({}, "stop")


def _plain(m: Msg) -> Msg:
    return {k: v for k, v in m.items() if v is not None}


def sys(text: str = "be brief") -> Msg:
    return {"role": "system", "content": text}


def user(text: str) -> Msg:
    return {"role": "user", "content": text}


def bot(text: str) -> Msg:
    return {"role": "assistant", "content": text}


def chat(
    *messages: Msg,
    conversation: str | None = "conv-1",
    tenant: str = "default",
    stream: bool = False,
    max_tokens: int | None = None,
) -> Call:
    data: Msg = {"model": "m", "messages": list(messages), "stream": stream}
    if max_tokens is not None:
        data["max_tokens"] = max_tokens
    return make_call(CHAT, data, tenant=tenant, conversation_id=conversation)


class Setup:
    def __init__(self, plugin: ConversationContext) -> None:
        self.plugin = plugin
        self.store = MemoryStore()
        self.upstream = Recorder()
        self.chain = Chain([ChainEntry(plugin.name, plugin)], self.upstream)

    async def start(self) -> Setup:
        await self.plugin.startup(gateway=plugin_host(FailOpenStore(self.store)))
        return self

    async def stored(self, conversation: str = "conv-1", tenant: str = "default") -> list[Msg]:
        raw = await self.store.get(store_key(tenant, conversation))
        return [_plain(m) for m in decode_history(raw)]

    async def say(self, *messages: Msg, **kw: Any) -> str:
        return await collect(await self.chain.run(chat(*messages, **kw)))


async def setup(**settings: Any) -> Setup:
    return await Setup(ConversationContext(**settings)).start()


async def test_the_plugin_passes_the_conformance_kit() -> None:
    await check_plugin(ConversationContext())


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("resend_system", [False, True])
async def test_history_round_trips_over_three_turns(stream: bool, resend_system: bool) -> None:
    s = await setup()
    again = [sys()] if resend_system else []
    assert await s.say(sys(), user("one"), stream=stream) == "reply 1"
    assert await s.say(*again, user("two"), stream=stream) == "reply 2"
    assert await s.say(*again, user("three"), stream=stream) == "reply 3"
    conversation = [sys(), user("one"), bot("reply 1"), user("two"), bot("reply 2")]
    assert s.upstream.seen[2] == [*conversation, user("three")]
    assert await s.stored() == [*conversation, user("three"), bot("reply 3")]
    assert len(s.plugin.locks) == 0


async def test_response_headers_say_what_was_sent() -> None:
    s = await setup()
    await s.say(user("one"))
    reply = await s.chain.run(chat(user("two")))
    assert reply.headers["x-conversation-id"] == "conv-1"
    assert reply.headers["x-conversation-messages"] == "2"
    assert reply.headers["x-conversation-trimmed"] == "0"


async def test_a_stream_reaches_the_client_unchanged_and_is_stored_complete() -> None:
    s = await setup()
    reply = await s.chain.run(chat(user("one"), stream=True))
    assert reply.stream is not None
    chunks = [c.frame async for c in reply.stream]
    direct = [c.frame async for c in s.upstream._chunks("reply 1")]
    assert chunks == direct
    assert await s.stored() == [user("one"), bot("reply 1")]


@pytest.mark.parametrize("how", ["cut", "unfinished"])
async def test_a_cut_off_stream_stores_nothing(how: str) -> None:
    s = await setup()
    await s.say(user("one"))
    setattr(s.upstream, how, True)
    reply = await s.chain.run(chat(user("two"), stream=True))
    if how == "cut":
        with pytest.raises(UpstreamError):
            await collect(reply)
    else:
        await collect(reply)
    assert await s.stored() == [user("one"), bot("reply 1")]
    assert len(s.plugin.locks) == 0
    setattr(s.upstream, how, False)
    await s.say(user("three"))
    assert s.upstream.seen[-1] == [user("one"), bot("reply 1"), user("three")]


async def test_a_failed_upstream_call_stores_nothing() -> None:
    s = await setup()
    await s.say(sys(), user("one"))
    s.upstream.fail = True
    with pytest.raises(UpstreamError):
        await s.say(user("two"))
    assert len(s.plugin.locks) == 0
    s.upstream.fail = False
    await s.say(user("three"))
    assert s.upstream.seen[-1] == [sys(), user("one"), bot("reply 1"), user("three")]


async def test_a_stream_the_client_abandons_stores_nothing_and_frees_the_conversation() -> None:
    s = await setup()
    reply = await s.chain.run(chat(user("one"), stream=True))
    assert reply.stream is not None
    await reply.stream.__anext__()
    await reply.stream.aclose()  # type: ignore[attr-defined]
    assert len(s.plugin.locks) == 0
    assert await s.stored() == []


async def test_a_stream_dropped_unread_frees_the_conversation() -> None:
    s = await setup()
    reply = await s.chain.run(chat(user("one"), stream=True))
    assert len(s.plugin.locks) == 1
    del reply
    gc.collect()
    assert len(s.plugin.locks) == 0
    assert await s.say(user("two")) == "reply 2"


async def test_the_oldest_turns_are_trimmed_and_the_system_prompt_kept() -> None:
    turn3 = [user("three"), bot("reply 3")]
    room = sum(map(estimate_tokens, [sys(), *turn3, user("four")]))
    s = await setup(max_context_tokens=room + 100, reserve_output_tokens=100)
    await s.say(sys(), user("one"))
    await s.say(user("two"))
    await s.say(user("three"))
    reply = await s.chain.run(chat(user("four")))
    await collect(reply)
    assert s.upstream.seen[-1] == [sys(), *turn3, user("four")]
    assert reply.headers["x-conversation-messages"] == "3"
    assert reply.headers["x-conversation-trimmed"] == "4"
    # The store keeps everything: a model with a larger window sees more later.
    assert len(await s.stored()) == 1 + 4 * 2


async def test_the_requests_own_max_tokens_is_the_reserve() -> None:
    turn1 = [user("one"), bot("reply 1")]
    room = sum(map(estimate_tokens, [*turn1, user("two")]))
    s = await setup(max_context_tokens=room + 10, reserve_output_tokens=10)
    await s.say(user("one"))
    await s.say(user("two"), max_tokens=11)  # one token more than the room left
    assert s.upstream.seen[-1] == [user("two")]
    await s.say(user("six"), max_tokens=10)  # the same size as turn one: it fits
    assert s.upstream.seen[-1] == [user("two"), bot("reply 2"), user("six")]


async def test_stored_messages_are_bounded_keeping_the_system_prompt() -> None:
    s = await setup(max_stored_messages=5)
    await s.say(sys(), user("one"))
    await s.say(user("two"))
    await s.say(user("three"))
    stored = await s.stored()
    assert stored == [sys(), user("two"), bot("reply 2"), user("three"), bot("reply 3")]


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
