"""The semantic cache through the real chain, with the real embedding model
(all-MiniLM-L6-v2) and FAISS, over the memory store and a real Redis: paraphrases hit,
tenants and conversations never share, hard negatives miss, streams replay, entries
survive a restart (rebuilt from Redis), expire and are evicted, shadow checks count."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.call import CHAT, Call, Reply, make_call
from gateway.chain import Chain, ChainEntry
from gateway.embeddings import Embedder, EmbeddingModel
from gateway.metrics import GatewayMetrics
from gateway.payload import Payload
from gateway.runtime import PluginHost
from gateway.stores.fail_open import FailOpenStore
from gateway.stores.redis import RedisStore
from gateway.targets import Backend, Group, ModelTarget
from gateway.testing.clock import FakeClock
from gateway.testing.conformance import FakeUpstream, check_plugin, collect
from gateway.testing.redis_server import RedisProcess
from plugins.semantic_cache import SWEEP_EVERY_S, SemanticCache

pytestmark = pytest.mark.anyio


@pytest.fixture
def model(embedding_model: EmbeddingModel) -> EmbeddingModel:
    """The session's one loaded model (tests/conftest.py)."""
    return embedding_model


@pytest.fixture
async def embedder(model: EmbeddingModel) -> AsyncIterator[Embedder]:
    e = Embedder(model)
    await e.start(warmup=False)
    yield e
    await e.close()


def _host(store: FailOpenStore, embedder: Any, metrics: Any = None) -> PluginHost:
    async def load() -> Any:
        return embedder

    return PluginHost(store=store, metrics=metrics, backends=list, load_embedder=load)


async def _cache(
    store: FailOpenStore, embedder: Embedder, metrics: Any = None, **settings: Any
) -> SemanticCache:
    plugin = SemanticCache(**settings)
    await plugin.startup(gateway=_host(store, embedder, metrics))
    return plugin


def _call(
    content: str,
    *,
    tenant: str = "a",
    history: list[dict[str, Any]] | None = None,
    stream: bool = False,
    **fields: Any,
) -> Call:
    fields.setdefault("temperature", 0)
    messages = [*(history or []), {"role": "user", "content": content}]
    return make_call(
        CHAT,
        {"model": "m", "messages": messages, "stream": stream, **fields},
        tenant=tenant,
        target=ModelTarget("m", [Group("g", [Backend(id="b", group="g")])]),
    )


async def _ask(chain: Chain, call: Call) -> tuple[str, str]:
    reply = await chain.run(call)
    return await collect(reply), reply.headers.get("x-semantic-cache", "")


async def test_conforms(store: FailOpenStore, embedder: Embedder) -> None:
    await check_plugin(SemanticCache(), answers_itself=True, gateway=_host(store, embedder))


async def test_a_paraphrase_is_answered_from_the_cache(
    store: FailOpenStore, embedder: Embedder
) -> None:
    up = FakeUpstream()
    chain = Chain([ChainEntry("semantic_cache", await _cache(store, embedder))], up)
    assert await _ask(chain, _call("How do I reset my password?")) == (
        "echo: How do I reset my password?",
        "miss",
    )
    reply = await chain.run(_call("how can i reset my password"))
    assert reply.headers["x-semantic-cache"] == "hit"
    assert 0.8 <= float(reply.headers["x-semantic-similarity"]) <= 1.0
    assert await collect(reply) == "echo: How do I reset my password?"
    assert up.calls == 1


async def test_hard_negatives_are_not_served(store: FailOpenStore, embedder: Embedder) -> None:
    up = FakeUpstream()
    chain = Chain([ChainEntry("semantic_cache", await _cache(store, embedder))], up)
    for first, second in [
        ("Does the Moon orbit the Earth?", "Does the Earth orbit the Moon?"),
        ("turn on dark mode", "turn off dark mode"),
        ("convert 5 miles to km", "convert 8 miles to km"),
    ]:
        await _ask(chain, _call(first))
        text, outcome = await _ask(chain, _call(second))
        assert (text, outcome) == (f"echo: {second}", "miss"), second


