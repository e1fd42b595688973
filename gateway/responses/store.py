"""Stored responses: what `previous_response_id`, GET and DELETE /v1/responses/{id} read.

Each finished response is kept under `resp:<tenant>:<id>` in the gateway store (the
tenant quoted, as conversation keys are, so tenants "a" and "a:b" never share a key)
with its conversation: every input item that went into it, the earlier turns of a
chain included. A response chained on it then needs this one entry, not a walk down
the chain, and an earlier response expiring or being deleted breaks no later one.

The store fails open: while it is down, nothing is found and nothing is kept.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import msgspec

from gateway.payload import DecodeErrors
from gateway.stores.fail_open import FailOpenStore

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 30 * 24 * 3600.0  # OpenAI keeps stored responses for 30 days


class StoredResponse(msgspec.Struct, kw_only=True):
    response: dict[str, Any]  # the Response object as the client got it
    input: list[dict[str, Any]]  # message items, oldest first (gateway/responses/items.py)

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """What a response chained on this one continues: its input, then its output."""
        return [*self.input, *self.response.get("output", ())]


def store_key(tenant: str, response_id: str) -> str:
    return f"resp:{quote(tenant, safe='')}:{response_id}"


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(StoredResponse)


class ResponseStore:
    def __init__(self, store: FailOpenStore, ttl_s: float | None = DEFAULT_TTL_S) -> None:
        self.store = store
        self.ttl_s = ttl_s

    async def save(self, tenant: str, stored: StoredResponse) -> None:
        key = store_key(tenant, stored.response["id"])
        await self.store.set(key, _encoder.encode(stored), self.ttl_s)

    async def load(self, tenant: str, response_id: str) -> StoredResponse | None:
        raw = await self.store.get(store_key(tenant, response_id))
        if raw is None:
            return None
        try:
            return _decoder.decode(raw)
        except DecodeErrors as exc:
            log.warning("unreadable stored response %s, treated as missing: %s", response_id, exc)
            return None

    async def delete(self, tenant: str, response_id: str) -> None:
        await self.store.delete(store_key(tenant, response_id))
