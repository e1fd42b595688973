"""The HTTP clients a group can use, each through a real gateway process to the mock
upstream (JSON and streams, the request arriving as sent), and the environment's proxy
honoured: an upstream whose host only the proxy can reach answers through it."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.serving import start_serve, stop, upstream_stats

CLIENTS = ["lean", "httpx"] + (["aiohttp"] if importlib.util.find_spec("httpx_aiohttp") else [])
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "x_unknown": [1, None]}


def _config(upstream: str, client: str) -> str:
    return (
        f'[[groups]]\nname = "g"\nbackends = [{{url = "{upstream}"}}]\nhttp_client = "{client}"\n'
        '[[models]]\nname = "m"\ngroups = ["g"]\n'
    )


@pytest.mark.parametrize("client", CLIENTS)
def test_each_client_carries_json_and_streams(
    client: str, mock_upstream: Callable[..., str], gateway: Callable[[str], str]
) -> None:
    upstream = mock_upstream(chunks=3)
    url = gateway(_config(upstream, client))
    reply = httpx.post(url + "/v1/chat/completions", json=BODY, timeout=10)
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
    assert upstream_stats(upstream)["last_body"] == BODY
    stream = {**BODY, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=stream, timeout=10) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) == 4  # 3 chunks, [DONE]: usage hidden


def test_the_environments_proxy_is_used(mock_upstream: Callable[..., str], tmp_path: Path) -> None:
    proxy = mock_upstream()  # answers requests for any absolute URL, as a proxy would
    env = {**os.environ, "HTTP_PROXY": proxy.removesuffix("/v1"), "NO_PROXY": ""}
    # A host only the proxy knows: the request can only succeed through it.
    proc, url = start_serve(_config("http://upstream.invalid:9/v1", "auto"), tmp_path / "g", env)
    try:
        reply = httpx.post(url + "/v1/chat/completions", json=BODY, timeout=10)
        assert reply.status_code == 200
        assert upstream_stats(proxy)["last_path"] == "http://upstream.invalid:9/v1/chat/completions"
    finally:
        stop(proc, 10)
