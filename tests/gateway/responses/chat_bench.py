"""The Responses tests' bench: a chat upstream that records the chat requests it gets and
answers with canned text (a body or a stream), and helpers that make a Responses call and
read its events as the OpenAI SDK parses them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from openai.types.responses import (
    Response,
    ResponseStreamEvent,
)
from pydantic import TypeAdapter

from gateway.call import CHAT, RESPONSES, Call, Reply, make_call
from gateway.errors import UpstreamError
from gateway.payload import Chunk, Payload

EVENT = TypeAdapter[Any](ResponseStreamEvent)
UPSTREAM_HEADERS = {"x-upstream": "chat"}


class Chat:
    """A chat upstream answering `text`: a chat.completion, or chunks as the engine sends
    them (the role, one per word, the finish reason, the usage when asked for). It keeps
    every request it got, and notes whether its stream ran to the end or was closed;
    `fail_after`: the stream raises after that many words."""

    def __init__(
        self,
        text: str = "Hello there, friend.",
        *,
        finish_reason: str = "stop",
        fail_after: int | None = None,
    ) -> None:
        self.text = text
        self.finish_reason = finish_reason
        self.fail_after = fail_after
        self.requests: list[dict[str, Any]] = []
        self.finished = False
        self.closed = False

    async def __call__(self, call: Call) -> Reply:
        assert call.endpoint == CHAT and call.request.messages
        self.requests.append(call.body.data)
        if call.stream:
            return Reply(stream=self._chunks(call.body.data), headers=dict(UPSTREAM_HEADERS))
        message = {"role": "assistant", "content": self.text}
        choice = {"index": 0, "message": message, "finish_reason": self.finish_reason}
        body = {**self._head("chat.completion"), "choices": [choice], "usage": self._usage()}
        return Reply(body=Payload.of(body), headers=dict(UPSTREAM_HEADERS))

    def _head(self, object_: str) -> dict[str, Any]:
        return {"id": "chatcmpl-1", "object": object_, "created": 1, "model": "engine-model"}

    def _usage(self) -> dict[str, Any]:
        words = len(self.text.split())
        return {
            "prompt_tokens": 12,
            "completion_tokens": words,
            "total_tokens": 12 + words,
            "prompt_tokens_details": {"cached_tokens": 4},
        }

    async def _chunks(self, request: dict[str, Any]) -> AsyncIterator[Chunk]:
        head = self._head("chat.completion.chunk")

        def chunk(choices: list[dict[str, Any]], **more: Any) -> Chunk:
            return Chunk.of({**head, "choices": choices, **more})

        try:
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
            for i, word in enumerate(self.text.split(" ")):
                if i == self.fail_after:
                    raise UpstreamError("the backend died mid-answer", upstream_status=None)
                delta = {"content": word if i == 0 else " " + word}
                yield chunk([{"index": 0, "delta": delta}])
            yield chunk([{"index": 0, "delta": {}, "finish_reason": self.finish_reason}])
            if (request.get("stream_options") or {}).get("include_usage"):
                yield chunk([], usage=self._usage())
            self.finished = True
        finally:
            self.closed = True


def responses_call(tenant: str = "t", **body: Any) -> Call:
    return make_call(RESPONSES, {"model": "m", **body}, tenant=tenant, request_id="req-1")


async def events_of(reply: Reply) -> list[dict[str, Any]]:
    assert reply.stream is not None
    out = []
    async for chunk in reply.stream:
        assert chunk.event == chunk.data["type"]
        assert chunk.frame.startswith(f"event: {chunk.event}\ndata: ".encode())
        out.append(chunk.data)
    return out


def response_of(reply: Reply) -> Response:
    assert reply.body is not None
    return Response.model_validate(reply.body.data)
