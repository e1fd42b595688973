"""BlockManager: allocation, prefix caching, LRU eviction (the randomized invariant check
is in test_blocks_simulation.py)."""

from __future__ import annotations

import pytest

from backend import blocks
from backend.blocks import BlockManager
from backend.sequence import Sequence

_next_id = iter(range(1_000_000))


def make_seq(token_ids: list[int]) -> Sequence:
    return Sequence(
        seq_id=next(_next_id), token_ids=list(token_ids), num_prompt_tokens=len(token_ids)
    )


def run_prefill(bm: BlockManager, seq: Sequence) -> None:
    """Allocate, compute the whole prompt and register its full blocks."""
    bm.allocate(seq)
    seq.num_computed_tokens = seq.num_tokens
    bm.mark_computed(seq)
    bm._check()


def test_allocate_free_round_trip() -> None:
    bm = BlockManager(num_blocks=10, block_size=4)
    seq = make_seq(list(range(10)))
    assert bm.can_allocate(seq)
    bm.allocate(seq)
    assert len(seq.block_table) == 3 and len(set(seq.block_table)) == 3
    assert all(0 <= b < 10 for b in seq.block_table)
    assert bm.num_free_blocks == 7 and bm.usage == pytest.approx(0.3)
    assert seq.num_computed_tokens == seq.num_cached_tokens == 0
    bm._check()
    bm.free(seq)
    assert seq.block_table == [] and bm.num_free_blocks == 10 and bm.usage == 0.0
    bm._check()


def test_prefix_hit_reuses_same_blocks_and_counts() -> None:
    bm = BlockManager(num_blocks=10, block_size=4)
    a = make_seq(list(range(10)))
    run_prefill(bm, a)
    b = make_seq(list(range(10)))
    assert bm.can_allocate(b)
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2]
    assert b.block_table[2] != a.block_table[2]
    assert b.num_cached_tokens == b.num_computed_tokens == 8
    assert (bm.prefix_cache_queries, bm.prefix_cache_hits) == (20, 8)
    assert bm.num_free_blocks == 10 - 4
    bm._check()
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == 10
    bm._check()


def test_exactly_full_blocks_leave_last_block_to_compute() -> None:
    bm = BlockManager(num_blocks=10, block_size=4)
    run_prefill(bm, make_seq(list(range(12))))
    b = make_seq(list(range(12)))
    bm.allocate(b)
    # 2 of 3 blocks, and the third's first 3 slots copied: the last token needs logits
    assert b.num_cached_tokens == 11
    bm._check()
    (copy,) = bm.take_copies()
    assert (copy.dst, copy.num_tokens) == (b.block_table[2], 3)
    bm._check()


@pytest.mark.parametrize("diverge_at", [0, 3, 4, 9, 11, 12, 15])
def test_divergence_reuses_only_earlier_blocks(diverge_at: int) -> None:
    bm = BlockManager(num_blocks=20, block_size=4)
    prompt = list(range(16))
    a = make_seq(prompt)
    run_prefill(bm, a)
    other = prompt.copy()
    other[diverge_at] = 999
    b = make_seq(other)
    bm.allocate(b)
    k = diverge_at // 4
    # full blocks shared; the slots before the divergence in its block copied
    assert b.num_cached_tokens == diverge_at
    assert b.block_table[:k] == a.block_table[:k]
    assert not set(b.block_table[k:]) & set(a.block_table)
    bm._check()
    copies = bm.take_copies()
    if diverge_at % 4:
        assert copies == [blocks.KvCopy(a.block_table[k], b.block_table[k], diverge_at % 4)]
    else:
        assert copies == []
    bm._check()


def test_constant_hash_never_serves_wrong_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocks, "_block_hash", lambda prev, tokens: 7)
    bm = BlockManager(num_blocks=20, block_size=4)
    a = make_seq(list(range(9)))
    run_prefill(bm, a)  # block 0 is registered; block 1 collides and stays private
    assert bm._hash_to_block == {7: a.block_table[0]}
    b = make_seq(list(range(100, 109)))
    bm.allocate(b)
    assert b.num_cached_tokens == 0 and not set(b.block_table) & set(a.block_table)
    c = make_seq(list(range(9)))
    bm.allocate(c)
    assert c.num_cached_tokens == 4 and c.block_table[0] == a.block_table[0]
    bm._check()


