"""The Gateway: model targets with their plugin chains, the shared services (store,
embedder, metrics, tracing), and the chain's last step (`send`), which hands the call to
the backend the routing plugin chose (or the first available one).

What goes upstream besides the body: `x-request-id`, W3C trace context (the gateway's
client span injected when tracing is on; the client's own headers passed on when it is
off, so a trace through a gateway without tracing stays whole), and the client headers
on the `[headers] forward` list.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Tracer

from gateway import telemetry
from gateway.auth import Authenticator
from gateway.call import CHAT, RESPONSES, Call, Reply
from gateway.chain import Chain, ChainObserver
from gateway.errors import InvalidRequest, ModelNotFound, UpstreamError
from gateway.headers import DEFAULT_FORWARD, REQUEST_ID, TRACE_CONTEXT, HeaderRules
from gateway.plugin import Plugin
from gateway.runtime.host import PluginHost
from gateway.stores.fail_open import FailOpenStore
from gateway.stores.memory import MemoryStore
from gateway.targets import Backend, Group, ModelTarget
from gateway.upstreams.base import Upstream

if TYPE_CHECKING:
    from gateway.embeddings import Embedder
    from gateway.metrics import GatewayMetrics
    from gateway.responses.adapter import ResponsesAdapter
    from gateway.runtime.admission import Gate

UPSTREAM_SECONDS = "upstream_seconds"  # call.state key: time spent waiting on upstreams
BACKEND = "backend"  # call.state key: the Backend the routing plugin chose


@dataclass(slots=True)
class Gateway:
    targets: dict[str, ModelTarget]
    chains: dict[str, Chain] = field(default_factory=dict)
    auth: Authenticator = field(default_factory=lambda: Authenticator({}))
    plugins: list[Plugin] = field(default_factory=list)  # each instance once
    metrics: GatewayMetrics | None = None
    tracer: Tracer | None = None  # OpenTelemetry (gateway/telemetry.py); None: off
    capture_content: bool = False  # prompt/completion text on spans
    # Where caches, conversations and stored responses keep state; fails open.
    store: FailOpenStore = field(default_factory=lambda: FailOpenStore(MemoryStore()))
    forward: HeaderRules = field(default_factory=lambda: HeaderRules(DEFAULT_FORWARD))
    # The local embedding model (gateway/embeddings/), loaded on first use by
    # load_embedder() from the factory (a gateway that never embeds never pays for it).
    embedder: Embedder | None = None
    embedder_factory: Callable[[], Awaitable[Embedder]] | None = None
    embedder_names: frozenset[str] = frozenset()  # model names /v1/embeddings answers to
    owns_embedder_model: bool = True  # close() stops the model's thread (not a shared one)
    embedding_max_tokens: int = 65_536  # per /v1/embeddings request, for the local model
    # The Responses API served over chat, for upstreams that do not serve it (the engine).
    responses: ResponsesAdapter | None = None
    _embedder_loading: asyncio.Future[Embedder] | None = None
    started: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def single(cls, upstream: Upstream, model: str, gate: Gate | None = None) -> Gateway:
        """One model served by one upstream, no plugins (the standalone backend server)."""
        backend = Backend(id=model, group="local", upstream=upstream, gate=gate)
        gw = cls({model: ModelTarget(model, [Group("local", [backend])])})
        gw.build_chains({model: []})
        return gw

    def __post_init__(self) -> None:
        if self.responses is None:
            from gateway.responses.adapter import ResponsesAdapter

            self.responses = ResponsesAdapter(self.store)

    def build_chains(
        self, entries: dict[str, list[Any]], observer: ChainObserver | None = None
    ) -> None:
        """entries: model -> its ChainEntries (plugin_loader.build_chain)."""
        self.chains = {
            m: Chain(entries.get(m, []), self.send, observer, self.tracer) for m in self.targets
        }

    @property
    def host(self) -> PluginHost:
        return PluginHost(
            store=self.store,
            metrics=self.metrics,
            backends=self.backends,
            load_embedder=self.load_embedder,
        )

    def target(self, model: str) -> ModelTarget:
        target = self.targets.get(model)
        if target is None:
            raise ModelNotFound(model)
        return target

    def models(self) -> list[str]:
        return list(self.targets)

    def backends(self) -> list[Backend]:
        seen: dict[int, Backend] = {}
        for t in self.targets.values():
            for g in t.groups:
                for b in g.backends:
                    seen.setdefault(id(b), b)
        return list(seen.values())

    async def send(self, call: Call) -> Reply:
        """The chain's last step: the chosen backend answers."""
        target = call.target
        assert target is not None
        backend = call.state.get(BACKEND) or _first_available(target)
        if self.tracer is None:
            headers = self._upstream_headers(call, trace=True)
            return await self._send(call, target, backend, headers)
        model = target.upstream_model or call.model
        attrs = {
            "gen_ai.operation.name": telemetry.operation(call),
            "gen_ai.request.model": model,
            "server.address": backend.id,
            "llm_gateway.backend.group": backend.group,
            "llm_gateway.request_id": call.request_id,
        }
        name = f"{telemetry.operation(call)} {model}"
        with self.tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attrs):
            headers = self._upstream_headers(call, trace=False)
            propagate.inject(headers)  # this span's traceparent (and baggage) go upstream
            return await self._send(call, target, backend, headers)

    def _upstream_headers(self, call: Call, trace: bool) -> dict[str, str]:
        """The request id and the forwarded client headers; trace: the client's trace
        context headers too (when the gateway has no span of its own to send)."""
        out = self.forward.pick(call.headers)
        if call.request_id:
            out[REQUEST_ID] = call.request_id
        if trace:
            for name in TRACE_CONTEXT:
                value = call.headers.get(name)
                if value is not None:
                    out[name] = value
        return out

    async def _send(
        self, call: Call, target: ModelTarget, backend: Backend, headers: dict[str, str]
    ) -> Reply:
        upstream = backend.client
        gate = backend.gate
        metrics = self.metrics
        try:
            cost = 0 if gate is None else gate.enter(call)  # raises Refused past the bound
        except UpstreamError:
            if metrics is not None:
                metrics.upstream_outcome(backend.id, "refused")
            raise
        began = time.perf_counter()
        try:
            reply = await self._answer(call, target, upstream, headers)
        except BaseException as exc:
            if gate is not None:
                gate.leave(call, cost)
            if metrics is not None and isinstance(exc, UpstreamError):
                metrics.upstream_outcome(backend.id, "error")
            raise
        finally:
            call.state[UPSTREAM_SECONDS] = (
                call.state.get(UPSTREAM_SECONDS, 0.0) + time.perf_counter() - began
            )
        if metrics is not None:
            metrics.upstream_outcome(backend.id, "ok")
        if gate is not None:
            if reply.stream is not None:
                reply.stream = gate.held(call, cost, reply.stream)
            else:
                gate.leave(call, cost)
        return reply

    async def _answer(
        self, call: Call, target: ModelTarget, upstream: Upstream, headers: dict[str, str]
    ) -> Reply:
        if call.endpoint in upstream.endpoints:
            reply = await upstream.send(call, target.upstream_model, headers)
            if call.endpoint == RESPONSES and self.responses is not None:
                await self.responses.passed_through(call, reply)
            return reply
        if call.endpoint == RESPONSES and CHAT in upstream.endpoints:
            assert self.responses is not None

            async def chat(chat_call: Call) -> Reply:
                return await upstream.send(chat_call, target.upstream_model, headers)

            return await self.responses.create(call, chat)
        raise InvalidRequest(
            f"The model `{call.model}` does not serve this endpoint ({call.endpoint}"
            f"{' ' + call.path if call.path else ''}).",
            param="model",
            code="unsupported_endpoint",
        )

    async def load_embedder(self) -> Embedder | None:
        """The embedder, loading it (model into memory, worker thread started) on the
        first call; concurrent first callers share one load. None when not configured."""
        if self.embedder is not None or self.embedder_factory is None:
            return self.embedder
        if self._embedder_loading is None:
            self._embedder_loading = asyncio.ensure_future(self.embedder_factory())
        try:
            self.embedder = await asyncio.shield(self._embedder_loading)
        except Exception:
            self._embedder_loading = None  # a later call tries again
            raise
        return self.embedder

    async def startup(self) -> None:
        host = self.host
        for plugin in self.plugins:
            await plugin.startup(gateway=host)

    async def close(self) -> None:
        for plugin in reversed(self.plugins):
            await plugin.shutdown()
        if self._embedder_loading is not None and not self._embedder_loading.done():
            self._embedder_loading.cancel()
        if self.embedder is not None:
            await self.embedder.close()
            close_model = getattr(self.embedder.model, "close", None)
            if close_model is not None and self.owns_embedder_model:
                close_model()  # the model's own torch thread
        await self.store.close()
        upstreams = {id(b.upstream): b.upstream for b in self.backends() if b.upstream}
        await asyncio.gather(*(u.close() for u in upstreams.values()))


def _first_available(target: ModelTarget) -> Backend:
    now = time.monotonic()
    for group in target.groups:
        for backend in group.backends:
            if backend.breaker.available(now):
                return backend
    for group in target.groups:
        if group.backends:
            return group.backends[0]
    raise UpstreamError(f"no backend configured for {target.name}", status_code=503)
