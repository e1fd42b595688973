"""Continuous-batching scheduler over the real block manager (pure Python, no model)."""

from __future__ import annotations

import random

import pytest

from backend.blocks import BlockManager
from backend.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from backend.sequence import Sequence, SequenceStatus

BS = 4  # block size


def make(
    num_blocks: int = 64, max_seqs: int = 8, budget: int = 32, cache: bool = True
) -> Scheduler:
    return Scheduler(SchedulerConfig(max_seqs, budget), BlockManager(num_blocks, BS, cache))


_ids = iter(range(10**9))


def seq(prompt_len: int, first_token: int = 1) -> Sequence:
    return Sequence(next(_ids), list(range(first_token, first_token + prompt_len)), prompt_len)


def step(s: Scheduler, token: int = 7) -> ScheduledBatch:
    """One engine step without a model: every sequence that reaches its end gets a token."""
    batch = s.schedule()
    s.after_step(batch)
    for sq in batch.seqs:
        if sq.num_computed_tokens == sq.num_tokens:
            sq.append_token(token)
    return batch


def plan(batch: ScheduledBatch) -> list[tuple[int, int]]:
    return [(sq.seq_id, n) for sq, n in zip(batch.seqs, batch.num_new_tokens, strict=True)]


def test_decodes_go_first_and_prefill_is_chunked_by_the_budget() -> None:
    s = make(budget=16)
    a = seq(6)
    s.add(a)
    assert plan(step(s)) == [(a.seq_id, 6)]  # whole prompt fits
    b = seq(40, first_token=100)
    s.add(b)
    first = step(s)
    assert plan(first) == [(a.seq_id, 1), (b.seq_id, 15)]  # decode first, then a chunk
    assert not first.sampling[1]  # a prompt chunk that does not finish the prompt samples nothing
    assert plan(step(s)) == [(a.seq_id, 1), (b.seq_id, 15)]
    last = step(s)
    assert plan(last) == [(a.seq_id, 1), (b.seq_id, 10)]
    assert last.sampling[1] and b.num_output_tokens == 1
    assert plan(step(s)) == [(a.seq_id, 1), (b.seq_id, 1)]


def test_max_num_seqs_and_fcfs_admission() -> None:
    s = make(max_seqs=2, budget=64)
    seqs = [seq(3) for _ in range(3)]
    for q in seqs:
        s.add(q)
    assert [sq for sq in step(s).seqs] == seqs[:2]
    assert s.waiting[0] is seqs[2] and seqs[2].status is SequenceStatus.WAITING
    s.finish(seqs[0])
    assert [sq for sq in step(s).seqs] == [seqs[1], seqs[2]]


def test_a_prompt_that_does_not_fit_blocks_the_ones_behind_it() -> None:
    s = make(num_blocks=4, budget=64)
    big, small = seq(20), seq(2)  # 20 tokens need 5 blocks of 4: never fits while small waits
    s.add(big)
    s.add(small)
    assert step(s).seqs == []  # no overtaking: first come, first served
    assert list(s.waiting) == [big, small]


def test_preemption_frees_the_newest_and_recomputes_it_later() -> None:
    s = make(num_blocks=4, budget=64, cache=False)
    old, new = seq(4), seq(4, first_token=50)  # one block each at first
    s.add(old)
    s.add(new)
    preempted: list[Sequence] = []
    for _ in range(6):  # both grow to 2 blocks (all 4), then old needs a third
        batch = step(s)
        preempted += batch.preempted
        s.blocks._check()
    assert preempted == [new]  # the newest gives way, the oldest keeps running
    assert old.status is SequenceStatus.RUNNING and old.num_tokens > 2 * BS
    assert new.status is SequenceStatus.WAITING and new.num_computed_tokens == 0
    assert new.block_table == [] and s.waiting[0] is new and s.num_preemptions == 1
    kept = list(new.token_ids)
    s.finish(old)
    batch = step(s)
    assert plan(batch) == [(new.seq_id, len(kept))]  # recomputed: prompt and output so far
    assert new.token_ids[: len(kept)] == kept and new.num_tokens == len(kept) + 1


def test_a_sequence_alone_preempts_itself_when_the_pool_is_exhausted() -> None:
    s = make(num_blocks=2, budget=64, cache=False)
    a = seq(7)
    s.add(a)
    step(s)  # prefill 7 tokens, sample the 8th
    assert plan(step(s)) == [(a.seq_id, 1)]  # 8th token still fits in 2 blocks
    batch = step(s)  # the 9th needs a third block: a gives way, nothing else runs
    assert batch.seqs == [] and batch.preempted == [a]


def test_prefix_cache_hit_skips_the_cached_prompt_tokens() -> None:
    s = make(budget=64)
    a = seq(13)
    s.add(a)
    step(s)
    s.finish(a)
    b = seq(13)  # same prompt
    s.add(b)
    batch = step(s)
    assert plan(batch) == [(b.seq_id, 1)]  # 12 cached tokens (3 blocks), the last one computed
    assert b.num_cached_tokens == 12
    assert s.blocks.prefix_cache_hits == 12


def test_same_inputs_give_the_same_schedule() -> None:
    def run() -> list[list[tuple[int, int]]]:
        global _ids
        _ids = iter(range(10**9))
        rng = random.Random(5)
        s = make(num_blocks=24, max_seqs=4, budget=24)
        log: list[list[tuple[int, int]]] = []
        live: list[Sequence] = []
        for t in range(200):
            if t % 3 == 0:
                q = seq(rng.randint(1, 30), first_token=rng.randint(1, 5))
                live.append(q)
                s.add(q)
            log.append(plan(step(s, token=rng.randint(0, 9))))
            for q in [q for q in live if q.num_output_tokens >= 6]:
                s.finish(q)
                live.remove(q)
            s.blocks._check()
        return log

    assert run() == run()


@pytest.mark.parametrize(
    "bad", [dict(max_num_seqs=0), dict(max_num_seqs=8, max_num_batched_tokens=4)]
)
def test_config_validation(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        SchedulerConfig(**bad)


def test_a_second_choice_waits_for_the_first_to_compute_the_shared_prompt() -> None:
    s = make(budget=16)
    first = seq(40)
    second = Sequence(next(_ids), list(first.token_ids), 40, after=first)
    s.add(first)
    s.add(second)
    assert plan(step(s)) == [(first.seq_id, 16)]  # second held back: prompt not computed yet
    assert plan(step(s)) == [(first.seq_id, 16)]
    assert plan(step(s)) == [(first.seq_id, 8)]  # first's prompt is now complete
    # second is admitted: 9 of its 10 blocks come from the prefix cache, and the first
    # 3 slots of the last are copied from first's (the last token needs its logits)
    batch = step(s)
    assert plan(batch) == [(first.seq_id, 1), (second.seq_id, 1)]
    assert second.num_cached_tokens == 39
    assert [(c.src, c.dst, c.num_tokens) for c in batch.kv_copies] == [
        (first.block_table[9], second.block_table[9], 3)
    ]