def test_same_block_after_different_prefix_is_not_served(monkeypatch: pytest.MonkeyPatch) -> None:
    # A hash that ignores the prefix: blocks with equal tokens collide across prefixes.
    monkeypatch.setattr(blocks, "_block_hash", lambda prev, tokens: hash(tokens))
    bm = BlockManager(num_blocks=20, block_size=2)
    a = make_seq([1, 1, 5, 5, 0])  # registers [1,1] and then [5,5] after [1,1]
    c = make_seq([2, 2, 5, 5, 7, 7, 0])  # registers [2,2]; [5,5] collides: chain ends
    run_prefill(bm, a)
    run_prefill(bm, c)
    d = make_seq([2, 2, 5, 5, 0])
    bm.allocate(d)
    # Block 1's token ids match a's block 1, but its KV was computed after [1,1].
    assert d.block_table[0] == c.block_table[0]
    assert d.num_cached_tokens == 2 and d.block_table[1] not in a.block_table
    e = make_seq([1, 1, 5, 5, 7, 7, 0])  # c's [7,7] was computed after [2,2], not [1,1]
    bm.allocate(e)
    assert e.num_cached_tokens == 4 and e.block_table[2] not in c.block_table
    bm._check()


def test_chain_stops_registering_after_a_collision(monkeypatch: pytest.MonkeyPatch) -> None:
    def hash_fn(prev: int, tokens: tuple[int, ...]) -> int:
        return 0 if tokens in {(3, 3), (4, 4)} else hash((prev, tokens))

    monkeypatch.setattr(blocks, "_block_hash", hash_fn)
    bm = BlockManager(num_blocks=20, block_size=2)
    a = make_seq([3, 3, 5, 5, 0])
    b = make_seq([4, 4, 6, 6, 0])  # block 0 collides with a's, so block 1 must stay private
    run_prefill(bm, a)
    run_prefill(bm, b)
    assert set(bm._hash_to_block.values()) == set(a.block_table[:2])
    c = make_seq([3, 3, 6, 6, 0])  # same chained hash as b's block 1, other prefix
    bm.allocate(c)
    assert c.num_cached_tokens == 2 and c.block_table[1] not in b.block_table
    bm._check()


def test_freed_blocks_are_evictable_and_still_hit() -> None:
    bm = BlockManager(num_blocks=6, block_size=4)
    a = make_seq(list(range(10)))
    run_prefill(bm, a)
    table = a.block_table.copy()
    bm.free(a)
    assert bm.num_free_blocks == 6 and bm.usage == 0.0
    assert list(bm._evictable) == [table[1], table[0]]  # freed in reverse order
    bm._check()
    b = make_seq(list(range(10)))
    bm.allocate(b)
    assert b.block_table[:2] == table[:2] and b.num_cached_tokens == 8
    assert not bm._evictable and bm.num_free_blocks == 3
    bm._check()


def test_lru_eviction_order() -> None:
    bm = BlockManager(num_blocks=6, block_size=2)
    a = make_seq([1, 2, 3, 4, 5, 6])
    b = make_seq([7, 8, 9, 10, 11, 12])
    run_prefill(bm, a)
    run_prefill(bm, b)
    a_table, b_table = a.block_table.copy(), b.block_table.copy()
    bm.free(a)
    bm.free(b)  # LRU pool: a2 a1 a0 b2 b1 b0
    assert not bm._free and bm.num_free_blocks == 6
    c = make_seq([20, 21, 22, 23])  # two fresh blocks: a's tail goes first
    bm.allocate(c)
    assert c.block_table == [a_table[2], a_table[1]]
    bm._check()
    again_a = make_seq([1, 2, 3, 4, 5, 6])
    bm.allocate(again_a)  # a0 survived; b (freed last) is untouched so far
    assert again_a.num_cached_tokens == 2 and again_a.block_table[0] == a_table[0]
    assert again_a.block_table[1:] == [b_table[2], b_table[1]]
    bm._check()
    bm.free(again_a)
    bm.free(c)
    again_b = make_seq([7, 8, 9, 10, 11, 12, 13])
    bm.allocate(again_b)
    assert again_b.num_cached_tokens == 2 and again_b.block_table[0] == b_table[0]
    bm._check()


def test_can_allocate_exact_boundary_without_hits() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    assert bm.can_allocate(make_seq(list(range(16))))
    too_big = make_seq(list(range(17)))
    assert not bm.can_allocate(too_big)
    with pytest.raises(RuntimeError, match="cannot allocate"):
        bm.allocate(too_big)
    assert too_big.block_table == [] and bm.num_free_blocks == 4
    bm._check()


@pytest.mark.parametrize(("filler_blocks", "fits"), [(1, True), (2, False)])
def test_can_allocate_counts_evictable_hits(filler_blocks: int, fits: bool) -> None:
    bm = BlockManager(num_blocks=6, block_size=4)
    a = make_seq(list(range(9)))
    run_prefill(bm, a)
    bm.free(a)  # 2 evictable (registered) + 4 free
    bm.allocate(make_seq([500 + i for i in range(4 * filler_blocks)]))
    b = make_seq([*range(8), *range(100, 109)])  # 5 blocks, 2 of them evictable hits
    # Reusing evictable blocks takes them out of the pool: the cost is 3 + 2 = 5.
    assert bm.num_free_blocks == 6 - filler_blocks
    counters = (bm.prefix_cache_queries, bm.prefix_cache_hits)
    assert bm.can_allocate(b) is fits
    assert (bm.prefix_cache_queries, bm.prefix_cache_hits) == counters
    if fits:
        bm.allocate(b)
        assert b.num_cached_tokens == 8 and bm.num_free_blocks == 0
    else:
        with pytest.raises(RuntimeError):
            bm.allocate(b)
        assert b.block_table == [] and bm.num_free_blocks == 6 - filler_blocks
        assert (bm.prefix_cache_queries, bm.prefix_cache_hits) == counters
    bm._check()


