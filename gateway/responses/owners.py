"""Which model's upstream holds a response the gateway passed through.

A response created by an upstream that serves the Responses API itself (OpenAI, vLLM,
another gateway) lives there: `GET /v1/responses/{id}` (and its input items, DELETE,
cancel) must go back to it, but name no model to route by. So when such a response
passes through, its id is noted with the model that made it (`respowner:<tenant>:<id>`
in the gateway store, for as long as OpenAI keeps stored responses); the id comes from
the JSON answer, or from the first event of a stream that carries the response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

from gateway.call import close_stream
from gateway.payload import Chunk, DecodeErrors, Payload
from gateway.responses.store import DEFAULT_TTL_S
from gateway.stores.fail_open import FailOpenStore
from gateway.views import ResponseEventView, ResponseObjectView


def owner_key(tenant: str, response_id: str) -> str:
    return f"respowner:{quote(tenant, safe='')}:{response_id}"


class ResponseOwners:
    def __init__(self, store: FailOpenStore, ttl_s: float | None = DEFAULT_TTL_S) -> None:
        self.store, self.ttl_s = store, ttl_s

    async def note(self, tenant: str, response_id: str, model: str) -> None:
        await self.store.set(owner_key(tenant, response_id), model.encode(), self.ttl_s)

    async def owner(self, tenant: str, response_id: str) -> str | None:
        raw = await self.store.get(owner_key(tenant, response_id))
        return None if raw is None else raw.decode("utf-8", "replace")

    async def forget(self, tenant: str, response_id: str) -> None:
        await self.store.delete(owner_key(tenant, response_id))

    async def note_body(self, tenant: str, body: Payload, model: str) -> None:
        try:
            response_id = body.view(ResponseObjectView).id
        except DecodeErrors:
            return
        if response_id:
            await self.note(tenant, response_id, model)

    async def noting(
        self, tenant: str, events: AsyncIterator[Chunk], model: str
    ) -> AsyncIterator[Chunk]:
        """The stream unchanged; the response's id noted from the first event with it."""
        found = False
        try:
            async for chunk in events:
                if not found and b'"response"' in chunk.raw:
                    try:
                        response = chunk.view(ResponseEventView).response
                    except DecodeErrors:
                        response = None
                    if response is not None and response.id:
                        found = True
                        await self.note(tenant, response.id, model)
                yield chunk
        finally:
            await close_stream(events)
