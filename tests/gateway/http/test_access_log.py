"""The access log: one line per request with its request id, tenant, model, status,
latency and cache outcome, as text or as JSON; off with `[server] access_log = false`;
and the start-up summary of what the process serves."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.build import build_gateway
from gateway.config import load_config
from gateway.http import create_app
from gateway.logs import JsonFormatter, summary
from gateway.testing.client import app_client

pytestmark = pytest.mark.anyio

Start = Callable[..., str]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0}


def _config(tmp_path: Path, upstream: str, extra: str = "") -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'{extra}[[groups]]\nname = "g"\nbackends = [{{url = "{upstream}"}}]\n'
        '[[models]]\nname = "m"\ngroups = ["g"]\n'
    )
    return path


def _access(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [r.access for r in caplog.records if r.name == "llm_gateway.access"]  # type: ignore[attr-defined]


async def test_each_request_leaves_one_line_with_its_fields(
    mock_upstream: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(_config(tmp_path, mock_upstream()), {})
    caplog.set_level(logging.INFO, logger="llm_gateway.access")
    async with app_client(create_app(build_gateway(config))) as client:
        first = await client.post("/v1/chat/completions", json=CHAT)
        second = await client.post("/v1/chat/completions", json=CHAT)
        unknown = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"})
    lines = _access(caplog)
    assert [line["status"] for line in lines] == [200, 200, 404]
    assert [line["cache"] for line in lines] == ["miss", "hit", "-"]
    assert [line["model"] for line in lines] == ["m", "m", "gpt-9"]
    assert {line["tenant"] for line in lines} == {"default"}
    ids = [r.headers["x-request-id"] for r in (first, second, unknown)]
    assert [line["request_id"] for line in lines] == ids
    assert all(line["path"] == "/v1/chat/completions" for line in lines)
    assert all(isinstance(line["duration_ms"], float) for line in lines)
    text = [r.getMessage() for r in caplog.records if r.name == "llm_gateway.access"]
    assert text[1].startswith("POST /v1/chat/completions 200 ")
    assert f"request_id={ids[1]} tenant=default model=m cache=hit" in text[1]


async def test_json_lines_carry_the_same_fields(
    mock_upstream: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(_config(tmp_path, mock_upstream()), {})
    caplog.set_level(logging.INFO, logger="llm_gateway.access")
    async with app_client(create_app(build_gateway(config))) as client:
        await client.post("/v1/chat/completions", json=CHAT)
    [record] = [r for r in caplog.records if r.name == "llm_gateway.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "info" and line["logger"] == "llm_gateway.access"
    assert {k: line[k] for k in ("method", "status", "model", "tenant", "cache")} == {
        "method": "POST", "status": 200, "model": "m", "tenant": "default", "cache": "miss"
    }  # fmt: skip


async def test_the_access_log_can_be_turned_off(
    mock_upstream: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _config(tmp_path, mock_upstream(), "[server]\naccess_log = false\n")
    config = load_config(path, {})
    caplog.set_level(logging.INFO, logger="llm_gateway.access")
    app = create_app(build_gateway(config), access_log=config.server.access_log)
    async with app_client(app) as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert _access(caplog) == []


def test_the_start_up_summary_says_what_is_served(tmp_path: Path) -> None:
    extra = (
        '[store]\nkind = "redis"\nurl = "redis://user:secret@cache:6379/0"\n'
        '[auth]\nkeys = [{key = "sk-a", tenant = "a"}]\n'
        '[telemetry]\notlp_endpoint = "http://collector:4318"\n'
    )
    config = load_config(_config(tmp_path, "http://10.0.0.5:8000/v1", extra), {})
    lines = summary(build_gateway(config), config)
    assert (
        "model m: groups g [http://10.0.0.5:8000/v1]; chain context -> exact_cache -> routing"
        in lines
    )
    assert "store: redis at redis://cache:6379/0" in lines  # no credentials in logs
    assert "auth: on, 1 keys" in lines
    assert "telemetry: OTLP to http://collector:4318" in lines
