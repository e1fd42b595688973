"""One request through the gateway, whatever serves HTTP: auth, the body read as the
client sent it (a typed view of what the gateway uses; 400 when that is invalid), the
model's target (404 when unknown), the model's chain, metrics and tracing.

Streams: the upstream is always asked for the usage chunk (token metrics and caches
need it); a client that did not ask for it never sees it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TypeVar

from opentelemetry import propagate

from gateway import telemetry
from gateway.call import EMBEDDINGS, GENERATION, PASSTHROUGH, Call, Reply, view_type
from gateway.embeddings import serve_embeddings
from gateway.errors import InvalidRequest, NotFound, OpenAIError, invalid_body
from gateway.multipart import boundary, read_field
from gateway.observe import drop
from gateway.payload import Chunk, DecodeErrors, Payload, decoder
from gateway.replay import is_usage_only
from gateway.runtime.gateway import UPSTREAM_SECONDS, Gateway
from gateway.views import ModelOnly

OVERHEAD_HEADER = "x-gateway-overhead-ms"
T = TypeVar("T")


@dataclass(slots=True)
class Incoming:
    """One HTTP request as the edge read it."""

    method: str
    path: str  # passthrough: the path under /v1 ("/audio/speech"); else informational
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    request_id: str
    # Set as the runtime learns them (the access log reads them).
    tenant: str | None = None
    model: str | None = None


async def serve_call(
    gw: Gateway, endpoint: str, incoming: Incoming, model: str | None = None
) -> Reply:
    """The reply (its stream wrapped for metrics and tracing) with its headers; raises
    OpenAIError for answers in OpenAI's error shape. `model`: the model to route a
    passthrough request to when its body names none (a stored response's owner)."""
    started = time.perf_counter()
    headers = incoming.headers
    tenant = incoming.tenant = gw.auth.tenant(headers.get("authorization"))
    if endpoint == EMBEDDINGS and _local_model(gw, incoming) in gw.embedder_names:
        body = await serve_embeddings(gw, incoming.body)
        return Reply(body=Payload.from_bytes(body))
    call = _call(endpoint, incoming, tenant, started, model)
    incoming.model = call.model
    call.target = gw.target(call.model)
    metrics = gw.metrics
    span = parent = None
    if gw.tracer is not None:
        parent = propagate.extract(headers)  # the caller's span, when it sent traceparent
        span = telemetry.start_request_span(gw.tracer, call, gw.capture_content, parent)
    try:
        if span is None:
            reply = await gw.chains[call.model].run(call)
        else:
            with telemetry.use_span(span, parent):
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
    reply.headers[OVERHEAD_HEADER] = f"{own * 1e3:.3f}"
    if metrics is not None:
        metrics.observe_overhead(call.model, own)
        if reply.stream is None:
            metrics.answered(call, reply.status, reply.body)
        else:
            reply.stream = metrics.watch_stream(call, reply.stream)
    if reply.stream is not None and not call.wants_usage:
        # The usage-only chunk the gateway asked for on the client's behalf: watchers
        # (metrics) saw it; the client, who did not ask for it, does not.
        reply.stream = drop(reply.stream, _usage_only)
    return reply


def _call(
    endpoint: str, incoming: Incoming, tenant: str, started: float, model: str | None = None
) -> Call:
    headers = incoming.headers
    if endpoint == PASSTHROUGH and (
        not incoming.body or not _is_json(headers.get("content-type"), incoming.body)
    ):
        return _form_call(incoming, tenant, started, model)
    request = _decode(view_type(endpoint), incoming.body)
    model = request.model
    if not model:
        raise InvalidRequest(
            "This request names no model: send `model` to route it.",
            param="model",
            code="missing_model",
        )
    call = Call(
        endpoint=endpoint,
        body=Payload.from_bytes(incoming.body),
        request=request,
        model=model,
        tenant=tenant,
        headers=headers,
        conversation_id=headers.get("x-conversation-id"),
        request_id=incoming.request_id,
        path=incoming.path,
        method=incoming.method,
        query=incoming.query,
        started=started,
    )
    if endpoint in GENERATION and call.stream:
        options = call.request.stream_options
        if not (options is not None and options.include_usage):
            sent = call.body.data.get("stream_options")
            asked = {**(sent if isinstance(sent, dict) else {}), "include_usage": True}
            call = call.edit(stream_options=asked)
            call.wants_usage = False
    return call


def _form_call(incoming: Incoming, tenant: str, started: float, model: str | None) -> Call:
    """A form or a file (or no body): forwarded byte for byte, routed by its `model`
    (or by `model` when the caller knows it)."""
    content_type = incoming.headers.get("content-type")
    if model is None and incoming.body:
        model = read_field(incoming.body, content_type, "model")
    if not model and not incoming.body:
        raise NotFound(
            f"No route for {incoming.method} /v1{incoming.path}: requests are forwarded "
            "by their `model`, and this one names none."
        )
    if not model:
        raise InvalidRequest(
            "This request names no model: send a `model` field to route it.",
            param="model",
            code="missing_model",
        )
    return Call(
        endpoint=PASSTHROUGH,
        body=Payload.of({}),
        request=ModelOnly(model=model),
        model=model,
        tenant=tenant,
        headers=incoming.headers,
        conversation_id=incoming.headers.get("x-conversation-id"),
        request_id=incoming.request_id,
        path=incoming.path,
        method=incoming.method,
        query=incoming.query,
        content=incoming.body,
        content_type=content_type,
        started=started,
    )


def _is_json(content_type: str | None, body: bytes) -> bool:
    if content_type is None:
        return bool(body) and body.lstrip()[:1] in (b"{", b"[")
    if boundary(content_type) is not None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _local_model(gw: Gateway, incoming: Incoming) -> str | None:
    if not gw.embedder_names:
        return None
    try:
        model: str | None = _decode(ModelOnly, incoming.body).model
    except InvalidRequest as exc:
        if exc.code == "too_deep":
            raise
        return next(iter(gw.embedder_names))  # let the embeddings route name the error
    return model


def _decode(type_: type[T], body: bytes) -> T:
    """The body read as `type_`; 400 for JSON that is invalid or nested too deeply (the
    decoder recurses: a 2 KB body of brackets would otherwise be a 500)."""
    try:
        value: T = decoder(type_).decode(body)
    except DecodeErrors as exc:
        raise invalid_body(exc) from None
    except RecursionError:
        too_deep = "The request body is nested too deeply."
        raise InvalidRequest(too_deep, code="too_deep") from None
    return value


def _usage_only(chunk: Chunk) -> bool:
    return b'"usage"' in chunk.raw and is_usage_only(chunk)
