"""A conformance kit for plugin authors: run it against your plugin in your own tests.

    from gateway.testing.conformance import check_plugin

    async def test_my_plugin_conforms():
        await check_plugin(MyPlugin(setting=1))

It drives the plugin through the real chain runtime (gateway/chain.py) over a fake
upstream and checks what every plugin owes the others: hooks the runtime can call
(async, keyword arguments), a Reply for complete and for streamed calls, every chunk
passed on in order (none invented or dropped unless the plugin answers itself), errors
from below reaching the caller unchanged, concurrent calls kept apart, and clean
start-up and shutdown. `make_call` and `FakeUpstream` are there for your own tests too.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

from gateway.call import CHAT, Call, Reply
from gateway.call import make_call as _make_call
from gateway.chain import Chain, ChainEntry
from gateway.errors import UpstreamError
from gateway.payload import Chunk, Payload
from gateway.plugin import HOOKS, Hook, Plugin, overrides
from gateway.runtime.host import PluginHost
from gateway.stores.fail_open import FailOpenStore
from gateway.stores.memory import MemoryStore
from gateway.targets import Backend, Group, ModelTarget


def make_call(
    content: str = "Hello",
    *,
    stream: bool = False,
    tenant: str = "default",
    model: str = "m",
    **fields: Any,
) -> Call:
    """A chat call as the edge builds one: for a stream, the upstream is asked for the
    usage chunk and the client is marked as not having asked for it. `fields`: more
    request fields (temperature=0, seed=1, ...)."""
    data: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
        **fields,
    }
    backend = Backend(id="fake", group="g")
    call = _make_call(CHAT, data, tenant=tenant, target=ModelTarget(model, [Group("g", [backend])]))
    options = data.get("stream_options") or {}
    if stream and not options.get("include_usage"):
        call = call.edit(stream_options={**options, "include_usage": True})
        call.wants_usage = False
    return call


def plugin_host(store: FailOpenStore | None = None) -> PluginHost:
    """What a plugin's startup gets, with an in-process store (or `store`)."""

    async def no_embedder() -> None:
        return None

    return PluginHost(
        store=store or FailOpenStore(MemoryStore()),
        metrics=None,
        backends=list,
        load_embedder=no_embedder,
    )


class FakeUpstream:
    """Answers "echo: <last user message>", as one body or as one chunk per word, then a
    chunk with the finish reason (and the usage chunk when the request asks for it), as
    a real server does. `delay_s` waits before answering; `cut_after` ends a stream with
    an error after that many chunks (a backend dying mid-answer). `requests`: the body
    of every request it got, as plain data."""

    def __init__(self, fail: bool = False, delay_s: float = 0.0, cut_after: int | None = None):
        self.fail = fail
        self.delay_s = delay_s
        self.cut_after = cut_after
        self.calls = 0
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, call: Call) -> Reply:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise UpstreamError("fake upstream failure", status_code=502, upstream_status=500)
        data = call.body.data
        self.requests.append(data)
        last = data["messages"][-1]["content"]
        text = f"echo: {last}"
        usage = {"prompt_tokens": 3, "completion_tokens": len(text.split()), "total_tokens": 0}
        if call.stream:
            options = data.get("stream_options") or {}
            with_usage = bool(options.get("include_usage"))
            return Reply(stream=self._chunks(call.model, text, usage if with_usage else None))
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        body = {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": call.model,
            "choices": [choice],
            "usage": usage,
        }
        return Reply(body=Payload.of(body))

    async def _chunks(
        self, model: str, text: str, usage: dict[str, int] | None
    ) -> AsyncIterator[Chunk]:
        head = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model}
        for i, word in enumerate(text.split(" ")):
            if self.cut_after is not None and i == self.cut_after:
                raise UpstreamError("fake upstream died mid-stream", upstream_status=None)
            delta = {"content": word if i == 0 else " " + word}
            yield Chunk.of({**head, "choices": [{"index": 0, "delta": delta}]})
            await asyncio.sleep(0)
        done = {"index": 0, "delta": {}, "finish_reason": "stop"}
        yield Chunk.of({**head, "choices": [done]})
        if usage is not None:
            yield Chunk.of({**head, "choices": [], "usage": usage})


def expected_text(content: str) -> str:
    return f"echo: {content}"


def text_of(body: Payload) -> str:
    """The first choice's text of a complete chat or completions answer."""
    choice = body.data["choices"][0]
    if "message" in choice:
        return str(choice["message"].get("content") or "")
    return str(choice.get("text") or "")


async def collect(reply: Reply) -> str:
    """The text of a reply, complete or streamed."""
    if reply.body is not None:
        return text_of(reply.body)
    assert reply.stream is not None
    parts: list[str] = []
    async for chunk in reply.stream:
        assert isinstance(chunk, Chunk), f"a chunk of type {type(chunk)}"
        for c in chunk.data.get("choices") or ():
            delta = c.get("delta")
            parts.append((delta.get("content") if delta else c.get("text")) or "")
    return "".join(parts)


async def check_plugin(
    plugin: Plugin, *, answers_itself: bool = False, gateway: PluginHost | None = None
) -> None:
    """Raises AssertionError naming the first rule the plugin breaks. answers_itself:
    the plugin may legitimately answer without calling the upstream (a cache), so the
    text check only requires a well-formed reply. gateway: what startup() gets (default:
    plugin_host(), with the in-process store), for plugins that need more of it."""
    assert isinstance(plugin, Plugin), "plugins subclass gateway.plugin.Plugin"
    assert plugin.name, "set the class attribute `name` (the entry-point name)"
    for hook in HOOKS:
        fn = getattr(plugin, hook)
        assert inspect.iscoroutinefunction(fn), f"{hook} must be `async def`"
        if overrides(plugin, hook):
            Hook(fn)  # raises if it takes positional-only arguments

    await plugin.startup(gateway=plugin_host() if gateway is None else gateway)
    try:
        upstream = FakeUpstream()
        chain = Chain([ChainEntry(plugin.name, plugin)], upstream)
        for stream in (False, True):
            content = f"conformance {'stream' if stream else 'body'}"
            reply = await chain.run(make_call(content, stream=stream))
            assert isinstance(reply, Reply), "handle must return a Reply"
            assert reply.is_stream == stream or answers_itself, (
                f"a {'streamed' if stream else 'complete'} call got the other shape back"
            )
            text = await collect(reply)
            if not answers_itself:
                assert text == expected_text(content), f"reply text changed: {text!r}"

        # Two calls at once: each gets its own answer (no per-call state on the instance).
        a, b = make_call("first call", stream=True), make_call("second call", stream=True)
        ra, rb = await asyncio.gather(chain.run(a), chain.run(b))
        ta, tb = await asyncio.gather(collect(ra), collect(rb))
        if not answers_itself:
            assert (ta, tb) == (expected_text("first call"), expected_text("second call")), (
                f"concurrent calls mixed up: {ta!r}, {tb!r}"
            )

        # An upstream error reaches the caller as itself (the plugin may not swallow it
        # into a success or turn it into another type).
        failing = Chain([ChainEntry(plugin.name, plugin)], FakeUpstream(fail=True))
        try:
            reply = await failing.run(make_call("upstream fails"))
        except UpstreamError:
            pass
        else:
            assert answers_itself, "an upstream error was swallowed into a reply"
    finally:
        await plugin.shutdown()
