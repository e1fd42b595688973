"""Per-tenant limits through the real chain runtime, over the memory store and a real
Redis: requests per minute, tokens per minute reserved then corrected by the answer's
usage (complete or streamed), per-tenant settings, the daily budget, OpenAI's headers,
a dead store stepped around, and replicas sharing one count. Time is the plugin's
injected clock: refill is tested by moving it, never by sleeping."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.build import build_gateway
from gateway.call import EMBEDDINGS, PASSTHROUGH, Call, Reply
from gateway.call import make_call as make_any_call
from gateway.chain import Chain, ChainEntry
from gateway.config import load_config
from gateway.errors import UpstreamError, error_body
from gateway.http import create_app
from gateway.payload import Payload
from gateway.stores.fail_open import FailOpenStore
from gateway.stores.redis import RedisStore
from gateway.testing.client import app_client
from gateway.testing.conformance import FakeUpstream, check_plugin, collect, plugin_host
from gateway.testing.conformance import make_call as chat_call
from gateway.testing.redis_server import RedisProcess
from plugins.limits import RateLimited, RateLimits
from plugins.routing import Routing

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC: the day ends in 6400 s


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _limits(store: FailOpenStore, clock: Clock, **settings: Any) -> Chain:
    """A chain of the limits plugin alone over FakeUpstream (whose usage is 3 prompt
    tokens and one completion token per word of "echo: <content>")."""
    plugin = RateLimits(clock=clock, **settings)
    await plugin.startup(gateway=plugin_host(store))
    return Chain([ChainEntry(plugin.name, plugin)], FakeUpstream())


def _call(content: str = "hi", *, tenant: str = "a", **fields: Any) -> Call:
    return chat_call(content, tenant=tenant, **fields)


async def _ok(chain: Chain, call: Call) -> dict[str, str]:
    reply = await chain.run(call)
    await collect(reply)
    return reply.headers


async def _refused(chain: Chain, call: Call) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        await chain.run(call)
    return caught.value


async def test_conforms(store: FailOpenStore) -> None:
    limits = {"requests_per_minute": 100, "tokens_per_minute": 10_000, "tokens_per_day": 10**6}
    await check_plugin(RateLimits(default=limits), gateway=plugin_host(store))


async def test_the_request_past_the_limit_is_refused_until_one_is_back(
    store: FailOpenStore,
) -> None:
    clock = Clock()
    chain = await _limits(store, clock, default={"requests_per_minute": 3})
    seen = [await _ok(chain, _call()) for _ in range(3)]
    assert [h["x-ratelimit-limit-requests"] for h in seen] == ["3"] * 3
    assert [h["x-ratelimit-remaining-requests"] for h in seen] == ["2", "1", "0"]
    assert [h["x-ratelimit-reset-requests"] for h in seen] == ["20s", "40s", "1m0s"]
    assert not any("x-ratelimit-limit-tokens" in h for h in seen)  # no token limits set

    refused = await _refused(chain, _call())
    assert refused.status_code == 429 and refused.code == "rate_limit_exceeded"
    assert refused.error_type == "requests"  # OpenAI says which limit
    assert "requests per minute (RPM)" in refused.message and "20s" in refused.message
    assert refused.headers == {
        "retry-after": "20",
        "retry-after-ms": "20000",
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
    }
    assert b'"code":"rate_limit_exceeded"' in error_body(refused)

    assert (await _ok(chain, _call(tenant="b")))["x-ratelimit-remaining-requests"] == "2"
    clock.now += 19.9
    assert (await _refused(chain, _call())).headers["retry-after-ms"] == "100"
    clock.now += 0.1
    assert (await _ok(chain, _call()))["x-ratelimit-remaining-requests"] == "0"


async def test_a_token_reservation_is_refunded_after_a_short_answer(store: FailOpenStore) -> None:
    clock = Clock()
    chain = await _limits(store, clock, default={"tokens_per_minute": 100})
    # Holds 2 (prompt: "user" + "hi" = 6 characters) + 80; the answer used 3 + 2.
    headers = await _ok(chain, _call(max_tokens=80))
    assert headers["x-ratelimit-limit-tokens"] == "100"
    assert headers["x-ratelimit-remaining-tokens"] == "95"
    assert headers["x-ratelimit-reset-tokens"] == "3s"
    # Had the 82 stayed held, this one would not fit.
    assert (await _ok(chain, _call(max_tokens=80)))["x-ratelimit-remaining-tokens"] == "90"
    refused = await _refused(chain, _call(max_tokens=90))
    assert "tokens per minute (TPM)" in refused.message
    assert refused.headers["retry-after"] == "2"  # 2 tokens short: 1.2 s at 100 a minute
    assert refused.headers["x-ratelimit-remaining-tokens"] == "90"
    clock.now += 1.2
    assert (await _ok(chain, _call(max_tokens=90)))["x-ratelimit-remaining-tokens"] == "87"


async def test_a_streams_usage_corrects_the_reservation(store: FailOpenStore) -> None:
    clock = Clock()
    chain = await _limits(store, clock, default={"tokens_per_minute": 100})
    reply = await chain.run(_call(max_tokens=80, stream=True))
    assert reply.headers["x-ratelimit-remaining-tokens"] == "18"  # as reserved
    await _refused(chain, _call(max_tokens=80))  # held while the stream runs
    assert await collect(reply) == "echo: hi"
    # The usage chunk said 5: 95 left before this call, 90 after.
    assert (await _ok(chain, _call(max_tokens=80)))["x-ratelimit-remaining-tokens"] == "90"


async def test_a_stream_cut_off_before_its_usage_keeps_the_reservation(
    store: FailOpenStore,
) -> None:
    plugin = RateLimits(clock=Clock(), default={"tokens_per_minute": 100})
    await plugin.startup(gateway=plugin_host(store))
    chain = Chain([ChainEntry(plugin.name, plugin)], FakeUpstream(cut_after=1))
    reply = await chain.run(_call(max_tokens=80, stream=True))
    with pytest.raises(UpstreamError):
        await collect(reply)
    await _refused(chain, _call(max_tokens=80))


async def test_an_upstream_error_refunds_the_tokens(store: FailOpenStore) -> None:
    plugin = RateLimits(clock=Clock(), default={"tokens_per_minute": 100})
    await plugin.startup(gateway=plugin_host(store))
    failing = Chain([ChainEntry(plugin.name, plugin)], FakeUpstream(fail=True))
    with pytest.raises(UpstreamError):
        await failing.run(_call(max_tokens=80))
    working = Chain([ChainEntry(plugin.name, plugin)], FakeUpstream())
    assert (await _ok(working, _call(max_tokens=80)))["x-ratelimit-remaining-tokens"] == "95"


async def test_a_request_larger_than_the_limit_is_refused_without_a_wait(
    store: FailOpenStore,
) -> None:
    chain = await _limits(store, Clock(), default={"tokens_per_minute": 100})
    refused = await _refused(chain, _call(max_tokens=200))
    assert refused.message.startswith("Request too large for tokens per minute (TPM)")
    assert "retry-after" not in refused.headers  # waiting would not help
    assert refused.headers["x-ratelimit-remaining-tokens"] == "100"  # nothing was taken
    # No max_tokens: the default reserve (512) is cut to fit rather than refused.
    assert (await _ok(chain, _call()))["x-ratelimit-remaining-tokens"] == "95"


async def test_a_tenants_own_limits_override_the_default(store: FailOpenStore) -> None:
    chain = await _limits(
        store,
        Clock(),
        default={"requests_per_minute": 1, "tokens_per_minute": 1000},
        tenants={"big": {"requests_per_minute": 3}},
    )
    for remaining in ("2", "1", "0"):
        headers = await _ok(chain, _call(tenant="big"))
        assert headers["x-ratelimit-remaining-requests"] == remaining
        assert headers["x-ratelimit-limit-tokens"] == "1000"  # the default's, kept
    await _refused(chain, _call(tenant="big"))
    await _ok(chain, _call(tenant="small"))
    await _refused(chain, _call(tenant="small"))


async def test_tenants_never_share_a_bucket_whatever_their_names(store: FailOpenStore) -> None:
    chain = await _limits(store, Clock(), default={"requests_per_minute": 1})
    for tenant in ("a", "a:requests", "a%3Arequests", "rl:a", ""):
        assert (await _ok(chain, _call(tenant=tenant)))["x-ratelimit-remaining-requests"] == "0"


async def test_the_daily_budget_lasts_until_midnight_utc(store: FailOpenStore) -> None:
    clock = Clock()
    chain = await _limits(store, clock, default={"tokens_per_day": 30})
    # Each call holds 2 + 10 and is charged its usage, 5.
    remaining = [(await _ok(chain, _call(max_tokens=10))) for _ in range(4)]
    assert [h["x-ratelimit-remaining-tokens-day"] for h in remaining] == ["25", "20", "15", "10"]
    assert remaining[0]["x-ratelimit-reset-tokens-day"] == "1h46m40s"
    assert "x-ratelimit-limit-tokens" not in remaining[0]  # no per-minute limit set
    clock.now += 3600  # nothing comes back within the day
    refused = await _refused(chain, _call(max_tokens=10))
    assert "tokens per day (TPD)" in refused.message
    assert refused.headers["retry-after"] == "2800"
    assert refused.headers["x-ratelimit-limit-tokens-day"] == "30"
    clock.now += 2800
    headers = await _ok(chain, _call(max_tokens=10))
    assert headers["x-ratelimit-remaining-tokens-day"] == "25"
    assert headers["x-ratelimit-reset-tokens-day"] == "24h0m0s"


async def test_other_endpoints_count_requests_and_their_own_tokens(store: FailOpenStore) -> None:
    plugin = RateLimits(
        clock=Clock(), default={"requests_per_minute": 10, "tokens_per_minute": 100}
    )
    await plugin.startup(gateway=plugin_host(store))

    async def upstream(call: Call) -> Reply:
        usage = {"prompt_tokens": 7, "total_tokens": 7}
        return Reply(body=Payload.of({"object": "list", "data": [], "usage": usage}))

    chain = Chain([ChainEntry(plugin.name, plugin)], upstream)
    embed = make_any_call(EMBEDDINGS, {"model": "e", "input": "x" * 400}, tenant="a")
    reply = await chain.run(embed)  # holds 100 (no output), charged 7
    assert reply.headers["x-ratelimit-remaining-tokens"] == "93"
    other = make_any_call(PASSTHROUGH, {"model": "m"}, tenant="a", path="/moderations")
    reply = await chain.run(other)
    assert reply.headers["x-ratelimit-remaining-requests"] == "8"
    assert "x-ratelimit-remaining-tokens" not in reply.headers  # it uses no tokens


async def test_the_gateways_headers_replace_the_upstreams(store: FailOpenStore) -> None:
    plugin = RateLimits(clock=Clock(), default={"requests_per_minute": 5})
    await plugin.startup(gateway=plugin_host(store))
    up = FakeUpstream()

    async def upstream(call: Call) -> Reply:
        reply = await up(call)
        reply.headers.update({"x-ratelimit-limit-requests": "10000", "openai-version": "x"})
        return reply

    headers = await _ok(Chain([ChainEntry(plugin.name, plugin)], upstream), _call())
    assert headers["x-ratelimit-limit-requests"] == "5" and headers["openai-version"] == "x"


async def test_a_dead_store_lets_requests_through(redis_process: RedisProcess) -> None:
    store = FailOpenStore(RedisStore(redis_process.url, timeout_s=0.05), timeout_s=0.05)
    try:
        chain = await _limits(store, Clock(), default={"requests_per_minute": 2})
        await _ok(chain, _call())
        await _ok(chain, _call())
        await _refused(chain, _call())
        redis_process.kill()
        for _ in range(20):
            assert await collect(await chain.run(_call())) == "echo: hi"
        assert store.degraded
    finally:
        await store.close()


async def test_replicas_sharing_a_redis_share_the_count(redis_server: RedisProcess) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    stores = [
        FailOpenStore(RedisStore(redis_server.url, prefix=prefix, timeout_s=1.0), timeout_s=1.0)
        for _ in "ab"
    ]
    try:
        clock = Clock()
        one, two = [await _limits(s, clock, default={"requests_per_minute": 4}) for s in stores]
        for chain in (one, two, one, two):
            await _ok(chain, _call())
        await _refused(one, _call())
        await _refused(two, _call())
        clock.now += 15
        assert (await _ok(two, _call()))["x-ratelimit-remaining-requests"] == "0"
    finally:
        for s in stores:
            await s.close()


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"default": {"requests_per_minut": 1}}, "default: unknown limit 'requests_per_minut'"),
        ({"default": {"tokens_per_day": 0}}, "default.tokens_per_day: must be a positive"),
        ({"tenants": {"t": {"tokens_per_minute": "9"}}}, "tenants.t.tokens_per_minute"),
        ({"reserve_tokens": -1}, "reserve_tokens: must be >= 0"),
    ],
)
def test_bad_settings_are_named(settings: dict[str, Any], error: str) -> None:
    with pytest.raises(TypeError, match=error):
        RateLimits(**settings)


async def test_settings_from_config_and_the_429_over_http(
    tmp_path: Path, mock_upstream: Callable[..., str]
) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(
        'plugins = [{name = "limits", settings = {default = {requests_per_minute = 1},'
        ' tenants = {"team-b" = {requests_per_minute = 2}}}}, "routing"]\n'
        f'[[groups]]\nname = "g"\nbackends = [{{url = "{mock_upstream()}"}}]\n'
        '[[models]]\nname = "m"\ngroups = ["g"]\n'
    )
    plugins = {"limits": RateLimits, "routing": Routing}
    app = create_app(build_gateway(load_config(cfg, {}), plugins=plugins))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with app_client(app) as client:
        ok = await client.post("/v1/chat/completions", json=body)
        assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining-requests"] == "0"
        refused = await client.post("/v1/chat/completions", json=body)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit-requests"] == "1"
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] in ("requests", "tokens")
