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
    first_healthy_group,
    load_bound,
    prefix_boundaries,
    prefix_hash_chain,
    stable_hash,
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
    capped = prefix_hash_chain("x" * 100, 8, 4, tail=False)
    assert (
        capped
        == prefix_hash_chain("x" * 40, 8, 4, tail=False)
        == prefix_hash_chain("x" * 100, 8, 4)[:4]
    )


def test_hash_chain_tail_reaches_the_end_of_a_long_prompt() -> None:
    # two conversations behind one long system prompt: a key cut at max_blocks would be
    # the same for both; the tail's boundaries (~6% apart) reach their own text
    system = "S" * 64 * 200
    a = prefix_hash_chain(system + "user A asks about the weather" * 60, 64, 64)
    b = prefix_hash_chain(system + "user B wants a poem about cats" * 60, 64, 64)
    assert len(a) > 64 and a[:64] == b[:64] and a[-1] != b[-1]
    assert prefix_boundaries(10, 64) == list(range(1, 11))
    assert prefix_boundaries(100, 64) == [*range(1, 65), 68, 72, 76, 80, 85, 90, 95, 100]
    assert prefix_boundaries(100, 64, tail=False) == list(range(1, 65))
    assert len(prefix_boundaries(1_000_000, 64)) < 64 + 12 * 14  # ~11 per doubling
    # a prompt that extends another has every boundary of it: the next turn finds its last
    turn1 = prefix_hash_chain(system + "question" * 40, 64, 64)
    turn2 = prefix_hash_chain(system + "question" * 40 + "answer, next question" * 40, 64, 64)
    assert turn1[-1] in turn2


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


def test_hash_chain_blocks_tokens_and_bytes() -> None:
    tokens = list(range(100))
    chain = prefix_hash_chain(tokens, 16, 64)
    assert len(chain) == 6  # 100 // 16 full blocks; the partial seventh is left out
    assert prefix_hash_chain([*tokens[:96], 7, 7], 16, 64) == chain
    changed = prefix_hash_chain([*tokens[:20], -1, *tokens[21:]], 16, 64)
    # block 1 differs, and so does every later hash: each covers all blocks before it
    assert changed[0] == chain[0] and all(
        a != b for a, b in zip(changed[1:], chain[1:], strict=True)
    )
    assert prefix_hash_chain(b"abcdefgh", 4, 8) == prefix_hash_chain("abcdefgh", 4, 8)
    assert prefix_hash_chain("short", 64, 8) == ()
    assert all(0 <= h < 2**64 for h in chain)
    with pytest.raises(ValueError):
        prefix_hash_chain("abc", 0, 8)


def test_hash_chain_is_stable_across_processes() -> None:
    # a fixed value: a salted hash() would differ from run to run (and between replicas)
    assert prefix_hash_chain("abcd", 4, 1) == (prefix_hash_chain("abcd", 4, 1)[0],)
    assert stable_hash("conversation-1") == stable_hash("conversation-1")
    assert prefix_hash_chain("abcd", 4, 1)[0] == 0x27042F496EBE21F0


def test_load_bound() -> None:
    assert load_bound(0, 4, 1.25) == 1
    assert load_bound(7, 4, 1.25) == 3  # ceil(1.25 * 8 / 4) = ceil(2.5)
    assert load_bound(39, 4, 1.0) == 10


def test_weighted_interleaves_smoothly() -> None:
    backends = [BackendState("a", weight=5), BackendState("b"), BackendState("c")]
    policy = Weighted()
    assert "".join(policy.choose(backends, RoutingKey()).id for _ in range(7)) == "aabacaa"


def test_weighted_parks_weight_zero_and_survives_all_parked() -> None:
    backends = [BackendState("a", weight=0), BackendState("b", weight=2)]
    policy = Weighted()
    assert {policy.choose(backends, RoutingKey()).id for _ in range(10)} == {"b"}
    parked = [BackendState("x", weight=0), BackendState("y", weight=0)]
    assert {policy.choose(parked, RoutingKey()).id for _ in range(4)} == {"x", "y"}


def test_least_outstanding_rotates_ties_over_all() -> None:
    backends, policy = _backends(5), LeastOutstanding()
    assert {policy.choose(backends, RoutingKey()).id for _ in range(5)} == {b.id for b in backends}


def test_least_outstanding_keeps_loads_level() -> None:
    backends, policy = _backends(4), LeastOutstanding()
    for _ in range(41):
        policy.choose(backends, RoutingKey()).outstanding += 1
    assert sorted(b.outstanding for b in backends) == [10, 10, 10, 11]


def test_policies_return_the_callers_own_objects() -> None:
    class Tagged(BackendState):
        pass

    backends = [Tagged(f"t{i}") for i in range(3)]
    for policy in (RoundRobin(), Weighted(), LeastOutstanding(), PrefixAffinity()):
        assert policy.choose(backends, _key("some prompt text here")) in backends


def test_prefix_affinity_spreads_prefixes_evenly() -> None:
    backends, policy = _backends(8), PrefixAffinity()
    counts = Counter(
        policy.choose(backends, _key(f"{i:08d} prompt with its text")).id for i in range(4000)
    )
    assert len(counts) == 8 and max(counts.values()) < 1.5 * 4000 / 8


