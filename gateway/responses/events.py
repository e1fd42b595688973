"""A streamed chat answer as the Responses API's streaming events.

The order is OpenAI's for one text message:

    response.created, response.in_progress        the response, status in_progress
    response.output_item.added                    the assistant message, no parts yet
    response.content_part.added                   its output_text part, empty
    response.output_text.delta                    one per chat content delta
    response.output_text.done, response.content_part.done, response.output_item.done
    response.completed | response.incomplete      the final response, with usage

Each event is named and carries the same `type`, with a `sequence_number` counting up
from 0. The opening events wait for the first chat chunk, so they name the model that
answers. The chat chunks are assembled alongside (gateway/replay.py's Assembler) into
the final answer. Only a stream that ended with its finish reason completes: one that
ends short is an upstream failure, and one that raises lets the exception through
(the edge ends the stream with an error event). Either way, and when the client leaves
early, the chat stream is closed at once so the upstream stops generating.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from gateway.call import close_stream
from gateway.errors import UpstreamError
from gateway.payload import Chunk
from gateway.replay import Assembler
from gateway.responses.items import new_id, text_part
from gateway.responses.output import ResponseHead, output_message

Keep = Callable[[dict[str, Any]], Awaitable[None]]  # stores the final response


async def response_events(
    chunks: AsyncIterator[Chunk], head: ResponseHead, keep: Keep | None
) -> AsyncIterator[Chunk]:
    """Events for the chat stream `chunks`; `keep` gets the final response before the
    last event goes out (a client that chains on it at once finds it stored)."""
    numbers = itertools.count()

    def event(type_: str, **fields: Any) -> Chunk:
        return Chunk.of({"type": type_, "sequence_number": next(numbers), **fields}, type_)

    item_id = new_id("msg")
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    assembler = Assembler()
    started = False
    try:
        async for chunk in chunks:
            if not started:
                started = True
                model = _model(chunk) or head.model
                opening = head.body(status="in_progress", model=model)
                yield event("response.created", response=opening)
                yield event("response.in_progress", response=opening)
                item = output_message(item_id, None, "in_progress")
                yield event("response.output_item.added", output_index=0, item=item)
                part = text_part("assistant", "")
                yield event("response.content_part.added", **where, part=part)
            assembler.feed(chunk)
            for delta in _text_deltas(chunk):
                yield event("response.output_text.delta", **where, delta=delta, logprobs=[])
    finally:
        await close_stream(chunks)
    if not assembler.complete:
        raise UpstreamError("The upstream's stream ended before its answer was complete.")
    final = head.finished(assembler.body(), item_id)
    message = final["output"][0]
    text = message["content"][0]["text"]
    yield event("response.output_text.done", **where, text=text, logprobs=[])
    yield event("response.content_part.done", **where, part=message["content"][0])
    yield event("response.output_item.done", output_index=0, item=message)
    if keep is not None:
        await keep(final)
    closing = "response.completed" if final["status"] == "completed" else "response.incomplete"
    yield event(closing, response=final)


def _model(chunk: Chunk) -> str | None:
    data = chunk.data
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) and model else None


def _text_deltas(chunk: Chunk) -> list[str]:
    """The content deltas of choice 0 in a chat chunk (the role chunk's "" is none)."""
    data = chunk.data
    if not isinstance(data, dict):
        return []
    out = []
    for choice in data.get("choices") or ():
        delta = choice.get("delta") if choice.get("index", 0) == 0 else None
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str) and content:
            out.append(content)
    return out
