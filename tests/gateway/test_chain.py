"""The plugin chain runtime: order, short-circuit, call changes, post-processing of
complete and streamed replies, per-chunk hooks on replays, optional-plugin failures,
errors from below, keyword-only hooks that declare a subset of the arguments."""

from __future__ import annotations

import pytest

from gateway.call import Call, Reply
from gateway.chain import Chain, ChainEntry
from gateway.errors import UpstreamError
from gateway.payload import Chunk
from gateway.plugin import Next, Plugin
from gateway.testing.conformance import FakeUpstream, collect, expected_text, make_call

pytestmark = pytest.mark.anyio


class Outcomes:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def plugin_outcome(self, plugin: str, hook: str, outcome: str, seconds: float) -> None:
        self.seen.append((plugin, hook, outcome))


class Trace(Plugin):
    name = "trace"

    def __init__(self, tag: str, log: list[str]) -> None:
        self.tag, self.log = tag, log

    async def handle(self, *, call: Call, call_next: Next) -> Reply:
        self.log.append(f"{self.tag}>")
        reply = await call_next(call)
        self.log.append(f"<{self.tag}")
        reply.headers[f"x-{self.tag}"] = "1"
        return reply


class Upper(Plugin):
    """Rewrites the user message on the way in."""

    name = "upper"

    async def handle(self, *, call: Call, call_next: Next) -> Reply:
        last = call.body.data["messages"][-1]
        msgs = [{**last, "content": str(last["content"]).upper()}]
        changed = call.edit(messages=msgs)
        assert changed.request.messages[-1].content == msgs[0]["content"]  # the view follows
        return await call_next(changed)


class Replay(Plugin):
    """Answers streamed calls itself (like a cache hit), never calling the upstream."""

    name = "replay"

    async def handle(self, *, call: Call, call_next: Next) -> Reply:
        if call.stream:
            return Reply(stream=FakeUpstream()._chunks(call.model, "from the cache", None))
        return await call_next(call)


class Shout(Plugin):
    """A per-chunk hook that declares only the argument it uses."""

    name = "shout"

    async def on_chunk(self, *, chunk: Chunk) -> Chunk:
        data = chunk.data
        choices = [
            {**c, "delta": {**c["delta"], "content": (c["delta"].get("content") or "").upper()}}
            for c in data.get("choices") or ()
        ]
        return Chunk.of({**data, "choices": choices})


class Broken(Plugin):
    name = "broken"

    def __init__(self, when: str) -> None:
        self.when = when

    async def handle(self, *, call: Call, call_next: Next) -> Reply:
        if self.when == "before":
            raise RuntimeError("broken before")
        reply = await call_next(call)
        raise RuntimeError("broken after")
        return reply  # pragma: no cover

    async def on_chunk(self, *, chunk: Chunk) -> Chunk:
        raise RuntimeError("broken chunk")


async def test_plugins_wrap_in_order_and_post_process() -> None:
    log: list[str] = []
    chain = Chain(
        [ChainEntry("a", Trace("a", log)), ChainEntry("b", Trace("b", log))], FakeUpstream()
    )
    reply = await chain.run(make_call("hi"))
    assert log == ["a>", "b>", "<b", "<a"]
    assert reply.headers == {"x-a": "1", "x-b": "1"}
    assert await collect(reply) == expected_text("hi")


async def test_a_plugin_changes_the_call_for_everything_after_it() -> None:
    upstream = FakeUpstream()
    chain = Chain([ChainEntry("upper", Upper())], upstream)
    for stream in (False, True):
        assert await collect(await chain.run(make_call("hi", stream=stream))) == "echo: HI"


async def test_short_circuit_skips_the_upstream_and_chunk_hooks_still_run() -> None:
    upstream = FakeUpstream()
    chain = Chain([ChainEntry("shout", Shout()), ChainEntry("replay", Replay())], upstream)
    reply = await chain.run(make_call("hi", stream=True))
    assert await collect(reply) == "FROM THE CACHE"
    assert upstream.calls == 0


async def test_optional_plugin_failures_are_skipped_and_counted() -> None:
    for when in ("before", "after"):
        outcomes = Outcomes()
        upstream = FakeUpstream()
        chain = Chain([ChainEntry("broken", Broken(when), optional=True)], upstream, outcomes)
        reply = await chain.run(make_call("hi", stream=True))
        assert await collect(reply) == expected_text("hi")  # chunks: on_chunk skipped too
        assert upstream.calls == 1  # never sent twice
        assert ("broken", "handle", "skipped") in outcomes.seen
        assert ("broken", "on_chunk", "skipped") in outcomes.seen


async def test_a_required_plugin_failure_fails_the_call() -> None:
    outcomes = Outcomes()
    chain = Chain([ChainEntry("broken", Broken("before"))], FakeUpstream(), outcomes)
    with pytest.raises(RuntimeError, match="broken before"):
        await chain.run(make_call("hi"))
    assert outcomes.seen == [("broken", "handle", "error")]


async def test_errors_from_below_pass_through_and_are_not_the_plugins_fault() -> None:
    outcomes = Outcomes()
    log: list[str] = []
    entries = [ChainEntry("a", Trace("a", log), optional=True)]
    chain = Chain(entries, FakeUpstream(fail=True), outcomes)
    with pytest.raises(UpstreamError, match="fake upstream failure"):
        await chain.run(make_call("hi"))
    assert outcomes.seen == [("a", "handle", "ok")]


async def test_hooks_with_positional_only_arguments_are_refused() -> None:
    class Positional(Plugin):
        name = "positional"

        async def handle(self, call: Call, call_next: Next, /) -> Reply:  # type: ignore[override]
            return await call_next(call)

    with pytest.raises(TypeError, match="keyword-only"):
        Chain([ChainEntry("positional", Positional())], FakeUpstream())


async def test_the_routing_plugin_passes_the_conformance_kit() -> None:
    from gateway.testing.conformance import check_plugin
    from plugins.routing import Routing

    await check_plugin(Routing())


def test_a_probe_answered_with_a_client_error_closes_the_breaker() -> None:
    """The backend answered (the request was wrong): it is healthy again, not stuck probing."""
    from gateway.targets import Backend
    from plugins.routing import Routing

    backend = Backend(id="b")
    backend.breaker.failure_threshold = 1
    backend.breaker.record_failure(0.0)
    assert backend.breaker.allow(backend.breaker.open_until)  # the probe goes out
    Routing()._failed(backend, UpstreamError("bad", status_code=400, upstream_status=400))
    assert backend.breaker.state == "closed"
