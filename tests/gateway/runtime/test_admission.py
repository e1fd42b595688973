"""Admission control over real HTTP: past a backend's bound a request is refused at
once with Retry-After (503; 429 for a tenant over its share), while the admitted ones
go on; with the real engine too (its own bound, and queue time on /metrics)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.serving import MODEL_ID, TEST_KV_CACHE_GB, start_serve, stop, upstream_stats

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _config(upstream: str, limits: str, extra: str = "") -> str:
    return (
        f'{extra}[[groups]]\nname = "g"\nbackends = [{{url = "{upstream}"}}]\n{limits}\n'
        '[[models]]\nname = "m"\ngroups = ["g"]\n'
    )


async def _burst(url: str, keys: list[str]) -> list[tuple[str, int, dict[str, str]]]:
    """One request per key at once; (key, status, headers) in the order they finished."""
    done: list[tuple[str, int, dict[str, str]]] = []
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(key: str) -> None:
            headers = {"authorization": f"Bearer {key}"}
            reply = await client.post(url + "/v1/chat/completions", json=BODY, headers=headers)
            done.append((key, reply.status_code, dict(reply.headers)))

        await asyncio.gather(*(one(k) for k in keys))
    return done


def test_past_the_bound_requests_are_refused_at_once_with_retry_after(
    mock_upstream: Callable[..., str], gateway: Callable[[str], str]
) -> None:
    upstream = mock_upstream(delay_ms=1500)
    url = gateway(_config(upstream, "max_in_flight = 2"))
    done = asyncio.run(_burst(url, ["k"] * 6))
    statuses = [status for _, status, _ in done]
    assert sorted(statuses) == [200, 200, 503, 503, 503, 503]
    # The refusals came back while the admitted requests were still being answered.
    assert statuses[:4] == [503] * 4
    for _, status, headers in done:
        if status == 503:
            assert int(headers["retry-after"]) >= 1
    assert upstream_stats(upstream)["requests"] == 2  # the refused were never sent
    metrics = httpx.get(url + "/metrics").text
    assert 'llm_gateway_admission_refused_total{backend="' in metrics
    assert 'reason="global"} 4.0' in metrics


def test_a_tenant_over_its_share_gets_429_while_others_get_in(
    mock_upstream: Callable[..., str], gateway: Callable[[str], str]
) -> None:
    upstream = mock_upstream(delay_ms=1500)
    keys = '[[auth.keys]]\nkey = "ka"\ntenant = "a"\n[[auth.keys]]\nkey = "kb"\ntenant = "b"\n'
    url = gateway(_config(upstream, "max_in_flight = 10\nmax_in_flight_per_tenant = 1", keys))
    done = asyncio.run(_burst(url, ["ka", "ka", "kb"]))
    by_key = sorted((key, status) for key, status, _ in done)
    assert by_key == [("ka", 200), ("ka", 429), ("kb", 200)]
    refused = next(headers for _, status, headers in done if status == 429)
    assert int(refused["retry-after"]) >= 1


def test_the_engine_refuses_past_its_bound_and_reports_queue_time(
    smollm2_gguf: Path, tmp_path: Path
) -> None:
    config = (
        f'[engine]\nmodel = "{smollm2_gguf}"\nserved_model_name = "{MODEL_ID}"\n'
        f"kv_cache_gb = {TEST_KV_CACHE_GB}\n"
        '[[groups]]\nname = "local"\nkind = "engine"\nmax_in_flight = 1\n'
        f'[[models]]\nname = "{MODEL_ID}"\ngroups = ["local"]\n'
    )
    proc, url = start_serve(config, tmp_path / "g")
    try:
        long = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Tell a story."}],
                "max_tokens": 60, "ignore_eos": True}  # fmt: skip

        async def two() -> list[int]:
            async with httpx.AsyncClient(timeout=120) as client:
                replies = await asyncio.gather(
                    *(client.post(url + "/v1/chat/completions", json=long) for _ in range(2))
                )
                return sorted(r.status_code for r in replies)

        assert asyncio.run(two()) == [200, 503]  # one runs, the other is refused at once
        metrics = httpx.get(url + "/metrics").text
        queued = f'vllm:request_queue_time_seconds_count{{model_name="{MODEL_ID}"}} 1.0'
        assert queued in metrics
    finally:
        stop(proc, 10)
