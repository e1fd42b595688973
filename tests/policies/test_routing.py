from __future__ import annotations

from collections import Counter

import pytest

from policies.routing import (
    BackendState,
    ConversationAffinity,
    LeastOutstanding,
    PrefixAffinity,
    RoundRobin,
    RoutingKey,
    Weighted,
    prefix_hash_chain,
)


def _backends(n: int) -> list[BackendState]:
    return [BackendState(id=f"b{i}") for i in range(n)]


def _key(text: str, affinity: str | None = None) -> RoutingKey:
    return RoutingKey(prefix_hash_chain(text, 8, 32), affinity)


def test_hash_chain_is_deterministic_and_chained() -> None:
    a = prefix_hash_chain("system prompt A / user one", 8, 32)
    b = prefix_hash_chain("system prompt A / user two", 8, 32)
    assert a == prefix_hash_chain("system prompt A / user one", 8, 32)
    assert len(a) == 3  # full blocks only
    assert a[:2] == b[:2] and a[2] != b[2]  # shared leading blocks, then they part
    assert prefix_hash_chain([1, 2, 3, 4], 2, 8) == prefix_hash_chain([1, 2, 3, 4], 2, 8)
    assert prefix_hash_chain("x" * 100, 8, 4) == prefix_hash_chain("x" * 40, 8, 4)


def test_round_robin_spreads_evenly() -> None:
    backends, policy = _backends(3), RoundRobin()
    counts = Counter(policy.choose(backends, RoutingKey()).id for _ in range(300))
    assert set(counts.values()) == {100}


def test_weighted_follows_weights_without_bursts() -> None:
    backends = [BackendState("a", weight=3), BackendState("b", weight=1)]
    policy = Weighted()
    picks = [policy.choose(backends, RoutingKey()).id for _ in range(400)]
    assert Counter(picks) == {"a": 300, "b": 100}
    assert "bb" not in "".join(p for p in picks)  # smooth: never b twice in a row


def test_least_outstanding_picks_the_least_loaded_and_rotates_ties() -> None:
    backends = _backends(3)
    backends[0].outstanding, backends[1].outstanding = 5, 1
    policy = LeastOutstanding()
    assert policy.choose(backends, RoutingKey()).id == "b2"
    backends[2].outstanding = 1
    assert {policy.choose(backends, RoutingKey()).id for _ in range(4)} == {"b1", "b2"}


def test_prefix_affinity_keeps_a_prefix_on_its_owner() -> None:
    backends, policy = _backends(8), PrefixAffinity()
    first = policy.choose(backends, _key("shared system prompt, turn 1"))
    policy.on_routed(first, _key("shared system prompt, turn 1"))
    for turn in range(2, 10):  # later turns extend the prefix: same backend
        key = _key(f"shared system prompt, turn 1 ... and turn {turn}")
        assert policy.choose(backends, key) is first


def test_prefix_affinity_spreads_different_prefixes() -> None:
    backends, policy = _backends(8), PrefixAffinity()
    used = {policy.choose(backends, _key(f"{i:08d} prompt with its text")).id for i in range(200)}
    assert len(used) == 8


def test_prefix_affinity_spills_over_instead_of_hot_spotting() -> None:
    backends, policy = _backends(4), PrefixAffinity(load_factor=1.25)
    key = _key("one very popular system prompt")
    for _ in range(40):  # all in flight at once
        b = policy.choose(backends, key)
        b.outstanding += 1
        policy.on_routed(b, key)
    loads = sorted(b.outstanding for b in backends)
    assert max(loads) <= 1.25 * 40 / 4 + 1  # the bound holds
    assert loads[0] > 0  # everyone took some


def test_removing_a_backend_moves_only_its_keys() -> None:
    backends = _backends(10)
    keys = [_key(f"{i:08d} conversation opening words") for i in range(500)]
    before = [PrefixAffinity().choose(backends, k).id for k in keys]
    survivors = [b for b in backends if b.id != "b3"]
    after = [PrefixAffinity().choose(survivors, k).id for k in keys]
    moved = [(x, y) for x, y in zip(before, after, strict=True) if x != y]
    assert moved and all(x == "b3" for x, _ in moved)


def test_conversation_affinity_is_sticky_by_id() -> None:
    backends, policy = _backends(8), ConversationAffinity()
    for conv in ("alpha", "beta", "gamma"):
        picks = {policy.choose(backends, _key(f"turn {t}", conv)).id for t in range(10)}
        assert len(picks) == 1


def test_load_factor_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="load_factor"):
        PrefixAffinity(load_factor=0.9)


def test_prompts_shorter_than_a_block_rotate() -> None:
    backends, policy = _backends(3), PrefixAffinity()
    assert {policy.choose(backends, RoutingKey()).id for _ in range(3)} == {"b0", "b1", "b2"}
