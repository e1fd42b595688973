"""OpenTelemetry traces following the GenAI semantic conventions.

One span per request, `{operation} {model}` (e.g. `chat m`), with gen_ai.* attributes:
operation, request model and sampling parameters, response id/model/finish reasons,
token usage; the tenant as llm_gateway.tenant; error.type when it fails. Under it, one
span per plugin (`plugin {name}`, wrapping what runs after that plugin) and one CLIENT
span per upstream attempt (`{operation} {upstream model}`, server.address, the backend).
A streamed request's span ends with its stream. Prompt and completion text are recorded
(gen_ai.input.messages / gen_ai.output.messages) only with capture_content on.

Tracing is off (no tracer, no cost) unless telemetry.otlp_endpoint is configured; tests
pass a tracer of their own.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from gateway.call import Call, Reply
from gateway.config import TelemetryConfig
from gateway.observe import watch
from gateway.payload import Chunk, DecodeErrors
from gateway.views import AnswerView, UsageView


def tracer_from_config(config: TelemetryConfig) -> Tracer | None:
    if not config.otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}))
    endpoint = config.otlp_endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider.get_tracer("llm-gateway")


_OPERATIONS = {
    "chat.completions": "chat",
    "completions": "text_completion",
    "responses": "chat",
    "embeddings": "embeddings",
}


def operation(call: Call) -> str:
    return _OPERATIONS.get(call.endpoint, call.endpoint)


def start_request_span(
    tracer: Tracer, call: Call, capture_content: bool, parent: Context | None = None
) -> Span:
    """The request's SERVER span; `parent`: the caller's context (from its traceparent)."""
    r = call.request
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation(call),
        "gen_ai.request.model": call.model,
        "llm_gateway.tenant": call.tenant,
        "llm_gateway.request_id": call.request_id,
    }
    for name, field in (
        ("gen_ai.request.temperature", "temperature"),
        ("gen_ai.request.top_p", "top_p"),
        ("gen_ai.request.max_tokens", "max_tokens"),
        ("gen_ai.request.max_tokens", "max_output_tokens"),
        ("gen_ai.request.seed", "seed"),
        ("gen_ai.request.choice.count", "n"),
    ):
        value = getattr(r, field, None)
        if value is not None:
            attrs[name] = value
    if call.path and call.endpoint == "passthrough":
        attrs["url.path"] = call.path
    if call.conversation_id:
        attrs["gen_ai.conversation.id"] = call.conversation_id
    if capture_content and call.content is None:
        data = call.body.data
        inputs = data.get("messages", data.get("prompt", data.get("input")))
        attrs["gen_ai.input.messages"] = json.dumps(inputs, default=str)
    name = f"{operation(call)} {call.model}"
    return tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attrs)


def record_body(span: Span, reply: Reply, capture_content: bool) -> None:
    body = reply.body
    if body is None:
        return
    try:
        view = body.view(AnswerView)
    except DecodeErrors:
        return
    if view.id is not None:
        span.set_attribute("gen_ai.response.id", view.id)
    if view.model is not None:
        span.set_attribute("gen_ai.response.model", view.model)
    if view.choices:
        reasons = [c.finish_reason or "" for c in view.choices]
        span.set_attribute("gen_ai.response.finish_reasons", reasons)
    _usage(span, view.usage)
    if capture_content:
        out = [
            (c.get("message") or {}).get("content") if "message" in c else c.get("text")
            for c in body.data.get("choices") or ()
        ]
        span.set_attribute("gen_ai.output.messages", json.dumps(out, default=str))


def _usage(span: Span, usage: UsageView | None) -> None:
    if usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion)


def record_error(span: Span, exc: BaseException) -> None:
    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))


def traced_stream(
    span: Span, stream: AsyncIterator[Chunk], capture_content: bool
) -> AsyncIterator[Chunk]:
    """The stream, watched: what its chunks say goes on the span, which ends with it."""
    return watch(stream, _SpanWatcher(span, capture_content))


class _SpanWatcher:
    __slots__ = ("capture", "parts", "reasons", "span")

    def __init__(self, span: Span, capture_content: bool) -> None:
        self.span, self.capture = span, capture_content
        self.reasons: dict[int, str] = {}
        self.parts: list[str] = []

    def chunk(self, chunk: Chunk) -> None:
        span = self.span
        try:
            view = chunk.view(AnswerView)
        except DecodeErrors:
            return
        if view.id is not None:
            span.set_attribute("gen_ai.response.id", view.id)
        if view.model is not None:
            span.set_attribute("gen_ai.response.model", view.model)
        for c in view.choices or ():
            if c.finish_reason:
                self.reasons[c.index] = c.finish_reason
        if self.capture and view.choices:
            for c in chunk.data.get("choices") or ():
                delta = c.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else c.get("text")
                self.parts.append(text if isinstance(text, str) else "")
        _usage(span, view.usage)

    def end(self, error: BaseException | None) -> None:
        if error is not None:
            record_error(self.span, error)
        if self.reasons:
            self.span.set_attribute("gen_ai.response.finish_reasons", list(self.reasons.values()))
        if self.capture:
            self.span.set_attribute("gen_ai.output.messages", json.dumps(["".join(self.parts)]))
        self.span.end()


@contextlib.contextmanager
def use_span(span: Span, parent: Context | None = None) -> Iterator[None]:
    """Makes `span` current for what runs inside (plugins, upstream spans nest under it),
    in the caller's context (`parent`: what its headers carried, baggage included, so
    that goes upstream too)."""
    token = None if parent is None else otel_context.attach(parent)
    try:
        with trace.use_span(span, end_on_exit=False):
            yield
    finally:
        if token is not None:
            otel_context.detach(token)
