"""The Litestar application: OpenAI routes -> auth -> the model's plugin chain -> upstream.

Each request: the API key gives the tenant (gateway/auth.py), the body is decoded into a
typed request (400 when invalid, nothing else runs), the model name picks a target
(404 when unknown), and a `Call` runs through that model's plugin chain; the chain's
last step (`Gateway.send`) calls the backend the routing plugin chose (or the first
available one). Replies carry `x-gateway-overhead-ms`: time spent in the gateway itself,
the upstream's time left out (for streams: up to the upstream opening its stream).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath
from litestar.response import Stream
from opentelemetry.trace import SpanKind, Tracer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway import telemetry
from gateway.auth import Authenticator
from gateway.call import Call, Endpoint, Reply
from gateway.chain import Chain, ChainObserver
from gateway.embeddings_route import create_embeddings
from gateway.errors import (
    EXCEPTION_HANDLERS,
    ModelNotFound,
    OpenAIError,
    UpstreamError,
    invalid_body,
)
from gateway.metrics import GatewayMetrics
from gateway.plugin import Plugin
from gateway.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from gateway.sse import encode_sse
from gateway.stores.fail_open import FailOpenStore
from gateway.stores.memory import MemoryStore
from gateway.targets import Backend, Group, ModelTarget
from gateway.upstreams.base import Upstream

if TYPE_CHECKING:
    from gateway.embeddings import Embedder

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
OVERHEAD_HEADER = "x-gateway-overhead-ms"
UPSTREAM_SECONDS = "upstream_seconds"  # call.state key: time spent waiting on upstreams
BACKEND = "backend"  # call.state key: the Backend the routing plugin chose


@dataclass(slots=True)
class Gateway:
    """What the routes serve: model targets, each with its plugin chain."""

    targets: dict[str, ModelTarget]
    chains: dict[str, Chain] = field(default_factory=dict)
    auth: Authenticator = field(default_factory=lambda: Authenticator({}))
    plugins: list[Plugin] = field(default_factory=list)  # each instance once
    metrics: GatewayMetrics | None = None
    tracer: Tracer | None = None  # OpenTelemetry (gateway/telemetry.py); None: off
    capture_content: bool = False  # prompt/completion text on spans
    # Where caches and conversations keep state; fails open (gateway/stores/).
    store: FailOpenStore = field(default_factory=lambda: FailOpenStore(MemoryStore()))
    # The local embedding model (gateway/embeddings.py), loaded on first use by
    # load_embedder() from the factory (a gateway that never embeds never pays for it).
    embedder: Embedder | None = None
    embedder_factory: Callable[[], Awaitable[Embedder]] | None = None
    embedder_names: frozenset[str] = frozenset()  # model names /v1/embeddings answers to
    _embedder_loading: asyncio.Future[Embedder] | None = None
    started: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def single(cls, upstream: Upstream, model: str) -> Gateway:
        """One model served by one upstream, no plugins (the standalone backend server)."""
        backend = Backend(id=model, group="local", upstream=upstream)
        gw = cls({model: ModelTarget(model, [Group("local", [backend])])})
        gw.build_chains({model: []})
        return gw

    def build_chains(
        self, entries: dict[str, list[Any]], observer: ChainObserver | None = None
    ) -> None:
        """entries: model -> its ChainEntries (plugin_loader.build_chain)."""
        self.chains = {
            m: Chain(entries.get(m, []), self.send, observer, self.tracer) for m in self.targets
        }

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
            return await self._send(call, target, backend)
        model = target.upstream_model or call.model
        attrs = {
            "gen_ai.operation.name": telemetry.operation(call),
            "gen_ai.request.model": model,
            "server.address": backend.id,
            "llm_gateway.backend.group": backend.group,
        }
        name = f"{telemetry.operation(call)} {model}"
        with self.tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attrs):
            return await self._send(call, target, backend)

    async def _send(self, call: Call, target: ModelTarget, backend: Backend) -> Reply:
        began = time.perf_counter()
        try:
            if call.endpoint == "chat.completions":
                assert isinstance(call.request, ChatCompletionRequest)
                result: Any = await backend.client.chat(call.request, target.upstream_model)
            else:
                assert isinstance(call.request, CompletionRequest)
                result = await backend.client.complete(call.request, target.upstream_model)
        finally:
            call.state[UPSTREAM_SECONDS] = (
                call.state.get(UPSTREAM_SECONDS, 0.0) + time.perf_counter() - began
            )
        if isinstance(result, msgspec.Struct):
            return Reply(body=result)  # type: ignore[arg-type]
        return Reply(stream=result)

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
        for plugin in self.plugins:
            await plugin.startup(gateway=self)

    async def close(self) -> None:
        for plugin in reversed(self.plugins):
            await plugin.shutdown()
        if self._embedder_loading is not None and not self._embedder_loading.done():
            self._embedder_loading.cancel()
        if self.embedder is not None:
            await self.embedder.close()
            close_model = getattr(self.embedder.model, "close", None)
            if close_model is not None:
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


def _gateway(request: Request[Any, Any, Any]) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def _json(payload: msgspec.Struct, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(
        msgspec.json.encode(payload),
        status_code=200,
        media_type="application/json",
        headers=headers,
    )


async def serve_call(
    gw: Gateway, endpoint: Endpoint, type_: type[Any], raw: bytes, headers: Mapping[str, str]
) -> tuple[Reply, dict[str, str]]:
    """One generation request, whatever serves HTTP: auth, decode, the model's chain,
    metrics and tracing. Returns the reply (its stream wrapped for metrics and tracing)
    and the response headers; raises OpenAIError for answers in OpenAI's error shape."""
    started = time.perf_counter()
    tenant = gw.auth.tenant(headers.get("authorization"))
    try:
        body = msgspec.json.decode(raw, type=type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise invalid_body(exc) from exc
    call = Call(
        endpoint=endpoint,
        request=body,
        tenant=tenant,
        headers=headers,
        conversation_id=headers.get("x-conversation-id"),
        target=gw.target(body.model),
        started=started,
    )
    metrics = gw.metrics
    span = (
        None
        if gw.tracer is None
        else telemetry.start_request_span(gw.tracer, call, gw.capture_content)
    )
    try:
        if span is None:
            reply = await gw.chains[call.model].run(call)
        else:
            with telemetry.use_span(span):
                reply = await gw.chains[call.model].run(call)
    except BaseException as exc:
        if metrics is not None and isinstance(exc, OpenAIError):
            metrics.answered(call, exc.status_code)
        if span is not None:
            telemetry.record_error(span, exc)
            span.end()
        raise
    if span is not None:
        if reply.stream is None:
            telemetry.record_body(span, reply, gw.capture_content)
            span.end()
        else:
            reply.stream = telemetry.traced_stream(span, reply.stream, gw.capture_content)
    own = time.perf_counter() - started - call.state.get(UPSTREAM_SECONDS, 0.0)
    out_headers = {**reply.headers, OVERHEAD_HEADER: f"{own * 1e3:.3f}"}
    if metrics is not None:
        metrics.observe_overhead(call.model, own)
        if reply.body is not None:
            metrics.answered(call, 200, reply.body.usage)
        else:
            assert reply.stream is not None
            reply.stream = metrics.watch_stream(call, reply.stream)
    return reply, out_headers


async def _serve(
    request: Request[Any, Any, Any], endpoint: Endpoint, type_: type[Any]
) -> Response[bytes] | Stream:
    raw = await request.body()
    reply, headers = await serve_call(_gateway(request), endpoint, type_, raw, request.headers)
    if reply.body is not None:
        return _json(reply.body, headers)
    assert reply.stream is not None
    return Stream(
        encode_sse(reply.stream),
        status_code=200,
        media_type="text/event-stream",
        headers=SSE_HEADERS | headers,
    )


@post("/v1/chat/completions")
async def chat_completions(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    return await _serve(request, "chat.completions", ChatCompletionRequest)


@post("/v1/completions")
async def completions(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    return await _serve(request, "completions", CompletionRequest)


@get("/v1/models")
async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
    gw = _gateway(request)
    gw.auth.tenant(request.headers.get("authorization"))
    return _json(ModelList(data=[ModelCard(id=m, created=gw.started) for m in gw.models()]))


@get("/v1/models/{model:path}")
async def retrieve_model(request: Request[Any, Any, Any], model: FromPath[str]) -> Response[bytes]:
    gw = _gateway(request)
    gw.auth.tenant(request.headers.get("authorization"))
    name = model.lstrip("/")
    gw.target(name)  # 404 in OpenAI's shape when unknown
    return _json(ModelCard(id=name, created=gw.started))


@get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process serves HTTP. Whether it can answer is /ready."""
    return {"status": "ok"}


@get("/ready")
async def ready(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Readiness: every model has a backend whose breaker lets calls through and that
    says it is ready. 503 with the per-model picture otherwise."""
    gw = _gateway(request)
    now = time.monotonic()
    checks = {}
    for b in gw.backends():
        checks[b.id] = b.breaker.available(now) and await b.client.ready()
    models = {
        name: any(checks[b.id] for g in t.groups for b in g.backends)
        for name, t in gw.targets.items()
    }
    ok = all(models.values())
    # A failing store does not make the gateway unready (caches step aside, requests go
    # on) but it is worth a look: "degraded".
    store_ok = await gw.store.check()
    status = ("ready" if store_ok else "degraded") if ok else "unavailable"
    payload = {
        "status": status,
        "models": models,
        "backends": checks,
        "store": {"kind": gw.store.kind, "ok": store_ok, "error": gw.store.last_error},
    }
    return Response(
        msgspec.json.encode(payload), status_code=200 if ok else 503, media_type="application/json"
    )


def metrics_route(registry: CollectorRegistry, gateway: Gateway) -> HTTPRouteHandler:
    @get("/metrics", media_type=CONTENT_TYPE_LATEST, sync_to_thread=False)
    def metrics() -> bytes:
        if gateway.metrics is not None:
            gateway.metrics.refresh(gateway.backends(), time.monotonic())
            store = gateway.store
            gateway.metrics.store_degraded.labels(store.kind).set(int(store.degraded))
        return generate_latest(registry)

    return metrics


def create_app(gateway: Gateway, registry: CollectorRegistry | None = None) -> Litestar:
    """The app over `gateway`; `registry` (Prometheus) is served on /metrics when given."""

    handlers = [
        chat_completions,
        completions,
        create_embeddings,
        list_models,
        retrieve_model,
        health,
        ready,
    ]
    if registry is not None:
        handlers.append(metrics_route(registry, gateway))
    app = Litestar(
        route_handlers=handlers,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        on_startup=[gateway.startup],
        on_shutdown=[gateway.close],
        openapi_config=None,
    )
    app.state.gateway = gateway
    return app
