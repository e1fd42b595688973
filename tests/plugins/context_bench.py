"""The context plugin's test bench: a fake upstream that records what it was sent and
answers "reply <n>", messages written short, and a Setup that runs the plugin on the real
chain runtime with the real in-process store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.call import CHAT, Call, Reply, make_call
from gateway.chain import Chain, ChainEntry
from gateway.errors import UpstreamError
from gateway.payload import Chunk, Payload
from gateway.stores.fail_open import FailOpenStore
from gateway.stores.memory import MemoryStore
from gateway.testing.conformance import collect, plugin_host
from plugins.context import ConversationContext, decode_history, store_key

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
        self.seen.append([plain(m) for m in call.body.data["messages"]])
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


def plain(m: Msg) -> Msg:
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
        return [plain(m) for m in decode_history(raw)]

    async def say(self, *messages: Msg, **kw: Any) -> str:
        return await collect(await self.chain.run(chat(*messages, **kw)))


async def setup(**settings: Any) -> Setup:
    return await Setup(ConversationContext(**settings)).start()
