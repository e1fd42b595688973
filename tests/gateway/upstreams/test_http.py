"""The OpenAI-compatible HTTP upstream against a real (mock) server process: answers,
streams, aliasing, upstream keys, and every error shape turned into OpenAI's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.call import CHAT, COMPLETIONS, Call, Reply, make_call
from gateway.errors import UpstreamError
from gateway.upstreams.http import HttpUpstream

pytestmark = pytest.mark.anyio


def _chat(stream: bool = False, **extra: Any) -> Call:
    data = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return make_call(CHAT, {**data, **extra})


async def _send(up: HttpUpstream, call: Call, model: str | None = None) -> Reply:
    return await up.send(call, model, {})


def _stats(url: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(url + "/stats").json()
    return data


async def test_complete_answer_alias_and_key(mock_upstream: Callable[..., str]) -> None:
    url = mock_upstream(chunks=3)
    up = HttpUpstream(url, api_key="sk-up")
    try:
        reply = await _send(up, _chat(temperature=0.5), "real-name")
        assert reply.body is not None
        assert reply.body.data["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
        assert reply.body.data["usage"]["completion_tokens"] == 3
        sent = _stats(url)
        assert sent["last_body"]["model"] == "real-name"  # aliasing
        assert sent["last_body"]["temperature"] == 0.5
        assert "top_k" not in sent["last_body"]  # unset fields are not sent
        assert sent["auth"] == "Bearer sk-up"
        legacy = await _send(up, make_call(COMPLETIONS, {"model": "m", "prompt": "x"}))
        assert legacy.body is not None
        assert legacy.body.data["choices"][0]["text"] == "tok0 tok1 tok2 "
    finally:
        await up.close()


async def test_stream_yields_chunks_and_usage(mock_upstream: Callable[..., str]) -> None:
    up = HttpUpstream(mock_upstream(chunks=4))
    try:
        reply = await _send(up, _chat(stream=True))
        assert reply.stream is not None
        chunks = [c.data async for c in reply.stream]
        text = "".join(c["delta"].get("content") or "" for ch in chunks for c in ch["choices"])
        assert text == "tok0 tok1 tok2 tok3 "
        assert chunks[-1]["usage"]["completion_tokens"] == 4
    finally:
        await up.close()


async def test_a_stream_cut_mid_answer_raises(mock_upstream: Callable[..., str]) -> None:
    up = HttpUpstream(mock_upstream(chunks=8, die_after=2))
    try:
        reply = await _send(up, _chat(stream=True))
        assert reply.stream is not None
        got = []
        with pytest.raises(UpstreamError) as info:
            async for chunk in reply.stream:
                got.append(chunk)
        assert len(got) == 2  # what arrived before the cut was passed on
        assert info.value.status_code in (502, 503)
    finally:
        await up.close()


async def test_server_errors_become_502_with_the_upstream_status(
    mock_upstream: Callable[..., str],
) -> None:
    up = HttpUpstream(mock_upstream(status=500))
    try:
        for stream in (False, True):
            with pytest.raises(UpstreamError) as info:
                await _send(up, _chat(stream=stream))
            assert info.value.status_code == 502 and info.value.upstream_status == 500
            assert "mock mock failing" in info.value.message
    finally:
        await up.close()


async def test_rate_limits_pass_on_with_retry_after(mock_upstream: Callable[..., str]) -> None:
    up = HttpUpstream(mock_upstream(status=429, retry_after=7))
    try:
        with pytest.raises(UpstreamError) as info:
            await _send(up, _chat())
        assert info.value.status_code == 429 and info.value.upstream_status == 429
        assert info.value.retry_after == 7.0
        assert info.value.error_type == "server_error"  # the upstream's own type is kept
    finally:
        await up.close()


async def test_an_unreachable_upstream_is_503() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    up = HttpUpstream(f"http://127.0.0.1:{port}/v1", connect_timeout=1.0)
    try:
        with pytest.raises(UpstreamError) as info:
            await _send(up, _chat())
        assert info.value.status_code == 503 and info.value.upstream_status is None
        assert not await up.ready()
    finally:
        await up.close()


async def test_a_silent_upstream_times_out(mock_upstream: Callable[..., str]) -> None:
    url = mock_upstream(chunks=3, delay_ms=400)  # waits before answering, and per chunk
    up = HttpUpstream(url, read_timeout=0.1)
    try:
        with pytest.raises(UpstreamError) as info:
            await _send(up, _chat())
        assert info.value.status_code == 504 and info.value.code == "upstream_timeout"
    finally:
        await up.close()


async def test_a_connection_back_in_the_pool_outlives_the_read_timeout(
    mock_upstream: Callable[..., str],
) -> None:
    """The per-exchange timer stops with the exchange: a kept-alive connection idle for
    longer than the read timeout is reused, not aborted by a stale timer."""
    url = mock_upstream(chunks=2)
    up = HttpUpstream(url, read_timeout=0.01)
    try:
        for stream in (False, True):
            reply = await _send(up, _chat(stream=stream))
            if reply.stream is not None:
                [c async for c in reply.stream]
        origins = up._transport._origins.values()  # type: ignore[attr-defined]
        (idle,) = [c for o in origins for c, _ in o.idle]
        await asyncio.sleep(0.05)  # idle in the pool past the timeout (not a timing check)
        assert idle.usable
        reply = await _send(up, _chat())
        assert reply.body is not None
        assert [c for o in origins for c, _ in o.idle] == [idle]  # the same one, reused
    finally:
        await up.close()


async def test_a_request_read_then_dropped_is_not_sent_again(
    mock_upstream: Callable[..., str],
) -> None:
    """The upstream read the request and closed the connection without answering: the
    request fails (503, delivered, lost) rather than going to that upstream again, even
    on a reused connection where a stale keep-alive would look the same. Whether another
    backend gets it is routing's call (tests/gateway/runtime/test_failover.py)."""
    url = mock_upstream()
    up = HttpUpstream(url)
    try:
        await _send(up, _chat())  # leaves a kept-alive connection in the pool
        httpx.post(url + "/control", json={"drop": True})
        with pytest.raises(UpstreamError) as info:
            await _send(up, _chat())
        assert info.value.status_code == 503 and info.value.delivered and info.value.lost
        assert _stats(url)["requests"] == 2  # the dropped one, once
    finally:
        await up.close()


