"""Exact response cache: the same request (everything that changes the answer, for the
same tenant and conversation) answered from the store.

- Key: policies/cache.py `exact_key` (the whole request minus stream/user fields, plus
  tenant, endpoint, conversation scope), namespaced `exact:<key>` in the gateway store.
- Admission: by default only reproducible requests (temperature 0 or a seed); a
  complete answer only (a failed or cut-off stream is never kept).
- `Cache-Control` per request: no-store (bypass), no-cache (ask upstream, keep the
  answer), max-age=N (answers up to N s old, and keep this one N s; capped by max_ttl_s).
- Streams: the upstream is asked for the usage chunk so the kept answer has usage; a hit
  on a streaming request is replayed as chunks (gateway/replay.py).
- Identical requests in flight at once share one upstream call (gateway/flight.py).
- `x-cache: hit | miss | bypass` on every answer, and `age` (seconds) on hits.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.call import Body, Call, Chunk, Reply
from gateway.flight import Flight, Flights, is_usage_only
from gateway.plugin import Next, Plugin
from gateway.replay import replay
from gateway.schemas import ChatCompletion, Completion, StreamOptions
from policies.cache import (
    CacheControl,
    entry_ttl,
    exact_key,
    is_fresh,
    is_reproducible,
    parse_cache_control,
)

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.stores import Store

HEADER = "x-cache"


class Entry(msgspec.Struct, array_like=True):
    """What the store keeps: when the answer was made, which endpoint, the answer."""

    created: float
    chat: bool
    body: msgspec.Raw


_entry_decoder = msgspec.json.Decoder(Entry)
_chat_decoder = msgspec.json.Decoder(ChatCompletion)
_text_decoder = msgspec.json.Decoder(Completion)
_encoder = msgspec.json.Encoder()


def encode_entry(body: Body, created: float) -> bytes:
    return _encoder.encode(
        Entry(created, isinstance(body, ChatCompletion), msgspec.Raw(_encoder.encode(body)))
    )


def decode_entry(raw: bytes) -> tuple[float, Body] | None:
    """None for an entry this version cannot read (it is then treated as a miss)."""
    try:
        entry = _entry_decoder.decode(raw)
        decoder = _chat_decoder if entry.chat else _text_decoder
        return entry.created, decoder.decode(entry.body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def wants_usage(call: Call) -> bool:
    options = call.request.stream_options
    return options is not None and options.include_usage


def with_usage_chunk(call: Call) -> Call:
    """The call as sent upstream for a stream that will be kept: with the usage chunk."""
    if wants_usage(call):
        return call
    request = msgspec.structs.replace(
        call.request, stream_options=StreamOptions(include_usage=True)
    )
    return call.replace(request=request)


class ExactCache(Plugin):
    name = "exact_cache"

    def __init__(
        self,
        *,
        ttl_s: float = 3600.0,
        max_ttl_s: float = 86400.0,
        only_reproducible: bool = True,
    ) -> None:
        if ttl_s <= 0 or max_ttl_s <= 0:
            raise TypeError("ttl_s and max_ttl_s must be positive")
        self.ttl_s, self.max_ttl_s = ttl_s, max_ttl_s
        self.only_reproducible = only_reproducible
        self.flights = Flights()
        self.store: Store | None = None
        self._gateway: Gateway | None = None

    async def startup(self, *, gateway: Gateway) -> None:
        self.store = gateway.store
        self._gateway = gateway

    def _count(self, outcome: str) -> None:
        metrics = self._gateway.metrics if self._gateway is not None else None
        if metrics is not None:
            metrics.cache_outcome(self.name, outcome)

    async def handle(self, *, call: Call, call_next: Next) -> Reply:
        store = self.store
        control = parse_cache_control(call.headers.get("cache-control"))
        request = call.request
        reproducible = is_reproducible({"temperature": request.temperature, "seed": request.seed})
        if store is None or not control.may_write or (self.only_reproducible and not reproducible):
            self._count("bypass")
            call.response_headers[HEADER] = "bypass"
            return await call_next(call)
        data: dict[str, Any] = msgspec.to_builtins(request)  # only for requests it may keep
        key = "exact:" + exact_key(call.endpoint, call.tenant, call.conversation_id, data)
        if control.may_read:
            raw = await store.get(key)
            found = decode_entry(raw) if raw is not None else None
            if found is not None:
                created, body = found
                age = max(0.0, time.time() - created)
                if is_fresh(age, control):
                    self._count("hit")
                    call.response_headers[HEADER] = "hit"
                    call.response_headers["age"] = str(int(age))
                    return self._serve(call, body)
            flight = self.flights.get(key)
            if flight is not None:
                reply = await self._follow(call, flight)
                if reply is not None:
                    self._count("hit")
                    call.response_headers[HEADER] = "hit"
                    return reply
        self._count("miss")
        call.response_headers[HEADER] = "miss"
        return await self._lead(call, call_next, key, control)

    def _serve(self, call: Call, body: Body) -> Reply:
        if call.stream:
            return Reply(stream=replay(body, include_usage=wants_usage(call)))
        return Reply(body=body)

    async def _follow(self, call: Call, flight: Flight) -> Reply | None:
        """Shares the leader's answer; None when the leader failed before answering."""
        await flight.wait_started()
        if call.stream and flight.streaming:
            return Reply(stream=flight.subscribe(_chunk_filter(call)))
        await flight.wait_finished()
        if flight.body is None:
            return None
        return self._serve(call, flight.body)

    async def _lead(self, call: Call, call_next: Next, key: str, control: CacheControl) -> Reply:
        ttl = entry_ttl(self.ttl_s, self.max_ttl_s, control)

        async def keep(body: Body) -> None:
            assert self.store is not None
            await self.store.set(key, encode_entry(body, time.time()), ttl)

        # A no-cache request refreshes the entry but does not lead a flight others
        # would follow (it asked for a fresh answer; followers asked for any answer).
        flight = self.flights.start(key) if self.flights.get(key) is None else None
        try:
            reply = await call_next(with_usage_chunk(call) if call.stream else call)
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
        reply.stream = flight.subscribe(_chunk_filter(call))
        return reply


def _chunk_filter(call: Call) -> Any:
    """Drops the usage chunk for clients that did not ask for it (the cache did)."""
    if wants_usage(call):
        return None

    def keep(chunk: Chunk) -> bool:
        return not is_usage_only(chunk)

    return keep
