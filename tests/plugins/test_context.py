"""The conversation context plugin on the real chain runtime, over a fake upstream that
records what it was sent, with the real in-process store."""

from __future__ import annotations

import gc

import pytest

from gateway.errors import UpstreamError
from gateway.testing.conformance import check_plugin, collect
from plugins.context import ConversationContext
from policies.context import estimate_tokens
from tests.plugins.context_bench import bot, chat, setup, sys, user

pytestmark = pytest.mark.anyio


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
