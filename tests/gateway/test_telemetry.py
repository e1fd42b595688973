"""OpenTelemetry spans follow the GenAI conventions: one per request (`chat {model}`),
one per plugin and one per upstream call nested under it; no prompt text unless enabled."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.build import build_gateway
from gateway.config import load_config
from gateway.http import Edge, create_app
from gateway.testing.client import app_client

pytestmark = pytest.mark.anyio


def _app(tmp_path: Path, upstream: str, capture: bool) -> tuple[Edge, InMemorySpanExporter]:
    cfg = tmp_path / "g.toml"
    cfg.write_text(
        'plugins = ["routing"]\n'
        f"[telemetry]\ncapture_content = {str(capture).lower()}\n"
        f'[[groups]]\nname = "g"\nbackends = [{{url = "{upstream}"}}]\n'
        '[[models]]\nname = "m"\ngroups = ["g"]\nupstream_model = "real"\n'
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gw = build_gateway(load_config(cfg, {}), tracer=provider.get_tracer("test"))
    return create_app(gw), exporter


@pytest.mark.parametrize("stream", [False, True])
async def test_request_plugin_and_upstream_spans(
    tmp_path: Path, mock_upstream: Callable[..., str], stream: bool
) -> None:
    app, exporter = _app(tmp_path, mock_upstream(chunks=3), capture=False)
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "secret"}],
        "stream": stream,
        "temperature": 0.3,
        "stream_options": {"include_usage": True} if stream else None,
    }
    async with app_client(app) as client:
        reply = await client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"chat m", "plugin routing", "chat real"}
    root, plugin, upstream = spans["chat m"], spans["plugin routing"], spans["chat real"]
    assert plugin.parent is not None and plugin.parent.span_id == root.context.span_id
    assert upstream.parent is not None and upstream.parent.span_id == plugin.context.span_id
    attrs = root.attributes or {}
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "m"
    assert attrs["gen_ai.request.temperature"] == 0.3
    assert attrs["gen_ai.usage.output_tokens"] == 3
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert "gen_ai.input.messages" not in attrs  # no prompt text by default
    assert (upstream.attributes or {})["gen_ai.request.model"] == "real"


async def test_content_is_recorded_only_when_enabled(
    tmp_path: Path, mock_upstream: Callable[..., str]
) -> None:
    app, exporter = _app(tmp_path, mock_upstream(chunks=2), capture=True)
    body = {"model": "m", "messages": [{"role": "user", "content": "secret"}]}
    async with app_client(app) as client:
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
    root = next(s for s in exporter.get_finished_spans() if s.name == "chat m")
    assert "secret" in str((root.attributes or {})["gen_ai.input.messages"])
    assert "tok0" in str((root.attributes or {})["gen_ai.output.messages"])