async def test_a_connection_that_never_opened_is_safe_to_retry() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    up = HttpUpstream(f"http://127.0.0.1:{port}/v1", connect_timeout=1.0)
    try:
        with pytest.raises(UpstreamError) as info:
            await _send(up, _chat())
        assert not info.value.delivered
    finally:
        await up.close()


async def test_connections_per_upstream_are_capped(mock_upstream: Callable[..., str]) -> None:
    url = mock_upstream(chunks=2, delay_ms=50)
    up = HttpUpstream(url, max_connections=3)
    try:
        replies = await asyncio.gather(*(_send(up, _chat()) for _ in range(12)))
        assert all(r.body is not None for r in replies)
        stats = _stats(url)
        assert stats["requests"] == 12
        assert stats["peak_connections"] <= 3 + 1  # + the /stats request's own
    finally:
        await up.close()


async def test_no_free_connection_within_the_pool_timeout_is_a_503_never_sent(
    mock_upstream: Callable[..., str],
) -> None:
    url = mock_upstream(chunks=2, delay_ms=1000)
    up = HttpUpstream(url, max_connections=1, connect_timeout=0.1)  # the pool timeout too
    try:
        slow = asyncio.ensure_future(_send(up, _chat()))
        await asyncio.sleep(0)  # the first takes the only connection
        with pytest.raises(UpstreamError) as info:
            await _send(up, _chat())
        assert info.value.status_code == 503 and info.value.code == "upstream_busy"
        assert not info.value.delivered
        assert (await slow).body is not None
        assert _stats(url)["requests"] == 1
    finally:
        await up.close()


async def test_idle_connections_are_closed_once_they_expire(
    mock_upstream: Callable[..., str],
) -> None:
    """A quiet gateway does not sit on kept-alive sockets the upstream is about to drop."""
    url = mock_upstream()
    up = HttpUpstream(url)
    up._transport.keepalive_expiry = 0.01  # type: ignore[union-attr]
    try:
        await _send(up, _chat())
        origins = up._transport._origins.values()  # type: ignore[union-attr]
        (idle,) = [c for o in origins for c, _ in o.idle]
        await asyncio.sleep(0.05)  # no request meanwhile: only the sweep can close it
        assert [c for o in origins for c, _ in o.idle] == [] and not idle.usable
    finally:
        await up.close()