async def test_tenants_never_share_answers(store: FailOpenStore, embedder: Embedder) -> None:
    up = FakeUpstream()
    chain = Chain([ChainEntry("semantic_cache", await _cache(store, embedder))], up)
    await _ask(chain, _call("What is the capital of France?", tenant="a"))
    text, outcome = await _ask(chain, _call("Tell me France's capital", tenant="b"))
    assert (text, outcome) == ("echo: Tell me France's capital", "miss")
    text, outcome = await _ask(chain, _call("What is the capital of France?", tenant="c"))
    assert (text, outcome) == ("echo: What is the capital of France?", "miss")
    text, outcome = await _ask(chain, _call("Tell me France's capital", tenant="a"))
    assert (text, outcome) == ("echo: What is the capital of France?", "hit")


async def test_the_conversation_before_the_newest_turn_must_match(
    store: FailOpenStore, embedder: Embedder
) -> None:
    up = FakeUpstream()
    chain = Chain([ChainEntry("semantic_cache", await _cache(store, embedder))], up)
    system = {"role": "system", "content": "Answer in French."}
    earlier = [
        {"role": "user", "content": "I use PostgreSQL 16."},
        {"role": "assistant", "content": "Noted."},
    ]
    await _ask(chain, _call("How do I create an index?", history=[system, *earlier]))
    # The same last turn after another system prompt, other turns, or none: misses.
    for history in ([earlier[0], earlier[1]], [system], [], [{**system, "content": "Be brief"}]):
        assert (await _ask(chain, _call("How do I create an index?", history=history)))[1] == (
            "miss"
        )
    hit = await _ask(chain, _call("how can I create an index", history=[system, *earlier]))
    assert hit[1] == "hit"


async def test_sampling_parameters_partition_the_cache(
    store: FailOpenStore, embedder: Embedder
) -> None:
    chain = Chain([ChainEntry("semantic_cache", await _cache(store, embedder))], FakeUpstream())
    await _ask(chain, _call("How do I reset my password?"))
    assert (await _ask(chain, _call("how can i reset my password", max_tokens=5)))[1] == "miss"
    assert (await _ask(chain, _call("how can i reset my password", seed=3)))[1] == "miss"
    assert (await _ask(chain, _call("how can i reset my password", temperature=0.7)))[1] == (
        "bypass"
    )


async def test_a_streamed_answer_is_kept_and_replayed(
    store: FailOpenStore, embedder: Embedder
) -> None:
    up = FakeUpstream()
    chain = Chain([ChainEntry("semantic_cache", await _cache(store, embedder))], up)
    first = await chain.run(_call("How do I reset my password?", stream=True))
    assert await collect(first) == "echo: How do I reset my password?"
    second = await chain.run(
        _call("how can i reset my password", stream=True, stream_options={"include_usage": True})
    )
    assert second.headers["x-semantic-cache"] == "hit" and second.stream is not None
    chunks = [c.data async for c in second.stream]
    text = "".join(c["delta"].get("content") or "" for ch in chunks for c in ch["choices"])
    assert text == "echo: How do I reset my password?"
    assert chunks[-1]["usage"] is not None and chunks[-1]["choices"] == []
    assert up.calls == 1


async def test_entries_survive_a_restart_through_redis(
    redis_server: RedisProcess, embedder: Embedder
) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    store = FailOpenStore(RedisStore(redis_server.url, prefix=prefix, timeout_s=1.0), timeout_s=1.0)
    up = FakeUpstream()
    first = await _cache(store, embedder)
    await _ask(Chain([ChainEntry("semantic_cache", first)], up), _call("What is a mutex?"))
    await first.shutdown()
    await store.close()

    store = FailOpenStore(RedisStore(redis_server.url, prefix=prefix, timeout_s=1.0), timeout_s=1.0)
    try:
        second = await _cache(store, embedder)  # a new process would start like this
        assert second.index is not None and len(second.index) == 1
        chain = Chain([ChainEntry("semantic_cache", second)], up)
        assert await _ask(chain, _call("what's a mutex")) == ("echo: What is a mutex?", "hit")
        assert up.calls == 1
    finally:
        await store.close()


async def test_entries_expire_and_the_index_is_bounded(
    store: FailOpenStore, embedder: Embedder
) -> None:
    clock = FakeClock()
    plugin = await _cache(store, embedder, ttl_s=60, max_entries=2, clock=clock)
    chain = Chain([ChainEntry("semantic_cache", plugin)], FakeUpstream())
    for q in ("What is a mutex?", "What is a semaphore?", "What is a spinlock?"):
        await _ask(chain, _call(q))
    assert plugin.index is not None and len(plugin.index) == 2
    assert len(await store.scan("sem:")) == 2  # the evicted entry left the store too
    assert (await _ask(chain, _call("what's a mutex")))[1] == "miss"  # evicted (oldest)
    clock.advance(61)  # past the TTL
    assert (await _ask(chain, _call("what's a spinlock")))[1] == "miss"  # expired
    clock.advance(61)  # the spinlock answer just kept expires too, unsearched
    clock.advance(SWEEP_EVERY_S)  # the periodic sweep is due: entries nobody searches for go
    await _ask(chain, _call("What is a deadlock?"))
    assert len(plugin.index) == 1


