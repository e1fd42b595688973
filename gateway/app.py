"""The Litestar application: OpenAI routes over a set of upstreams."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.response import Stream
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.errors import EXCEPTION_HANDLERS, ModelNotFound, invalid_body
from gateway.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from gateway.sse import encode_sse
from gateway.upstreams.base import Upstream

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(slots=True)
class Gateway:
    """What the routes serve: model name -> the upstream that serves it."""

    upstreams: list[Upstream]
    started: int = field(default_factory=lambda: int(time.time()))

    def upstream_for(self, model: str) -> Upstream:
        for upstream in self.upstreams:
            if model in upstream.model_ids():
                return upstream
        raise ModelNotFound(model)

    def models(self) -> list[str]:
        return [m for u in self.upstreams for m in u.model_ids()]

    async def close(self) -> None:
        for upstream in self.upstreams:
            await upstream.close()


def _gateway(request: Request[Any, Any, Any]) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def _decode(request: Request[Any, Any, Any], type_: type[T]) -> T:
    try:
        return msgspec.json.decode(await request.body(), type=type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise invalid_body(exc) from exc


def _json(payload: msgspec.Struct) -> Response[bytes]:
    return Response(msgspec.json.encode(payload), media_type="application/json")


def _reply(result: msgspec.Struct | AsyncIterator[Any]) -> Response[bytes] | Stream:
    if isinstance(result, msgspec.Struct):
        return _json(result)
    return Stream(encode_sse(result), media_type="text/event-stream", headers=SSE_HEADERS)


@post("/v1/chat/completions")
async def chat_completions(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    body = await _decode(request, ChatCompletionRequest)
    return _reply(await _gateway(request).upstream_for(body.model).chat(body))


@post("/v1/completions")
async def completions(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    body = await _decode(request, CompletionRequest)
    return _reply(await _gateway(request).upstream_for(body.model).complete(body))


@get("/v1/models")
async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
    gw = _gateway(request)
    return _json(ModelList(data=[ModelCard(id=m, created=gw.started) for m in gw.models()]))


@get("/v1/models/{model:path}")
async def retrieve_model(request: Request[Any, Any, Any], model: str) -> Response[bytes]:
    gw = _gateway(request)
    name = model.lstrip("/")
    gw.upstream_for(name)  # 404 in OpenAI's shape when unknown
    return _json(ModelCard(id=name, created=gw.started))


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def metrics_route(registry: CollectorRegistry) -> HTTPRouteHandler:
    @get("/metrics", media_type=CONTENT_TYPE_LATEST, sync_to_thread=False)
    def metrics() -> bytes:
        return generate_latest(registry)

    return metrics


def create_app(gateway: Gateway, registry: CollectorRegistry | None = None) -> Litestar:
    """The app over `gateway`; `registry` (Prometheus) is served on /metrics when given."""

    async def close_upstreams() -> None:
        await gateway.close()

    handlers = [chat_completions, completions, list_models, retrieve_model, health]
    if registry is not None:
        handlers.append(metrics_route(registry))
    app = Litestar(
        route_handlers=handlers,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        on_shutdown=[close_upstreams],
        openapi_config=None,
    )
    app.state.gateway = gateway
    return app
