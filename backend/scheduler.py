"""Continuous batching: which sequences run in the next step, and how many tokens each.

Every step has a token budget. Running sequences go first, in admission order: a
decode costs one token, a prompt still being prefilled costs up to the rest of the
budget (chunked prefill), so long prompts never stall the decodes around them. Waiting
sequences are then admitted first come, first served while budget, sequence slots and
KV blocks last. When a growing sequence needs a block and none is free, the most
recently admitted running sequence is preempted: its blocks are freed and it goes back
to the front of the queue, to be recomputed later (cheaply, when its blocks are still
in the prefix cache). Plain Python, no torch: the same inputs give the same schedule.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from backend.blocks import BlockManager, KvCopy
from backend.sequence import Sequence, SequenceStatus


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 64  # sequences in one step
    max_num_batched_tokens: int = 1024  # tokens in one step (the prefill chunk bound)

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be at least 1")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be at least max_num_seqs")


@dataclass(slots=True)
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)  # tokens fed per sequence
    # Whether each sequence reaches its last token this step, and so yields a next one.
    sampling: list[bool] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    # Speculative guesses thrown away after verification, by seq_id (set by the engine).
    num_rejected: dict[int, int] = field(default_factory=dict)
    # Cached slots the runner copies into admitted sequences' blocks before the step.
    kv_copies: list[KvCopy] = field(default_factory=list)

    def add(self, seq: Sequence, num_tokens: int) -> None:
        """num_tokens: of seq's uncomputed tokens, then of its guesses (seq.draft)."""
        self.seqs.append(seq)
        self.num_new_tokens.append(num_tokens)
        self.sampling.append(num_tokens >= seq.num_uncomputed_tokens)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.blocks = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order: earlier = higher priority
        self._next_arrival = 0
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.arrival = self._next_arrival
        self._next_arrival += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        # running: decodes and prompts part-way through a chunked prefill
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.draft:  # guesses only where the budget and free blocks allow
                del seq.draft[max(0, budget - seq.num_uncomputed_tokens) :]
                if seq.draft and not self.blocks.can_append(seq, len(seq.draft)):
                    seq.draft.clear()  # never preempt anyone for a guess
            if not self._make_room_for(seq, batch):
                break  # seq itself was preempted; everything after it already was
            n = min(seq.num_uncomputed_tokens + len(seq.draft), budget)
            batch.add(seq, n)
            budget -= n
            i += 1
        # waiting: admit in order; stop at the first that does not fit (no overtaking),
        # and admit none in a step that had to preempt (memory is already short).
        while (
            self.waiting
            and budget > 0
            and not batch.preempted
            and len(self.running) < self.config.max_num_seqs
        ):
            seq = self.waiting[0]
            if _sibling_still_prefilling(seq) or not self.blocks.can_allocate(seq):
                break
            self.waiting.popleft()
            self.blocks.allocate(seq)  # counts prefix-cache hits as computed
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            n = min(seq.num_uncomputed_tokens, budget)
            batch.add(seq, n)
            budget -= n
        batch.kv_copies = self.blocks.take_copies()
        return batch

    def _make_room_for(self, seq: Sequence, batch: ScheduledBatch) -> bool:
        """Ensures seq has KV slots for all its tokens, preempting from the back if needed."""
        while not self.blocks.can_append(seq):
            victim = self.running[-1]
            self._preempt(victim, batch)
            if victim is seq:
                return False
        self.blocks.append_slots(seq, len(seq.draft))
        return True

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)  # recompute later: KV dropped, tokens kept
        seq.draft.clear()
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        batch.preempted.append(seq)
        self.num_preemptions += 1

    def after_step(self, batch: ScheduledBatch) -> None:
        """Records that the step's tokens now have KV (call before appending new tokens);
        rejected guesses do not count."""
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            seq.num_computed_tokens += n - batch.num_rejected.get(seq.seq_id, 0)
            self.blocks.mark_computed(seq)

    def finish(self, seq: Sequence) -> None:
        """Removes a finished sequence and frees its blocks (its full blocks stay cached)."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED


def _sibling_still_prefilling(seq: Sequence) -> bool:
    """Whether seq waits for the choice it shares a prompt with to compute that prompt."""
    other = seq.after
    return other is not None and other.status is not SequenceStatus.FINISHED and other.is_prefilling
