"""The exact cache through the real chain runtime, over the memory store and a real Redis:
keys (tenant, every output-relevant field), admission, Cache-Control, streams stored
complete and replayed, cut-off answers never kept, single flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.call import COMPLETIONS, Call, Reply, make_call
from gateway.chain import Chain, ChainEntry
from gateway.errors import UpstreamError
from gateway.payload import Chunk, Payload
from gateway.stores.fail_open import FailOpenStore
from gateway.stores.redis import RedisStore
from gateway.testing.clock import FakeClock
from gateway.testing.conformance import FakeUpstream, check_plugin, collect, plugin_host
from gateway.testing.conformance import make_call as chat_call
from gateway.testing.redis_server import RedisProcess
from plugins.exact_cache import ExactCache

pytestmark = pytest.mark.anyio


async def _cache(store: FailOpenStore, **settings: Any) -> ExactCache:
    plugin = ExactCache(**settings)
    await plugin.startup(gateway=plugin_host(store))
    return plugin


def _call(
    content: str = "What is 2+2?",
    *,
    tenant: str = "a",
    stream: bool = False,
    headers: dict[str, str] | None = None,
    conversation: str | None = None,
    **fields: Any,
) -> Call:
    fields.setdefault("temperature", 0)
    call = chat_call(content, stream=stream, tenant=tenant, **fields)  # type: ignore[arg-type]
    return call.replace(headers=headers or {}, conversation_id=conversation)


async def _ask(chain: Chain, call: Call) -> tuple[str, str]:
    reply = await chain.run(call)
    return await collect(reply), reply.headers.get("x-cache", "")


async def test_conforms(store: FailOpenStore) -> None:
    await check_plugin(await _cache(store), answers_itself=True)


async def test_second_identical_request_is_a_hit(store: FailOpenStore) -> None:
    up = FakeUpstream()
    chain = Chain([ChainEntry("exact_cache", await _cache(store))], up)
    assert await _ask(chain, _call()) == ("echo: What is 2+2?", "miss")
    reply = await chain.run(_call())
    assert reply.headers["x-cache"] == "hit" and "age" in reply.headers
    assert await collect(reply) == "echo: What is 2+2?"
    assert up.calls == 1


async def test_tenants_never_share_answers(store: FailOpenStore) -> None:
    up = FakeUpstream()
    chain = Chain([ChainEntry("exact_cache", await _cache(store))], up)
    await _ask(chain, _call(tenant="a"))
    assert (await _ask(chain, _call(tenant="b")))[1] == "miss"
    assert (await _ask(chain, _call(tenant="a")))[1] == "hit"
    assert (await _ask(chain, _call(tenant="b")))[1] == "hit"  # b's own entry now
    assert up.calls == 2


async def test_a_conversation_id_scopes_the_cache(store: FailOpenStore) -> None:
    chain = Chain([ChainEntry("exact_cache", await _cache(store))], FakeUpstream())
    await _ask(chain, _call(conversation="c1"))
    assert (await _ask(chain, _call(conversation="c2")))[1] == "miss"
    assert (await _ask(chain, _call(conversation="c1")))[1] == "hit"


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
CHANGES: list[tuple[str, dict[str, Any]]] = [
    ("content", {"content": "What is 2+3?"}),
    ("seed", {"seed": 7}),
    ("temperature+seed", {"temperature": 0.5, "seed": 1}),
    ("top_p", {"top_p": 0.5}),
    ("top_k", {"top_k": 5}),
    ("n", {"n": 2}),
    ("max_tokens", {"max_tokens": 5}),
    ("max_completion_tokens", {"max_completion_tokens": 5}),
    ("stop", {"stop": ["\n"]}),
    ("logprobs", {"logprobs": True}),
    ("top_logprobs", {"logprobs": True, "top_logprobs": 2}),
    ("presence_penalty", {"presence_penalty": 0.5}),
    ("frequency_penalty", {"frequency_penalty": 0.5}),
    ("logit_bias", {"logit_bias": {"5": 1.0}}),
    ("tools", {"tools": [TOOL]}),
    ("tool_choice", {"tools": [TOOL], "tool_choice": "required"}),
    ("response_format", {"response_format": {"type": "json_object"}}),
]


@pytest.mark.parametrize(("field", "change"), CHANGES, ids=[c[0] for c in CHANGES])
async def test_changing_an_output_relevant_field_misses(
    store: FailOpenStore, field: str, change: dict[str, Any]
) -> None:
    up = FakeUpstream()
    chain = Chain([ChainEntry("exact_cache", await _cache(store))], up)
    await _ask(chain, _call())
    assert (await _ask(chain, _call(**change)))[1] == "miss", field
    assert up.calls == 2


async def test_history_and_tool_calls_are_part_of_the_key(store: FailOpenStore) -> None:
    chain = Chain([ChainEntry("exact_cache", await _cache(store))], FakeUpstream())

    def with_history(args: str) -> Call:
        history = [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "w", "arguments": args}}
            ]},
            {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
            {"role": "user", "content": "What is 2+2?"},
        ]  # fmt: skip
        return _call().edit(messages=history)

    await _ask(chain, with_history('{"city": "Paris"}'))
    assert (await _ask(chain, with_history('{"city": "Paris"}')))[1] == "hit"
    assert (await _ask(chain, with_history('{"city": "Rome"}')))[1] == "miss"
    assert (await _ask(chain, _call()))[1] == "miss"  # same last message, no history


async def test_fields_that_do_not_change_the_answer_still_hit(store: FailOpenStore) -> None:
    chain = Chain([ChainEntry("exact_cache", await _cache(store))], FakeUpstream())
    await _ask(chain, _call())
    assert (await _ask(chain, _call(user="someone-else")))[1] == "hit"
    parts = [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]
    assert (await _ask(chain, _call(parts)))[1] == "hit"  # type: ignore[arg-type]


async def test_legacy_completions_are_cached_apart_from_chat(store: FailOpenStore) -> None:
    plugin = await _cache(store)
    calls = 0

    async def upstream(call: Call) -> Reply:
        nonlocal calls
        calls += 1
        choice = {"index": 0, "text": " four", "finish_reason": "stop"}
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        head = {"id": "x", "object": "text_completion", "created": 0, "model": "m"}
        return Reply(body=Payload.of({**head, "choices": [choice], "usage": usage}))

    chain = Chain([ChainEntry("exact_cache", plugin)], upstream)
    await _ask(chain, _call("What is 2+2?"))  # the same text as a chat question
    text_call = make_call(COMPLETIONS, {"model": "m", "prompt": "What is 2+2?", "temperature": 0})
    for _ in range(2):
        reply = await chain.run(text_call)
    assert reply.headers["x-cache"] == "hit" and calls == 2  # the chat answer was not used
    assert reply.body is not None and reply.body.data["choices"][0]["text"] == " four"


async def test_only_reproducible_requests_are_cached_by_default(store: FailOpenStore) -> None:
    up = FakeUpstream()
    chain = Chain([ChainEntry("exact_cache", await _cache(store))], up)
    for _ in range(2):
        assert (await _ask(chain, _call(temperature=0.7)))[1] == "bypass"
    assert (await _ask(chain, _call(temperature=None)))[1] == "bypass"  # default: 1.0
    assert up.calls == 3
    everything = Chain(
        [ChainEntry("exact_cache", await _cache(store, only_reproducible=False))], up
    )
    await _ask(everything, _call(temperature=0.7))
    assert (await _ask(everything, _call(temperature=0.7)))[1] == "hit"


async def test_cache_control(store: FailOpenStore) -> None:
    up = FakeUpstream()
    chain = Chain([ChainEntry("exact_cache", await _cache(store))], up)
    no_store = {"cache-control": "no-store"}
    assert (await _ask(chain, _call(headers=no_store)))[1] == "bypass"
    assert (await _ask(chain, _call()))[1] == "miss"  # no-store kept nothing
    assert (await _ask(chain, _call(headers={"cache-control": "no-cache"})))[1] == "miss"
    assert (await _ask(chain, _call(headers={"cache-control": "max-age=0"})))[1] == "miss"
    assert (await _ask(chain, _call(headers={"cache-control": "max-age=60"})))[1] == "hit"
    assert up.calls == 4


async def test_max_age_refuses_older_answers(store: FailOpenStore) -> None:
    clock = FakeClock()
    up = FakeUpstream()
    chain = Chain([ChainEntry("exact_cache", await _cache(store, clock=clock))], up)
    await _ask(chain, _call())
    clock.advance(1.5)  # the answer is 1.5 s old (the store still holds it)
    assert (await _ask(chain, _call(headers={"cache-control": "max-age=1"})))[1] == "miss"
    assert (await _ask(chain, _call(headers={"cache-control": "max-age=60"})))[1] == "hit"
    assert up.calls == 2


async def test_a_clients_max_age_is_capped_by_the_caches_ttl(store: FailOpenStore) -> None:
    up = FakeUpstream()
    chain = Chain([ChainEntry("exact_cache", await _cache(store, max_ttl_s=0.01))], up)
    await _ask(chain, _call(headers={"cache-control": "max-age=3600"}))  # kept 0.01 s
    await asyncio.sleep(0.05)  # the store's own expiry (Redis's included): real time
    assert (await _ask(chain, _call()))[1] == "miss"
    assert up.calls == 2


async def test_a_stream_is_stored_complete_and_replayed_with_usage(store: FailOpenStore) -> None:
    up = FakeUpstream()
    chain = Chain([ChainEntry("exact_cache", await _cache(store))], up)
    first = await chain.run(_call(stream=True))
    assert first.headers["x-cache"] == "miss"
    [c async for c in first.stream]  # type: ignore[union-attr]
    # The gateway asked the upstream for usage (it hides it from this client), so the
    # kept answer has it.
    assert up.requests[0]["stream_options"] == {"include_usage": True}

    second = await chain.run(_call(stream=True, stream_options={"include_usage": True}))
    assert second.headers["x-cache"] == "hit"
    replayed = [c.data async for c in second.stream]  # type: ignore[union-attr]
    assert {c["object"] for c in replayed} == {"chat.completion.chunk"}
    text = "".join(c["delta"].get("content") or "" for r in replayed for c in r["choices"])
    assert text == "echo: What is 2+2?"
    assert replayed[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in replayed if c["choices"]][-1] == "stop"
    assert replayed[-1]["choices"] == [] and replayed[-1]["usage"]["prompt_tokens"] == 3
    body = await chain.run(_call())  # the same answer, complete
    assert body.body is not None and await collect(body) == text
    assert up.calls == 1


async def test_a_cut_off_stream_is_never_stored(store: FailOpenStore) -> None:
    up = FakeUpstream(cut_after=2)
    chain = Chain([ChainEntry("exact_cache", await _cache(store))], up)
    with pytest.raises(UpstreamError):
        await collect(await chain.run(_call(stream=True)))
    with pytest.raises(UpstreamError):
        await collect(await chain.run(_call(stream=True)))
    up.cut_after = None
    assert (await _ask(chain, _call()))[1] == "miss"
    assert up.calls == 3


async def test_an_abandoned_stream_is_never_stored(store: FailOpenStore) -> None:
    up = FakeUpstream()
    chain = Chain([ChainEntry("exact_cache", await _cache(store))], up)
    reply = await chain.run(_call("one two three four five six", stream=True))
    assert reply.stream is not None
    async for _ in reply.stream:
        break
    await reply.stream.aclose()  # type: ignore[attr-defined]
    assert (await _ask(chain, _call("one two three four five six")))[1] == "miss"


async def test_a_failed_request_is_not_stored(store: FailOpenStore) -> None:
    up = FakeUpstream(fail=True)
    chain = Chain([ChainEntry("exact_cache", await _cache(store))], up)
    with pytest.raises(UpstreamError):
        await chain.run(_call())
    up.fail = False
    assert (await _ask(chain, _call()))[1] == "miss"


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
async def test_identical_requests_in_flight_go_upstream_once(
    store: FailOpenStore, stream: bool
) -> None:
    up = FakeUpstream(delay_s=0.05)
    chain = Chain([ChainEntry("exact_cache", await _cache(store))], up)
    calls = [_call("shared question", stream=stream or i % 2 == 0) for i in range(10)]
    replies = await asyncio.gather(*(chain.run(c) for c in calls))
    texts = await asyncio.gather(*(collect(r) for r in replies))
    assert texts == ["echo: shared question"] * 10
    assert up.calls == 1
    assert sorted(r.headers["x-cache"] for r in replies) == ["hit"] * 9 + ["miss"]


async def test_followers_of_a_failed_leader_ask_for_themselves(store: FailOpenStore) -> None:
    up = FakeUpstream()
    calls = 0

    async def first_fails(call: Call) -> Reply:
        nonlocal calls
        calls += 1
        if calls == 1:
            await followed.wait()  # fails only once the follower has joined
            raise UpstreamError("leader failed", upstream_status=500)
        return await up(call)

    followed = asyncio.Event()
    cache = await _cache(store)
    chain = Chain([ChainEntry("exact_cache", cache)], first_fails)
    leader = asyncio.ensure_future(chain.run(_call()))
    while not len(cache.flights):
        await asyncio.sleep(0)  # the leader's flight is up
    follower = asyncio.ensure_future(chain.run(_call()))
    for _ in range(50):  # the follower reaches the flight and waits on it
        await asyncio.sleep(0)
    followed.set()
    with pytest.raises(UpstreamError):
        await leader
    assert await collect(await follower) == "echo: What is 2+2?"
    assert calls == 2


async def test_one_client_leaving_a_shared_stream_does_not_cut_the_others(
    store: FailOpenStore,
) -> None:
    up = FakeUpstream(delay_s=0.05)
    chain = Chain([ChainEntry("exact_cache", await _cache(store))], up)
    question = " ".join(f"w{i}" for i in range(50))
    a, b = await asyncio.gather(
        chain.run(_call(question, stream=True)), chain.run(_call(question, stream=True))
    )
    assert a.stream is not None
    async for _ in a.stream:
        break
    await a.stream.aclose()  # type: ignore[attr-defined]
    assert await collect(b) == f"echo: {question}"
    assert (await _ask(chain, _call(question)))[1] == "hit"  # the shared answer was kept
    assert up.calls == 1


async def test_a_dead_store_is_stepped_around(redis_process: RedisProcess) -> None:
    store = FailOpenStore(RedisStore(redis_process.url, timeout_s=0.05), timeout_s=0.05)
    try:
        up = FakeUpstream()
        chain = Chain([ChainEntry("exact_cache", await _cache(store))], up)
        await _ask(chain, _call())
        assert (await _ask(chain, _call()))[1] == "hit"
        redis_process.kill()
        for _ in range(20):
            assert await _ask(chain, _call()) == ("echo: What is 2+2?", "miss")
        assert store.degraded
    finally:
        await store.close()


async def test_a_stream_with_an_event_that_is_not_json_reaches_the_client_and_is_not_kept(
    store: FailOpenStore,
) -> None:
    up = FakeUpstream()

    async def odd(call: Call) -> Reply:
        reply = await up(call)
        assert reply.stream is not None

        async def with_text_event() -> AsyncIterator[Chunk]:
            yield Chunk.received(b"keep-alive", b"data: keep-alive\n\n")
            async for chunk in reply.stream:  # type: ignore[union-attr]
                yield chunk

        return Reply(stream=with_text_event())

    chain = Chain([ChainEntry("exact_cache", await _cache(store))], odd)
    reply = await chain.run(_call(stream=True))
    assert reply.stream is not None
    frames = [c.frame async for c in reply.stream]
    assert frames[0] == b"data: keep-alive\n\n" and len(frames) > 3
    again = await chain.run(_call(stream=True))
    assert again.headers["x-cache"] == "miss"  # nothing was kept
    assert again.stream is not None and [c.frame async for c in again.stream] == frames
