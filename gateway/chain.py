"""Runs a call through the plugin chain and on to the upstream (the terminal step).

Wrapper semantics: plugin i's `handle` receives `call_next`, which runs plugins i+1..n
and then the terminal. A plugin marked optional that raises is skipped and counted,
never failing the request: if it raised before calling call_next the chain goes on
without it; if after, the reply call_next returned is used as is. Errors raised
*below* a plugin (an upstream's 5xx, a later plugin's failure) pass through it
untouched (the plugin may catch them; they are not its failure).

Streams: after the chain returns a streamed reply, every plugin's `on_chunk` runs on
each chunk, innermost first (the order a wrapper would see them), whoever produced the
stream; an optional plugin's failing on_chunk is skipped for that chunk and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.trace import Tracer

from gateway.call import Call, Reply, close_stream
from gateway.payload import Chunk
from gateway.plugin import Hook, Plugin, overrides

log = logging.getLogger(__name__)

Terminal = Callable[[Call], Awaitable[Reply]]


class ChainObserver(Protocol):
    """Told how each plugin hook ended: outcome is ok, error (raised, request failed)
    or skipped (optional plugin raised; the request went on)."""

    def plugin_outcome(self, plugin: str, hook: str, outcome: str, seconds: float) -> None: ...


class _Quiet:
    def plugin_outcome(self, plugin: str, hook: str, outcome: str, seconds: float) -> None:
        return None


@dataclass(frozen=True, slots=True)
class ChainEntry:
    name: str
    plugin: Plugin
    optional: bool = False


class _Link:
    """One plugin in a built chain, with its hooks bound once."""

    __slots__ = ("handle", "name", "on_chunk", "optional")

    def __init__(self, entry: ChainEntry) -> None:
        self.name, self.optional = entry.name, entry.optional
        p = entry.plugin
        self.handle = Hook(p.handle) if overrides(p, "handle") else None
        self.on_chunk = Hook(p.on_chunk) if overrides(p, "on_chunk") else None


class Chain:
    def __init__(
        self,
        entries: Sequence[ChainEntry],
        terminal: Terminal,
        observer: ChainObserver | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.names = [e.name for e in entries]
        self._links = [_Link(e) for e in entries]
        self._handlers = [link for link in self._links if link.handle is not None]
        self._chunkers = [link for link in reversed(self._links) if link.on_chunk is not None]
        self._terminal = terminal
        self._observer = observer or _Quiet()
        self._tracer = tracer  # a span per plugin when set

    async def run(self, call: Call) -> Reply:
        reply = await self._step(0, call)
        if reply.headers or call.response_headers:
            reply.headers = {**call.response_headers, **reply.headers}
        if reply.stream is not None and self._chunkers:
            reply.stream = self._chunks(call, reply.stream)
        return reply

    async def _step(self, i: int, call: Call) -> Reply:
        if i == len(self._handlers):
            return await self._terminal(call)
        link = self._handlers[i]
        assert link.handle is not None
        below: list[Reply] = []  # what call_next returned
        raised: list[BaseException] = []  # what call_next raised

        async def call_next(next_call: Call) -> Reply:
            try:
                reply = await self._step(i + 1, next_call)
            except BaseException as exc:
                raised.append(exc)
                raise
            below.append(reply)
            return reply

        began = time.perf_counter()
        try:
            if self._tracer is None:
                reply: Reply = await link.handle(call=call, call_next=call_next)
            else:
                with self._tracer.start_as_current_span(f"plugin {link.name}"):
                    reply = await link.handle(call=call, call_next=call_next)
        except Exception as exc:
            seconds = time.perf_counter() - began
            if any(exc is e for e in raised):  # came from below: not this plugin's failure
                self._observer.plugin_outcome(link.name, "handle", "ok", seconds)
                raise
            if not link.optional:
                self._observer.plugin_outcome(link.name, "handle", "error", seconds)
                raise
            self._observer.plugin_outcome(link.name, "handle", "skipped", seconds)
            log.warning("optional plugin %s failed, skipped: %r", link.name, exc)
            if raised:  # it failed while handling an error from below: that error stands
                raise raised[-1] from None
            return below[-1] if below else await self._step(i + 1, call)
        self._observer.plugin_outcome(link.name, "handle", "ok", time.perf_counter() - began)
        if not isinstance(reply, Reply):
            raise TypeError(f"plugin {link.name}: handle returned {type(reply).__name__}")
        return reply

    async def _chunks(self, call: Call, stream: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        try:
            async for chunk in stream:
                for link in self._chunkers:
                    assert link.on_chunk is not None
                    try:
                        chunk = await link.on_chunk(call=call, chunk=chunk)
                    except Exception as exc:
                        if not link.optional:
                            self._observer.plugin_outcome(link.name, "on_chunk", "error", 0.0)
                            raise
                        self._observer.plugin_outcome(link.name, "on_chunk", "skipped", 0.0)
                        log.warning("optional plugin %s on_chunk failed: %r", link.name, exc)
                yield chunk
        finally:
            await close_stream(stream)  # a client that went away stops the generation below
