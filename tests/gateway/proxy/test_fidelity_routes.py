"""The gateway forwards every path and the headers that matter: multipart forms and
binary answers byte for byte, x-request-id, upstream rate-limit headers, the header
allow-lists, a group's fixed headers and query, and W3C trace context (a real
`llm-gateway serve --config` process, or the app in process with tracing on).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import openai
import pytest
from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.build import build_gateway
from gateway.config import load_config
from gateway.http import Edge, create_app
from gateway.testing.client import app_client
from tests.gateway.proxy.conftest import ALIAS, control, models_config, post, seen, tag

AUDIO = (
    bytes(range(256))
    + b'\r\n--\r\n--not-the-boundary\r\nContent-Disposition: form-data; name="model"\r\n\r\nx'
    + b"\x00\xff" * 64
)


def _form(model: str, layout: str) -> tuple[bytes, str]:
    """A transcription form (body, content type): as httpx (and so the OpenAI SDK) lays
    it out, fields first; or by hand, the file first and the model last, under a quoted
    boundary."""
    fields = {"language": "de", "model": model, "prompt": "Grüße"}
    if layout == "httpx":
        form = httpx.Request(
            "POST", "http://unused", files={"file": ("a.wav", AUDIO, "audio/wav")}, data=fields
        )
        return form.read(), form.headers["content-type"]
    mark = b"----form boundary 7MA4YWxk"
    body = b"--" + mark + b'\r\nContent-Disposition: form-data; name="file"; filename="a.wav"'
    body += b"\r\nContent-Type: audio/wav\r\n\r\n" + AUDIO + b"\r\n"
    for name, value in fields.items():
        body += b"--" + mark + f'\r\nContent-Disposition: form-data; name="{name}"'.encode()
        body += b"\r\n\r\n" + value.encode() + b"\r\n"
    return body + b"--" + mark + b"--\r\n", f'multipart/form-data; boundary="{mark.decode()}"'


@pytest.mark.parametrize("layout", ["httpx", "file_first"])
@pytest.mark.parametrize("model", ["m", "alias"])
def test_multipart_forms_arrive_byte_for_byte(
    url: str, upstream: str, model: str, layout: str
) -> None:
    sent, content_type = _form(model, layout)
    reply = post(url, "/v1/audio/transcriptions", sent, **{"content-type": content_type})
    assert reply.status_code == 200
    got = seen(upstream)
    assert got["last_path"] == "/v1/audio/transcriptions"
    assert got["last_headers"]["content-type"] == content_type
    if model == "m":
        assert got["raw"] == sent
    else:
        field = b'name="model"\r\n\r\n'
        assert got["raw"] == sent.replace(field + b"alias", field + ALIAS.encode())


def test_binary_answers_reach_the_client_byte_for_byte(url: str, upstream: str) -> None:
    control(upstream, answer_b64=AUDIO, answer_type="audio/mpeg")
    sent = b'{"model": "m", "input": "Hallo", "voice": "alloy"}'
    reply = post(url, "/v1/audio/speech", sent)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "audio/mpeg"
    assert reply.content == AUDIO
    got = seen(upstream)
    assert got["last_path"] == "/v1/audio/speech" and got["raw"] == sent


def test_json_passthrough_arrives_byte_for_byte(url: str, upstream: str) -> None:
    sent = '{"model":"m",  "input": ["ünï", 1.50], "x": null}'.encode()
    reply = post(url, "/v1/moderations", sent)
    assert reply.status_code == 200
    assert reply.json() == {"path": "/v1/moderations", "method": "POST"}
    got = seen(upstream)
    assert (got["last_method"], got["last_path"], got["raw"]) == ("POST", "/v1/moderations", sent)
    post(url, "/v1/moderations", sent.replace(b'"m"', b'"alias"'))
    assert seen(upstream)["last_body"] == {"model": ALIAS, "input": ["ünï", 1.5], "x": None}


# ---- headers ----------------------------------------------------------------------------------


def _body(model: str = "m") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": tag()}]}


def _chat(base: str, model: str = "m", **headers: str) -> httpx.Response:
    return httpx.post(base + "/v1/chat/completions", json=_body(model), headers=headers, timeout=10)


def test_request_ids_are_made_echoed_and_sent_upstream(url: str, upstream: str) -> None:
    reply = _chat(url)
    made = reply.headers["x-request-id"]
    got = seen(upstream)
    assert made and got["last_headers"]["x-request-id"] == made
    assert reply.headers["x-upstream-request-id"] == got["last_id"]
    kept = _chat(url, **{"x-request-id": "client-abc-123"})
    assert kept.headers["x-request-id"] == "client-abc-123"
    assert seen(upstream)["last_headers"]["x-request-id"] == "client-abc-123"


@pytest.mark.parametrize("shape", ["json", "stream", "passthrough"])
def test_upstream_headers_on_the_expose_list_come_back(url: str, upstream: str, shape: str) -> None:
    exposed = {"x-ratelimit-remaining-tokens": "99", "openai-processing-ms": "12"}
    control(upstream, headers=exposed | {"x-upstream-secret": "s"})
    body = {"model": "m", "messages": [{"role": "user", "content": tag()}]}
    path = "/v1/moderations" if shape == "passthrough" else "/v1/chat/completions"
    with httpx.stream(
        "POST", url + path, json=body | {"stream": shape == "stream"}, timeout=10
    ) as reply:
        reply.read()
    assert reply.status_code == 200
    assert {k: reply.headers.get(k) for k in exposed} == exposed
    assert "x-upstream-secret" not in reply.headers
    assert reply.headers["x-upstream-request-id"] == seen(upstream)["last_id"]


def test_rate_limits_reach_the_client_with_their_headers(
    gateways: dict[str, str], upstream: str
) -> None:
    # On the gateway without routing: a 429 would hold its backend back for Retry-After.
    limits = {"retry-after": "7", "x-ratelimit-remaining-requests": "0"}
    error = {"message": "Rate limit reached for requests", "type": "requests", "param": None,
             "code": "rate_limit_exceeded"}  # fmt: skip
    control(upstream, status=429, headers=limits, answer_b64=json.dumps({"error": error}).encode())
    reply = _chat(gateways["plain"])
    assert reply.status_code == 429
    assert reply.json() == {"error": error}  # the upstream's own error object
    assert reply.headers["retry-after"] == "7"
    assert reply.headers["x-ratelimit-remaining-requests"] == "0"
    assert reply.headers["x-request-id"] and reply.headers["x-upstream-request-id"]
    client = openai.OpenAI(base_url=gateways["plain"] + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert e.value.response.headers["retry-after"] == "7"
    assert e.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_only_allowed_client_headers_go_upstream(gateways: dict[str, str], upstream: str) -> None:
    sent = {"openai-organization": "org-1", "x-secret-internal": "s", "x-tenant-tag": "t"}
    _chat(gateways["chained"], **sent)  # the default list
    got = seen(upstream)["last_headers"]
    assert got["openai-organization"] == "org-1"
    assert "x-secret-internal" not in got and "x-tenant-tag" not in got
    _chat(gateways["plain"], **sent)  # [headers] forward = ["x-tenant-tag"]
    got = seen(upstream)["last_headers"]
    assert got["x-tenant-tag"] == "t" and "x-secret-internal" not in got


def test_a_group_adds_its_headers_and_query(gateways: dict[str, str], upstream: str) -> None:
    body = {"model": "azure", "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(gateways["plain"] + "/v1/chat/completions?x=1", json=body, timeout=10)
    assert reply.status_code == 200
    got = seen(upstream)
    assert got["last_headers"]["api-key"] == "k"
    assert parse_qs(got["last_query"]) == {"api-version": ["2024-10-21"], "x": ["1"]}


def test_errors_the_gateway_makes_carry_the_request_id(url: str) -> None:
    unknown = _chat(url, model="no-such-model")
    assert unknown.status_code == 404 and unknown.headers["x-request-id"]
    bad = post(url, "/v1/chat/completions", b"{not json", **{"x-request-id": "rid-1"})
    assert bad.status_code == 400 and bad.headers["x-request-id"] == "rid-1"


# ---- trace context ----------------------------------------------------------------------------

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_trace_context_passes_through_when_tracing_is_off(url: str, upstream: str) -> None:
    context = {"traceparent": TRACEPARENT, "tracestate": "vendor=x,other=y", "baggage": "k=v"}
    _chat(url, **context)
    got = seen(upstream)["last_headers"]
    assert {k: got.get(k) for k in context} == context


def _app(upstream: str, folder: Path, traced: bool) -> tuple[Edge, InMemorySpanExporter]:
    """The gateway in this process, default chain (its spans kept in memory when traced)."""
    config = folder / "inproc.toml"
    config.write_text(models_config(upstream))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("gw") if traced else None
    return create_app(build_gateway(load_config(config, {}), tracer=tracer)), exporter


@pytest.mark.anyio
async def test_the_gateway_joins_the_callers_trace(upstream: str, tmp_path: Path) -> None:
    app, exporter = _app(upstream, tmp_path, traced=True)
    caller = TracerProvider().get_tracer("caller")  # the client's own tracing
    headers: dict[str, str] = {}
    with caller.start_as_current_span("client request") as span:
        propagate.inject(headers)
    ours = span.get_span_context()
    async with app_client(app) as client:  # the request goes out after the caller's span ended
        reply = await client.post("/v1/chat/completions", json=_body(), headers=headers)
    assert reply.status_code == 200
    spans = exporter.get_finished_spans()
    server = next(s for s in spans if s.kind == SpanKind.SERVER)
    out = next(s for s in spans if s.kind == SpanKind.CLIENT)
    assert server.parent is not None and server.parent.span_id == ours.span_id
    assert server.context.trace_id == ours.trace_id == out.context.trace_id
    sent = seen(upstream)["last_headers"]["traceparent"]
    _version, trace_id, parent_id, _flags = sent.split("-")
    assert (trace_id, parent_id) == (f"{ours.trace_id:032x}", f"{out.context.span_id:016x}")


@pytest.mark.anyio
async def test_baggage_goes_upstream_when_tracing_is_on(upstream: str, tmp_path: Path) -> None:
    app, _ = _app(upstream, tmp_path, traced=True)
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=x", "baggage": "k=v"}
    async with app_client(app) as client:
        await client.post("/v1/chat/completions", json=_body(), headers=headers)
    got = seen(upstream)["last_headers"]
    assert got.get("tracestate") == "vendor=x"
    assert got.get("baggage") == "k=v"


@pytest.mark.anyio
async def test_a_backend_held_by_retry_after_says_when_to_come_back(
    upstream: str, tmp_path: Path
) -> None:
    control(upstream, status=429, retry_after="7")
    app, _ = _app(upstream, tmp_path, traced=False)  # the default chain, routing included
    async with app_client(app) as client:
        first = await client.post("/v1/chat/completions", json=_body())
        assert (first.status_code, first.headers["retry-after"]) == (429, "7")
        held = await client.post("/v1/chat/completions", json=_body())
    assert seen(upstream)["requests"] == 1  # the second never went upstream
    assert held.status_code in (429, 503)
    assert 0 < int(held.headers.get("retry-after", "0")) <= 7
