"""`ResponsesAdapter`: POST /v1/responses served by a chat-completions upstream, and the
stored responses behind GET/DELETE /v1/responses/{id}.

The gateway calls it, as the chain's last step, for any upstream that does not serve
the Responses API itself (the bundled engine among them). Per request:

    request ─ read_request ─┐
    previous_response_id ───┴─ the conversation (stored input + output, then the new
                               input) ─ chat_request ─ chat(call) ─ chat answer
    chat answer ─ ResponseHead.finished (complete) | response_events (streamed)
                ─ stored (unless store is false) ─ the client

What it keeps is per call (locals and the stored entry), never on the instance, which
every request shares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec

from gateway.call import CHAT, Call, Reply, close_stream
from gateway.errors import InvalidRequest, NotFound, UpstreamError
from gateway.payload import Chunk, Payload
from gateway.replay import Assembler, replay
from gateway.responses.convert import chat_request, read_request
from gateway.responses.events import Keep, response_events
from gateway.responses.items import Item, chat_messages, new_id
from gateway.responses.items import input_items as read_input
from gateway.responses.output import ResponseHead
from gateway.responses.owners import ResponseOwners
from gateway.responses.store import DEFAULT_TTL_S, ResponseStore, StoredResponse
from gateway.stores.fail_open import FailOpenStore
from gateway.views import ChatView


class ResponsesAdapter:
    def __init__(self, store: FailOpenStore, *, ttl_s: float | None = DEFAULT_TTL_S) -> None:
        self.stored = ResponseStore(store, ttl_s)
        self.owners = ResponseOwners(store, ttl_s)

    async def passed_through(self, call: Call, reply: Reply) -> None:
        """A response an upstream made itself: note where it lives (gateway/responses/
        owners.py), so that GET/DELETE /v1/responses/{id} can go back there."""
        if call.body.data.get("store") is False:
            return
        if reply.body is not None:
            await self.owners.note_body(call.tenant, reply.body, call.model)
        elif reply.stream is not None:
            reply.stream = self.owners.noting(call.tenant, reply.stream, call.model)

    async def owner(self, tenant: str, response_id: str) -> str | None:
        """The model whose upstream holds `response_id`, when it was passed through."""
        return await self.owners.owner(tenant, response_id)

    async def create(self, call: Call, chat: Callable[[Call], Awaitable[Reply]]) -> Reply:
        request = read_request(call.body)
        earlier = await self._earlier(call.tenant, request.previous_response_id)
        context = [*earlier, *read_input(request.input)]
        data = chat_request(request, chat_messages(context))
        head = ResponseHead.start(request)
        # The same call (tenant, target, request id, shared state) asking for chat; the
        # client's path and query were for /v1/responses.
        view = msgspec.convert(data, ChatView)
        chat_call = call.replace(
            endpoint=CHAT, body=Payload.of(data), request=view, path="", query=""
        )
        reply = await chat(chat_call)
        keep = None if request.store is False else self._keeper(call.tenant, context)
        headers = dict(reply.headers)
        if request.stream:
            events = response_events(_chunks(reply), head, keep)
            return Reply(stream=events, headers=headers)
        final = head.finished(await _answer(reply), new_id("msg"))
        if keep is not None:
            await keep(final)
        return Reply(body=Payload.of(final), headers=headers)

    async def _earlier(self, tenant: str, previous_id: str | None) -> list[Item]:
        """The conversation `previous_response_id` continues (none without one)."""
        if previous_id is None:
            return []
        found = await self.stored.load(tenant, previous_id)
        if found is None:
            raise InvalidRequest(
                f"Previous response with id '{previous_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return found.conversation

    def _keeper(self, tenant: str, context: list[Item]) -> Keep:
        async def keep(final: dict[str, Any]) -> None:
            await self.stored.save(tenant, StoredResponse(response=final, input=context))

        return keep

    async def retrieve(self, tenant: str, response_id: str, *, input_items: bool) -> Reply:
        stored = await self._find(tenant, response_id)
        if not input_items:
            return Reply(body=Payload.of(stored.response))
        # OpenAI lists input items newest first unless asked otherwise (order=desc).
        items = stored.input[::-1]
        page = {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
            "has_more": False,
        }
        return Reply(body=Payload.of(page))

    async def delete(self, tenant: str, response_id: str) -> Reply:
        await self._find(tenant, response_id)
        await self.stored.delete(tenant, response_id)
        deleted = {"id": response_id, "object": "response.deleted", "deleted": True}
        return Reply(body=Payload.of(deleted))

    async def _find(self, tenant: str, response_id: str) -> StoredResponse:
        found = await self.stored.load(tenant, response_id)
        if found is None:
            raise NotFound(f"Response with id '{response_id}' not found.")
        return found


def _chunks(reply: Reply) -> AsyncIterator[Chunk]:
    """The chat answer as chunks (a complete one, from an upstream that answered a
    stream with a body, replayed as a stream)."""
    if reply.stream is not None:
        return reply.stream
    if reply.body is not None:
        return replay(reply.body, include_usage=True)
    raise UpstreamError("The upstream's chat answer is not JSON.")


async def _answer(reply: Reply) -> dict[str, Any]:
    """The chat answer as one chat.completion (a stream assembled to its end)."""
    if reply.body is not None:
        data = reply.body.data
        if not isinstance(data, dict):
            raise UpstreamError("The upstream's chat answer is not a JSON object.")
        return data
    if reply.stream is None:
        raise UpstreamError("The upstream's chat answer is not JSON.")
    assembler = Assembler()
    try:
        async for chunk in reply.stream:
            assembler.feed(chunk)
    finally:
        await close_stream(reply.stream)
    if not assembler.complete:
        raise UpstreamError("The upstream's stream ended before its answer was complete.")
    return assembler.body()