def _fixed(text: str) -> Any:
    async def upstream(call: Call) -> Reply:
        message = {"role": "assistant", "content": text}
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        body = {"id": "x", "object": "chat.completion", "created": 0, "model": "m"}
        return Reply(body=Payload.of({**body, "choices": [choice], "usage": usage}))

    return upstream


async def test_shadow_checks_measure_false_hits(store: FailOpenStore, embedder: Embedder) -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    plugin = await _cache(store, embedder, metrics, shadow_rate=1.0)
    answer = "Open Settings, choose Security, then Reset password."
    chain = Chain([ChainEntry("semantic_cache", plugin)], _fixed(answer))
    await _ask(chain, _call("How do I reset my password?"))
    assert (await _ask(chain, _call("how can i reset my password")))[1] == "hit"
    # The backend now answers the same question differently: a false hit.
    wrong = Chain([ChainEntry("semantic_cache", plugin)], _fixed("Paris is the capital."))
    assert (await _ask(wrong, _call("how could I reset my password")))[1] == "hit"
    evidence = plugin.evidence
    assert evidence is not None
    for _ in range(100):
        if evidence.shadow_agreed + evidence.shadow_disagreed == 2:
            break
        await asyncio.sleep(0.05)
    assert (evidence.shadow_agreed, evidence.shadow_disagreed) == (1, 1)
    registry = metrics.registry
    assert registry.get_sample_value("llm_gateway_semantic_false_hit_rate") == 0.5
    assert (
        registry.get_sample_value(
            "llm_gateway_semantic_shadow_checks_total", {"outcome": "disagree"}
        )
        == 1
    )
    await plugin.shutdown()


async def test_a_failing_embedder_makes_the_cache_step_aside(store: FailOpenStore) -> None:
    class Broken:
        model = SimpleNamespace(dim=384)

        async def embed(self, texts: list[str]) -> Any:
            raise RuntimeError("embedding model crashed")

    plugin = SemanticCache()
    await plugin.startup(gateway=_host(store, Broken()))
    up = FakeUpstream()
    chain = Chain([ChainEntry("semantic_cache", plugin)], up)
    assert await _ask(chain, _call("What is a mutex?")) == ("echo: What is a mutex?", "bypass")
    assert up.calls == 1


async def test_the_rebuild_is_not_cut_short_by_the_request_timeout(
    redis_server: RedisProcess, embedder: Embedder
) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    store = FailOpenStore(RedisStore(redis_server.url, prefix=prefix, timeout_s=1.0), timeout_s=1.0)
    first = await _cache(store, embedder)
    for q in ("What is a mutex?", "What is a semaphore?", "What is a spinlock?"):
        await _ask(Chain([ChainEntry("semantic_cache", first)], FakeUpstream()), _call(q))
    await store.close()
    # A request may wait 1 µs on this store; the start-up scan and reads take longer.
    hasty = FailOpenStore(RedisStore(redis_server.url, prefix=prefix), timeout_s=1e-6)
    try:
        second = await _cache(hasty, embedder)
        assert second.index is not None and len(second.index) == 3
    finally:
        await hasty.close()


async def test_replicas_sharing_redis_see_each_others_entries(
    redis_server: RedisProcess, embedder: Embedder
) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    stores = [
        FailOpenStore(RedisStore(redis_server.url, prefix=prefix, timeout_s=1.0), timeout_s=1.0)
        for _ in "ab"
    ]
    try:
        a, b = [await _cache(s, embedder, refresh_s=3600) for s in stores]
        up = FakeUpstream()
        await _ask(Chain([ChainEntry("semantic_cache", a)], up), _call("What is a mutex?"))
        assert await b.rebuild() == 1  # what b's periodic refresh does: load what a added
        chain_b = Chain([ChainEntry("semantic_cache", b)], up)
        assert await _ask(chain_b, _call("what's a mutex")) == ("echo: What is a mutex?", "hit")
        assert up.calls == 1
        await a.shutdown()
        await b.shutdown()
    finally:
        for s in stores:
            await s.close()
