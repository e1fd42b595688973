"""The semantic cache's judgement beyond embeddings, through the real chain with the
real embedding model and WordNet: opposite and sibling words are not served for each
other, and with `max_error_rate` hits wait for evidence from the backend's answers."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from gateway.chain import Chain, ChainEntry
from gateway.embeddings import Embedder
from gateway.metrics import GatewayMetrics
from gateway.stores.fail_open import FailOpenStore
from gateway.testing.conformance import FakeUpstream
from plugins.semantic_cache import SemanticCache
from tests.plugins.test_semantic_cache import _ask, _cache, _call, _fixed, embedder, model

__all__ = ["embedder", "model"]  # fixtures used here

pytestmark = pytest.mark.anyio

CONTRASTS = [
    ("Is gold a good conductor of electricity?", "Is silver a good conductor of electricity?"),
    ("What is the largest planet in the solar system?",
     "What is the smallest planet in the solar system?"),
    ("Write a haiku about autumn", "Write a haiku about spring"),
]  # fmt: skip


async def test_opposite_and_sibling_words_are_not_served_for_each_other(
    store: FailOpenStore, embedder: Embedder
) -> None:
    plugin = await _cache(store, embedder)
    assert plugin.words is not None  # WordNet is there (make install pulls it)
    chain = Chain([ChainEntry("semantic_cache", plugin)], FakeUpstream())
    for first, second in CONTRASTS:
        await _ask(chain, _call(first))
        assert (await _ask(chain, _call(second))) == (f"echo: {second}", "miss"), second
    # ...while a synonym swapped in is still the same question.
    reply = await _ask(chain, _call("What is the biggest planet in the solar system?"))
    assert reply == ("echo: What is the largest planet in the solar system?", "hit")


async def test_without_wordnet_those_pairs_would_be_served(
    store: FailOpenStore, embedder: Embedder
) -> None:
    """Why the lexicon is there: the embedding and the rules alone take them as one."""
    plugin = await _cache(store, embedder)
    plugin.words = None
    chain = Chain([ChainEntry("semantic_cache", plugin)], FakeUpstream())
    outcomes = []
    for first, second in CONTRASTS:
        await _ask(chain, _call(first))
        outcomes.append((await _ask(chain, _call(second)))[1])
    assert outcomes == ["hit", "hit", "hit"]


async def _settle(plugin: SemanticCache) -> None:
    """Waits for the comparisons the plugin runs in the background (not for the loop
    that refreshes the index from a shared store, which runs for the plugin's life)."""
    comparisons = [
        t for t in plugin._background if "_refresh_loop" not in t.get_coro().__qualname__
    ]
    await asyncio.gather(*comparisons)


async def test_the_error_bound_serves_only_after_enough_agreeing_answers(
    store: FailOpenStore, embedder: Embedder
) -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    # A loose bound (50% at 95% confidence, alpha 0.01 per band over 5 bands) needs 7
    # clean outcomes in a band: 0.5 ** 7 < 0.01.
    plugin = await _cache(store, embedder, metrics, max_error_rate=0.5)
    answer = "Open Settings, choose Security, then Reset password."
    upstream = _fixed(answer)
    calls = 0

    async def counting(call):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return await upstream(call)

    chain = Chain([ChainEntry("semantic_cache", plugin)], counting)
    await _ask(chain, _call("How do I reset my password?"))  # a plain miss: cached
    for n in range(7):
        text, outcome = await _ask(chain, _call("how can i reset my password"))
        assert (text, outcome) == (answer, "miss"), n  # held back: the backend answered
        await _settle(plugin)
    assert calls == 8
    registry = metrics.registry
    explored = {"outcome": "agree"}
    assert registry.get_sample_value("llm_gateway_semantic_explorations_total", explored) == 7
    band = registry.get_sample_value("llm_gateway_semantic_band_served", {"band": "0.96-1.00"})
    assert band == 1  # the top band: every outcome was there
    assert (await _ask(chain, _call("how can i reset my password")))[1] == "hit"
    assert calls == 8
    await plugin.shutdown()


async def test_a_disagreeing_answer_teaches_the_entry_and_the_bound(
    store: FailOpenStore, embedder: Embedder
) -> None:
    plugin = await _cache(store, embedder, max_error_rate=0.5)
    chain = Chain([ChainEntry("semantic_cache", plugin)], _fixed("Paris."))
    await _ask(chain, _call("What is the capital of France?"))
    other = Chain([ChainEntry("semantic_cache", plugin)], _fixed("Berlin is the capital."))
    assert (await _ask(other, _call("what's the capital city of France")))[1] == "miss"
    await _settle(plugin)
    assert plugin.bound is not None and plugin.bound.outcomes == 1
    assert plugin.index is not None
    first = next(e for e in plugin.index._entries.values() if e.query.startswith("What is"))
    assert first.evidence.wrong_at > 0.8  # never served again at that similarity or below
    await plugin.shutdown()


async def test_settings_are_checked() -> None:
    with pytest.raises(TypeError, match="max_error_rate"):
        SemanticCache(max_error_rate=1.5)
    with pytest.raises(TypeError, match="confidence"):
        SemanticCache(confidence=0)
