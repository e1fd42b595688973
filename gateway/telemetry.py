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

import json
from collections.abc import AsyncIterator
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from gateway.call import Call, Chunk, Reply, close_stream
from gateway.config import TelemetryConfig
from gateway.schemas import ChatChoice, ChatCompletionRequest


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


def operation(call: Call) -> str:
    return "chat" if call.endpoint == "chat.completions" else "text_completion"


def start_request_span(tracer: Tracer, call: Call, capture_content: bool) -> Span:
    r = call.request
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation(call),
        "gen_ai.request.model": r.model,
        "llm_gateway.tenant": call.tenant,
    }
    for name, value in (
        ("gen_ai.request.temperature", r.temperature),
        ("gen_ai.request.top_p", r.top_p),
        ("gen_ai.request.max_tokens", r.max_tokens),
        ("gen_ai.request.seed", r.seed),
        ("gen_ai.request.choice.count", r.n),
    ):
        if value is not None:
            attrs[name] = value
    if call.conversation_id:
        attrs["gen_ai.conversation.id"] = call.conversation_id
    if capture_content:
        if isinstance(r, ChatCompletionRequest):
            messages = [{"role": m.role, "content": m.content} for m in r.messages]
            attrs["gen_ai.input.messages"] = json.dumps(messages, default=str)
        else:
            attrs["gen_ai.input.messages"] = json.dumps([{"role": "user", "content": r.prompt}])
    return tracer.start_span(f"{operation(call)} {r.model}", kind=SpanKind.SERVER, attributes=attrs)


def record_body(span: Span, reply: Reply, capture_content: bool) -> None:
    body = reply.body
    if body is None:
        return
    span.set_attribute("gen_ai.response.id", body.id)
    span.set_attribute("gen_ai.response.model", body.model)
    reasons = [c.finish_reason or "" for c in body.choices]
    span.set_attribute("gen_ai.response.finish_reasons", reasons)
    if body.usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", body.usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", body.usage.completion_tokens)
    if capture_content:
        out = [c.message.content if isinstance(c, ChatChoice) else c.text for c in body.choices]
        span.set_attribute("gen_ai.output.messages", json.dumps(out, default=str))


def record_error(span: Span, exc: BaseException) -> None:
    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))


async def traced_stream(
    span: Span, stream: AsyncIterator[Chunk], capture_content: bool
) -> AsyncIterator[Chunk]:
    """Passes chunks on; records what the last ones say and ends the span with the stream."""
    reasons: dict[int, str] = {}
    parts: list[str] = []
    try:
        async for chunk in stream:
            span.set_attribute("gen_ai.response.id", chunk.id)
            span.set_attribute("gen_ai.response.model", chunk.model)
            for c in chunk.choices:
                if c.finish_reason:
                    reasons[c.index] = c.finish_reason
                if capture_content:
                    delta = getattr(c, "delta", None)
                    parts.append((delta.content if delta else getattr(c, "text", "")) or "")
            if chunk.usage is not None:
                span.set_attribute("gen_ai.usage.input_tokens", chunk.usage.prompt_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", chunk.usage.completion_tokens)
            yield chunk
    except BaseException as exc:
        record_error(span, exc)
        raise
    finally:
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", list(reasons.values()))
        if capture_content:
            span.set_attribute("gen_ai.output.messages", json.dumps(["".join(parts)]))
        span.end()
        await close_stream(stream)


def use_span(span: Span) -> Any:
    """Makes `span` current for what runs inside (plugins, upstream spans nest under it)."""
    return trace.use_span(span, end_on_exit=False)