def test_prefix_affinity_leaves_an_overloaded_owner_and_comes_back() -> None:
    backends, policy = _backends(4), PrefixAffinity(load_factor=1.25)
    key = _key("system prompt of a popular app, user question")
    owner = policy.choose(backends, key)
    policy.on_routed(owner, key)
    owner.outstanding = 3  # bound = ceil(1.25 * 4 / 4) = 2: the owner is full
    other = policy.choose(backends, key)
    assert other is not owner and other.outstanding == 0
    owner.outstanding = 0
    assert policy.choose(backends, key) is owner


def test_prefix_affinity_follows_the_longest_known_prefix() -> None:
    backends, policy = _backends(4), PrefixAffinity()
    turn1 = _key("SYSTEM PROMPT xxxxxxxx user: hello....")
    first = policy.choose(backends, turn1)
    policy.on_routed(first, turn1)
    elsewhere = next(b for b in backends if b is not first)
    turn2 = _key("SYSTEM PROMPT xxxxxxxx user: hello.... bot: hi...... user: more....")
    policy.on_routed(elsewhere, turn2)  # turn 2 went elsewhere (the owner was full)
    turn3 = _key(
        "SYSTEM PROMPT xxxxxxxx user: hello.... bot: hi...... user: more.... bot: ok......"
    )
    assert policy.choose(backends, turn3) is elsewhere  # it holds the longer prefix
    other_user = _key("SYSTEM PROMPT xxxxxxxx user: bonjour.")
    assert policy.choose(backends, other_user) in (first, elsewhere)  # the shared part


def test_prefix_affinity_popular_prefix_spreads_within_the_bound() -> None:
    backends, policy = _backends(16), PrefixAffinity(load_factor=1.25)
    for i in range(400):  # one system prompt, many users, all in flight at once
        key = _key(f"the one popular system prompt ... user {i:06d}")
        b = policy.choose(backends, key)
        assert b.outstanding + 1 <= load_bound(i, 16, 1.25)
        b.outstanding += 1
        policy.on_routed(b, key)
    assert max(b.outstanding for b in backends) <= 32


def test_same_policy_stays_consistent_when_a_backend_is_ejected() -> None:
    backends = _backends(10)
    keys = [_key(f"{i:08d} conversation opening words") for i in range(500)]
    policy = PrefixAffinity()
    before = [policy.choose(backends, k).id for k in keys]
    survivors = [b for b in backends if b.id != "b3"]  # reuses the full set's ring
    after = [policy.choose(survivors, k).id for k in keys]
    fresh = [PrefixAffinity().choose(survivors, k).id for k in keys]  # builds its own
    assert after == fresh
    assert all(x == y for x, y in zip(before, after, strict=True) if x != "b3")
    assert policy.choose(backends, keys[0]).id == before[0]  # back: its keys return


def test_prefix_affinity_at_a_thousand_backends() -> None:
    backends, policy = _backends(1000), PrefixAffinity()
    picks = Counter(policy.choose(backends, _key(f"{i:08d} prompt text")).id for i in range(5000))
    assert len(picks) > 900  # keys spread over (nearly) all of them


def test_prefix_affinity_learned_map_is_bounded() -> None:
    backends = _backends(2)
    policy = PrefixAffinity(prefixes_per_backend=10, min_prefixes=0)
    for i in range(1000):
        key = _key(f"{i:08d} distinct prompt of several blocks of text")
        policy.on_routed(policy.choose(backends, key), key)
    assert len(policy._learned) <= 20


def test_conversation_affinity_follows_a_conversation_that_moved() -> None:
    backends, policy = _backends(4), ConversationAffinity(load_factor=1.25)
    key = _key("turn 1", "conv-42")
    home = policy.choose(backends, key)
    policy.on_routed(home, key)
    home.outstanding = 5  # full: the next turn goes elsewhere
    moved = policy.choose(backends, _key("turn 2", "conv-42"))
    assert moved is not home
    policy.on_routed(moved, _key("turn 2", "conv-42"))
    home.outstanding = 0
    assert policy.choose(backends, _key("turn 3", "conv-42")) is moved  # its newest KV


def test_conversation_affinity_without_an_id_routes_by_prefix() -> None:
    backends, policy = _backends(8), ConversationAffinity()
    key = _key("anonymous request with a long enough prompt")
    first = policy.choose(backends, key)
    policy.on_routed(first, key)
    assert all(policy.choose(backends, key) is first for _ in range(5))


def test_first_healthy_group_falls_back_in_order() -> None:
    primary, secondary = _backends(2), [BackendState("s0"), BackendState("s1")]
    down = {"b0", "b1", "s0"}
    assert first_healthy_group([primary, secondary], lambda b: b.id not in down) == [secondary[1]]
    assert first_healthy_group([primary, secondary], lambda b: True) == primary
    assert first_healthy_group([primary, secondary], lambda b: False) == []


def test_a_shared_prefix_is_not_worth_an_above_average_backend() -> None:
    backends, policy = _backends(8), PrefixAffinity(load_factor=2.0)
    alice = _key("common system prompt.. user alice")
    bob = _key("common system prompt.. user bob..")
    policy.on_routed(backends[0], alice)
    policy.on_routed(backends[1], bob)  # the system prompt's blocks: two holders
    for b in backends:
        b.outstanding = 2 if b in backends[:2] else 1  # mean 1.25; bound 3
    carol = _key("common system prompt.. user carol")
    assert policy.choose(backends, carol) not in backends[:2]  # the least loaded instead
    assert policy.choose(backends, alice) is backends[0]  # alice's own prompt sticks
    backends[0].outstanding = backends[1].outstanding = 1  # holders back at the mean
    assert policy.choose(backends, carol) in backends[:2]