def test_append_slots_crosses_block_boundaries() -> None:
    bm = BlockManager(num_blocks=5, block_size=4)
    seq = make_seq([1, 2, 3, 4])
    bm.allocate(seq)
    assert len(seq.block_table) == 1
    assert bm.can_append(seq)
    bm.append_slots(seq)  # nothing to add
    assert len(seq.block_table) == 1
    seq.append_token(5)
    bm.append_slots(seq)
    assert len(seq.block_table) == 2
    for t in (6, 7, 8):
        seq.append_token(t)
        assert bm.can_append(seq)
        bm.append_slots(seq)
    assert len(seq.block_table) == 2
    seq.token_ids.extend(range(9, 14))  # several tokens at once (13 tokens -> 4 blocks)
    bm.append_slots(seq)
    assert len(seq.block_table) == 4 and bm.num_free_blocks == 1
    bm._check()
    seq.token_ids.extend(range(14, 22))  # 21 tokens -> 6 blocks; only 5 exist
    assert not bm.can_append(seq)
    with pytest.raises(RuntimeError, match="cannot append"):
        bm.append_slots(seq)
    assert len(seq.block_table) == 4
    bm._check()


def test_decode_tokens_become_cacheable() -> None:
    bm = BlockManager(num_blocks=10, block_size=4)
    a = make_seq([1, 2, 3, 4, 5, 6])
    run_prefill(bm, a)
    for t in (7, 8, 9):
        a.append_token(t)
        bm.append_slots(a)
        a.num_computed_tokens = a.num_tokens - 1  # the newest token is fed next step
        bm.mark_computed(a)
    assert len(bm._hash_to_block) == 2  # block 1 ([5,6,7,8]) is full and computed
    b = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 42])
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2] and b.num_cached_tokens == 8
    bm._check()


def test_mark_computed_partial_idempotent_and_duplicates() -> None:
    bm = BlockManager(num_blocks=10, block_size=4)
    a = make_seq(list(range(10)))
    b = make_seq(list(range(10)))
    bm.allocate(a)
    bm.allocate(b)  # nothing cached yet: b gets its own blocks
    a.num_computed_tokens = 5  # chunked prefill: only block 0 is full and computed
    bm.mark_computed(a)
    bm.mark_computed(a)
    assert bm._hash_to_block and set(bm._hash_to_block.values()) == {a.block_table[0]}
    a.num_computed_tokens = b.num_computed_tokens = 10
    bm.mark_computed(a)
    bm.mark_computed(b)  # identical blocks: a's mapping stays, b's are private duplicates
    assert set(bm._hash_to_block.values()) == set(a.block_table[:2])
    bm._check()
    bm.free(b)
    assert not bm._evictable  # b's duplicates were never registered: back to the free list
    c = make_seq(list(range(10)))
    bm.allocate(c)
    assert c.block_table[:2] == a.block_table[:2]
    bm._check()


def test_prefix_caching_disabled() -> None:
    bm = BlockManager(num_blocks=10, block_size=4, prefix_caching=False)
    a = make_seq(list(range(10)))
    run_prefill(bm, a)
    assert not bm._hash_to_block
    bm.free(a)
    assert not bm._evictable and bm.num_free_blocks == 10
    b = make_seq(list(range(10)))
    bm.allocate(b)
    assert b.num_cached_tokens == 0
    assert (bm.prefix_cache_queries, bm.prefix_cache_hits) == (0, 0)
    bm._check()


def test_reset_prefix_cache_forgets_only_unused_blocks() -> None:
    bm = BlockManager(num_blocks=10, block_size=4)
    a = make_seq(list(range(10)))
    running = make_seq(list(range(50, 60)))
    run_prefill(bm, a)
    run_prefill(bm, running)
    bm.free(a)
    bm.reset_prefix_cache()
    assert not bm._evictable and bm.num_free_blocks == 7
    bm._check()
    b = make_seq(list(range(10)))
    bm.allocate(b)
    assert b.num_cached_tokens == 0
    d = make_seq(list(range(50, 60)))
    bm.allocate(d)  # blocks still in use keep their registration
    assert d.num_cached_tokens == 8
    bm._check()
