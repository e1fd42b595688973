"""Exact response cache: the same request (everything that changes the answer, for the
same tenant and conversation) answered from the store.

- Key: policies/cache.py `exact_key` (the whole request as the client sent it, fields
  the gateway does not know included, minus stream/user fields; plus tenant, endpoint,
  conversation scope), namespaced `exact:<key>` in the gateway store.
- Admission: by default only reproducible requests (temperature 0 or a seed); a
  complete answer only (a failed or cut-off stream is never kept).
- `Cache-Control` per request: no-store (bypass), no-cache (ask upstream, keep the
  answer), max-age=N (answers up to N s old, and keep this one N s; capped by max_ttl_s).
- Answers are kept as the upstream's bytes (every field). Streams: the gateway asks
  the upstream for the usage chunk, so the kept answer has usage; a hit on a streaming
  request is replayed as chunks (gateway/replay.py).
- Identical requests in flight at once share one upstream call (gateway/flight.py).
- `x-cache: hit | miss | bypass` on every answer, and `age` (seconds) on hits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from gateway.call import GENERATION, Call, Reply
from gateway.flight import Flight, Flights
from gateway.payload import Payload
from gateway.plugin import Next, Plugin
from gateway.replay import replay
from policies.cache import (
    CacheControl,
    entry_ttl,
    exact_key,
    is_fresh,
    is_reproducible,
    parse_cache_control,
)

if TYPE_CHECKING:
    from gateway.runtime import PluginHost
    from gateway.stores import Store

HEADER = "x-cache"


class Entry(msgspec.Struct, array_like=True):
    """What the store keeps: when the answer was made, which endpoint, the answer's
    bytes exactly as the upstream sent them."""

    created: float
    chat: bool
    body: msgspec.Raw


_entry_decoder = msgspec.json.Decoder(Entry)
_encoder = msgspec.json.Encoder()


def encode_entry(body: Payload, created: float, chat: bool = True) -> bytes:
    return _encoder.encode(Entry(created, chat, msgspec.Raw(body.raw)))


def decode_entry(raw: bytes) -> tuple[float, Payload] | None:
    """None for an entry this version cannot read (it is then treated as a miss)."""
    try:
        entry = _entry_decoder.decode(raw)
        body = Payload.from_bytes(bytes(entry.body))
        if not isinstance(body.data, dict):
            return None
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return entry.created, body


class ExactCache(Plugin):
    name = "exact_cache"

    def __init__(
        self,
        *,
        ttl_s: float = 3600.0,
        max_ttl_s: float = 86400.0,
        only_reproducible: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_s <= 0 or max_ttl_s <= 0:
            raise TypeError("ttl_s and max_ttl_s must be positive")
        self.ttl_s, self.max_ttl_s = ttl_s, max_ttl_s
        self.only_reproducible = only_reproducible
        self._clock = clock  # wall clock: ages are shared with other replicas
        self.flights = Flights()
        self.store: Store | None = None
        self._gateway: PluginHost | None = None

    async def startup(self, *, gateway: PluginHost) -> None:
        self.store = gateway.store
        self._gateway = gateway

    def _count(self, outcome: str) -> None:
        metrics = self._gateway.metrics if self._gateway is not None else None
        if metrics is not None:
            metrics.cache_outcome(self.name, outcome)

    async def handle(self, *, call: Call, call_next: Next) -> Reply:
        store = self.store
        if call.endpoint not in GENERATION:
            return await call_next(call)
        control = parse_cache_control(call.headers.get("cache-control"))
        view = call.request  # admission reads the view: no need to decode the whole body
        reproducible = is_reproducible({"temperature": view.temperature, "seed": view.seed})
        if store is None or not control.may_write or (self.only_reproducible and not reproducible):
            self._count("bypass")
            call.response_headers[HEADER] = "bypass"
            return await call_next(call)
        data = call.body.data
        key = "exact:" + exact_key(call.endpoint, call.tenant, call.conversation_id, data)
        if control.may_read:
            raw = await store.get(key)
            found = decode_entry(raw) if raw is not None else None
            if found is not None:
                created, body = found
                age = max(0.0, self._clock() - created)
                if is_fresh(age, control):
                    self._count("hit")
                    call.response_headers[HEADER] = "hit"
                    call.response_headers["age"] = str(int(age))
                    return self._serve(call, body)
            flight = self.flights.get(key)
            if flight is not None and flight.joinable:
                reply = await self._follow(call, flight)
                if reply is not None:
                    self._count("hit")
                    call.response_headers[HEADER] = "hit"
                    return reply
        self._count("miss")
        call.response_headers[HEADER] = "miss"
        return await self._lead(call, call_next, key, control)

    def _serve(self, call: Call, body: Payload) -> Reply:
        if call.stream:  # the usage chunk too: the gateway hides it if the client did not ask
            return Reply(stream=replay(body, include_usage=True))
        return Reply(body=body)

    async def _follow(self, call: Call, flight: Flight) -> Reply | None:
        """Shares the leader's answer; None when the leader failed before answering."""
        await flight.wait_started()
        if call.stream and flight.streaming:
            return Reply(stream=flight.subscribe())
        await flight.wait_finished()
        if flight.body is None:
            return None
        return self._serve(call, flight.body)

    async def _lead(self, call: Call, call_next: Next, key: str, control: CacheControl) -> Reply:
        ttl = entry_ttl(self.ttl_s, self.max_ttl_s, control)

        chat = call.endpoint == "chat.completions"

        async def keep(body: Payload) -> None:
            assert self.store is not None
            await self.store.set(key, encode_entry(body, self._clock(), chat), ttl)

        # A no-cache request refreshes the entry but does not lead a flight others
        # would follow (it asked for a fresh answer; followers asked for any answer).
        flight = self.flights.start(key) if self.flights.get(key) is None else None
        try:
            reply = await call_next(call)
        except BaseException as exc:
            if flight is not None:
                flight.settle(None, exc)
            raise
        if reply.body is not None:
            if flight is not None:
                flight.settle(reply.body)
            await keep(reply.body)
            return reply
        assert reply.stream is not None
        if flight is None:
            flight = Flight()  # private: only this client reads it
        flight.pump(reply.stream, keep)
        reply.stream = flight.subscribe()
        return reply
