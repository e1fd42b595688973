"""BlockManager under a random workload: admissions (with shared prefixes), chunked
compute, decode growth, preemption and frees, with weak hash functions that collide on
purpose. After every action its invariants hold, and every prefix-cache hit serves KV
computed from exactly the same tokens (a shadow copy records what each slot holds),
slots copied from a block that matches part of the way included."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from backend import blocks
from backend.blocks import BlockManager
from backend.sequence import Sequence
from tests.backend.test_blocks import make_seq

BLOCK_SIZE, NUM_BLOCKS = 4, 40


class Simulation:
    def __init__(self, caching: bool) -> None:
        self.rng = random.Random(1234)
        self.bm = BlockManager(NUM_BLOCKS, BLOCK_SIZE, prefix_caching=caching)
        rng = self.rng
        self.bases = [[rng.randrange(3) for _ in range(rng.randrange(4, 24))] for _ in range(4)]
        # Shadow KV: what each slot was computed from (the token prefix ending there).
        self.kv: dict[int, list[tuple[int, ...] | None]] = {
            b: [None] * BLOCK_SIZE for b in range(NUM_BLOCKS)
        }
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []

    def admit(self) -> None:
        rng, bm, bs = self.rng, self.bm, BLOCK_SIZE
        if self.waiting and rng.random() < 0.5:
            seq = self.waiting.pop(rng.randrange(len(self.waiting)))
        else:
            base = rng.choice(self.bases)
            tail = [rng.randrange(3) for _ in range(rng.randrange(0, 10))]
            seq = make_seq(base[: rng.randrange(len(base) + 1)] + tail or [0])
        if not bm.can_allocate(seq):
            with pytest.raises(RuntimeError):
                bm.allocate(seq)
            self.waiting.append(seq)
            return
        bm.allocate(seq)
        bm._check()  # a partial match's source is held until its slots are copied
        for c in bm.take_copies():  # what the runner does before the step
            assert bm._blocks[c.dst].ref_count == 1 and c.dst in seq.block_table
            self.kv[c.dst][: c.num_tokens] = self.kv[c.src][: c.num_tokens]
        assert len(seq.block_table) == -(-seq.num_tokens // bs)
        assert seq.num_cached_tokens < seq.num_tokens
        for p in range(seq.num_cached_tokens):  # every hit slot holds this exact prefix
            assert self.kv[seq.block_table[p // bs]][p % bs] == tuple(seq.token_ids[: p + 1])
        self.running.append(seq)

    def step(self) -> None:
        rng, bm, bs = self.rng, self.bm, BLOCK_SIZE
        seq = rng.choice(self.running)
        if seq.num_uncomputed_tokens == 0:
            seq.token_ids.extend(rng.randrange(3) for _ in range(rng.randrange(1, 4)))
            if not bm.can_append(seq):
                with pytest.raises(RuntimeError):
                    bm.append_slots(seq)
                self.running.remove(seq)
                bm.free(seq)  # preempt by recompute
                self.waiting.append(seq)
                return
            bm.append_slots(seq)
        start = seq.num_computed_tokens
        end = start + rng.randrange(1, seq.num_uncomputed_tokens + 1)
        for p in range(start, end):  # the forward pass writes only private blocks
            block = bm._blocks[seq.block_table[p // bs]]
            assert block.ref_count == 1 and block.hash is None
            self.kv[seq.block_table[p // bs]][p % bs] = tuple(seq.token_ids[: p + 1])
        seq.num_computed_tokens = end
        bm.mark_computed(seq)

    def finish(self) -> None:
        seq = self.running.pop(self.rng.randrange(len(self.running)))
        self.bm.free(seq)
        assert seq.block_table == [] and seq.num_computed_tokens == 0
        if self.rng.random() < 0.3:
            self.waiting.append(seq)

    def check(self) -> None:
        bm = self.bm
        bm._check()
        in_use = sum(1 for b in bm._blocks if b.ref_count > 0)
        assert bm.usage == pytest.approx(in_use / NUM_BLOCKS)
        assert bm.num_free_blocks == NUM_BLOCKS - in_use


def _weak_hash(prev: int, tokens: tuple[int, ...]) -> int:
    return (prev * 31 + hash(tokens)) % 7


def _prefix_free_hash(prev: int, tokens: tuple[int, ...]) -> int:
    return hash(tokens) % 5


@pytest.mark.parametrize(
    ("hash_fn", "caching"),
    [(None, True), (_weak_hash, True), (_prefix_free_hash, True), (None, False)],
    ids=["default", "weak-hash", "prefix-free-hash", "no-caching"],
)
def test_randomized_simulation(
    monkeypatch: pytest.MonkeyPatch,
    hash_fn: Callable[[int, tuple[int, ...]], int] | None,
    caching: bool,
) -> None:
    if hash_fn is not None:
        monkeypatch.setattr(blocks, "_block_hash", hash_fn)
    sim = Simulation(caching)
    for i in range(2000):
        r = sim.rng.random()
        if not sim.running or r < 0.3:
            sim.admit()
        elif r < 0.85:
            sim.step()
        else:
            sim.finish()
        if i % 500 == 499 and sim.rng.random() < 0.5:
            sim.bm.reset_prefix_cache()
        sim.check()

    bm = sim.bm
    if caching:
        assert bm.prefix_cache_hits > 0
        assert bm.prefix_cache_queries > bm.prefix_cache_hits
    else:
        assert bm.prefix_cache_queries == bm.prefix_cache_hits == 0
    for seq in sim.running:
        bm.free(seq)
    bm._check()
    assert bm.num_free_blocks == NUM_BLOCKS
