"""Paged KV block manager with prefix caching (in the style of nano-vllm's block_manager.py).

Pure bookkeeping: block ids, reference counts and a prefix-cache index. The KV tensors
live elsewhere; this module never touches torch and does no I/O.

A full, computed block is registered under a chained hash of (previous block's hash, its
token ids), so a later prompt with the same prefix reuses the block instead of recomputing
it. Hashes only index the cache: a hit also needs equal token ids and the same parent
registration (`_Block.parent`), so no hash collision can ever serve another prefix's KV.

A prompt that shares a cached prefix ending mid-block (one system prompt, different
questions; the same prompt again) also reuses the matching leading slots of the block
where it diverges: they are copied into the sequence's own fresh block (`KvCopy`, done
by the runner before the step's forward pass), as the cached block stays another's.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass

from backend.sequence import Sequence

_ROOT = 0  # parent hash and parent serial of a sequence's first block


def _block_hash(prev_hash: int, token_ids: tuple[int, ...]) -> int:
    """Chained hash of one full block (module-level so tests can force collisions)."""
    return hash((prev_hash, token_ids))


@dataclass(slots=True)
class _Block:
    ref_count: int = 0
    hash: int | None = None  # set while registered in the prefix cache
    token_ids: tuple[int, ...] = ()  # while registered: the tokens, checked on every hit
    parent: int = _ROOT  # while registered: serial of the previous block's registration
    serial: int = _ROOT  # while registered: unique per registration, never reused


@dataclass(frozen=True, slots=True)
class KvCopy:
    """Copy the K/V of the first `num_tokens` slots of block `src` into block `dst`."""

    src: int
    dst: int
    num_tokens: int


@dataclass(frozen=True, slots=True)
class _PrefixMatch:
    hits: list[int]  # cached full blocks, in order
    last_hash: int  # the chain state after them
    parent: int
    partial: tuple[int, int] | None = None  # (cached block, leading slots that match)

    @property
    def held(self) -> list[int]:
        """The cached blocks admitting the sequence takes a reference on: the hits, and a
        partial match's source until its slots are copied."""
        return self.hits + ([self.partial[0]] if self.partial else [])


@dataclass(slots=True)
class _SeqState:
    seq: Sequence
    num_marked: int  # leading blocks that mark_computed (or a cache hit) has dealt with
    last_hash: int  # chained hash of block num_marked - 1
    # Serial of the registration holding the same prefix as block num_marked - 1; None once
    # a collision broke the chain (later blocks could never be looked up, so skip them).
    parent: int | None


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self._blocks = [_Block() for _ in range(num_blocks)]
        # Unregistered, unused blocks, a min-heap: the lowest id goes first, so the pages of
        # a lazily allocated KV cache that ever get touched stay as few as the load needs.
        self._free: list[int] = list(range(num_blocks))
        # Registered but unused blocks, least recently freed first: still hittable, and
        # recycled (oldest first) only when the free list is empty.
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._hash_to_block: dict[int, int] = {}
        self._children: dict[int, list[int]] = {}  # parent serial -> its registered blocks
        # Partial-block reuse, for the runner to do before the next forward pass; each
        # source stays pinned (a reference) until take_copies() hands it over.
        self._copies: list[KvCopy] = []
        self._seqs: dict[int, _SeqState] = {}  # by seq_id, sequences holding blocks
        self._next_serial = _ROOT + 1

    @property
    def num_free_blocks(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def _blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _block_tokens(self, seq: Sequence, i: int) -> tuple[int, ...]:
        return tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])

    def _match_prefix(self, seq: Sequence) -> _PrefixMatch:
        """Cached blocks reusable for seq's prompt, and the chain state after them. Pure."""
        hits: list[int] = []
        h, parent = _ROOT, _ROOT
        if not self.prefix_caching or seq.prompt_logprobs is not None:
            return _PrefixMatch(hits, h, parent)
        # The last token is always recomputed: the model must produce its logits.
        for i in range((seq.num_tokens - 1) // self.block_size):
            tokens = self._block_tokens(seq, i)
            next_h = _block_hash(h, tokens)
            bid = self._hash_to_block.get(next_h)
            if bid is None:
                break
            block = self._blocks[bid]
            if block.token_ids != tokens or block.parent != parent:
                break  # hash collision: different content or different prefix
            hits.append(bid)
            h, parent = next_h, block.serial
        return _PrefixMatch(hits, h, parent, self._partial_match(seq, len(hits), parent))

    def _partial_match(self, seq: Sequence, index: int, parent: int) -> tuple[int, int] | None:
        """The cached block after `parent` whose leading tokens match most of seq's block
        `index` (its last token excluded), and how many match; None if none does."""
        start = index * self.block_size
        tail = seq.token_ids[start : min(start + self.block_size, seq.num_tokens - 1)]
        best: tuple[int, int] | None = None
        for bid in self._children.get(parent, ()):
            cached, n = self._blocks[bid].token_ids, 0
            while n < len(tail) and cached[n] == tail[n]:
                n += 1
            if n and (best is None or n > best[1]):
                best = (bid, n)
        return best

    def _cost(self, seq: Sequence, match: _PrefixMatch) -> int:
        """Allocatable blocks that admitting seq consumes, evictable hits included (and a
        partial match's source, held until its slots are copied)."""
        reused_evictable = sum(1 for bid in match.held if self._blocks[bid].ref_count == 0)
        return self._blocks_for(seq.num_tokens) - len(match.hits) + reused_evictable

    def can_allocate(self, seq: Sequence) -> bool:
        return self._cost(seq, self._match_prefix(seq)) <= self.num_free_blocks

    def allocate(self, seq: Sequence) -> None:
        if seq.block_table:
            raise ValueError(f"sequence {seq.seq_id} already holds blocks")
        match = self._match_prefix(seq)
        hits = match.hits
        need = self._cost(seq, match)
        if need > self.num_free_blocks:
            raise RuntimeError(
                f"cannot allocate sequence {seq.seq_id}: needs {need} blocks, "
                f"{self.num_free_blocks} free (call can_allocate first)"
            )
        for bid in match.held:
            block = self._blocks[bid]
            if block.ref_count == 0:
                del self._evictable[bid]
            block.ref_count += 1
        # Take new blocks only after the hits left the evictable pool, so none is recycled.
        fresh = [self._take_block() for _ in range(self._blocks_for(seq.num_tokens) - len(hits))]
        seq.block_table = hits + fresh
        copied = 0
        if match.partial:
            src, copied = match.partial
            self._copies.append(KvCopy(src, fresh[0], copied))
        seq.num_computed_tokens = seq.num_cached_tokens = len(hits) * self.block_size + copied
        if self.prefix_caching and seq.prompt_logprobs is None:
            self.prefix_cache_queries += seq.num_tokens
            self.prefix_cache_hits += seq.num_cached_tokens
        self._seqs[seq.seq_id] = _SeqState(seq, len(hits), match.last_hash, match.parent)

    def take_copies(self) -> list[KvCopy]:
        """The slot copies that allocations since the last call need, for the runner to do
        before the next forward pass. Their sources are released here: call after the
        step is scheduled, when nothing is allocated until the copies are done."""
        copies, self._copies = self._copies, []
        for c in copies:
            self._release(c.src)
        return copies

    def _take_block(self) -> int:
        """A fresh block: from the free list, else by evicting the LRU cached block."""
        if self._free:
            bid = heapq.heappop(self._free)
        elif self._evictable:
            bid, _ = self._evictable.popitem(last=False)
            self._unregister(bid)
        else:
            raise RuntimeError("out of KV cache blocks (call can_allocate/can_append first)")
        self._blocks[bid].ref_count = 1
        return bid

    def _unregister(self, bid: int) -> None:
        block = self._blocks[bid]
        assert block.hash is not None
        del self._hash_to_block[block.hash]
        siblings = self._children[block.parent]
        siblings.remove(bid)
        if not siblings:
            del self._children[block.parent]
        block.hash, block.token_ids, block.parent, block.serial = None, (), _ROOT, _ROOT

    def free(self, seq: Sequence) -> None:
        # Reverse order: tails land in the LRU pool first and so are evicted before the
        # heads, which are the blocks most likely to be shared by later prompts.
        for bid in reversed(seq.block_table):
            self._release(bid)
        seq.block_table = []
        seq.num_computed_tokens = seq.num_cached_tokens = 0
        self._seqs.pop(seq.seq_id, None)

    def _release(self, bid: int) -> None:
        block = self._blocks[bid]
        block.ref_count -= 1
        if block.ref_count == 0:
            if block.hash is not None:
                self._evictable[bid] = None
            else:
                heapq.heappush(self._free, bid)

    def can_append(self, seq: Sequence, lookahead: int = 0) -> bool:
        need = self._blocks_for(seq.num_tokens + lookahead) - len(seq.block_table)
        return need <= self.num_free_blocks

    def append_slots(self, seq: Sequence, lookahead: int = 0) -> None:
        """Grow seq's block table to cover all its tokens (one or several new ones), plus
        `lookahead` slots for speculative guesses."""
        need = self._blocks_for(seq.num_tokens + lookahead) - len(seq.block_table)
        if need > self.num_free_blocks:
            raise RuntimeError(
                f"cannot append to sequence {seq.seq_id}: needs {need} blocks, "
                f"{self.num_free_blocks} free (call can_append first)"
            )
        for _ in range(need):
            seq.block_table.append(self._take_block())

    def trim(self, seq: Sequence) -> None:
        """Frees blocks past seq's tokens: the slots of rejected speculative guesses.

        Such blocks were taken for this sequence alone and never registered (only full
        blocks of computed, kept tokens are), so they go straight back to the free list.
        """
        keep = self._blocks_for(seq.num_tokens)
        while len(seq.block_table) > keep:
            bid = seq.block_table.pop()
            block = self._blocks[bid]
            assert block.ref_count == 1 and block.hash is None, "a lookahead block is private"
            block.ref_count = 0
            heapq.heappush(self._free, bid)

    def mark_computed(self, seq: Sequence) -> None:
        """Register seq's blocks that became full and computed since the last call."""
        state = self._seqs.get(seq.seq_id)
        if not self.prefix_caching or state is None:
            return
        num_full = min(seq.num_computed_tokens, seq.num_tokens) // self.block_size
        num_full = min(num_full, len(seq.block_table))
        for i in range(state.num_marked, num_full):
            if state.parent is None:
                break
            tokens = self._block_tokens(seq, i)
            h = _block_hash(state.last_hash, tokens)
            existing = self._hash_to_block.get(h)
            if existing is None:
                bid = seq.block_table[i]
                block = self._blocks[bid]
                assert block.hash is None, "an unmarked block of a sequence is private"
                block.hash, block.token_ids, block.parent = h, tokens, state.parent
                block.serial, self._next_serial = self._next_serial, self._next_serial + 1
                self._hash_to_block[h] = bid
                self._children.setdefault(block.parent, []).append(bid)
                state.parent = block.serial
            else:
                # An identical block registered by another sequence (ours stays a private
                # duplicate, the mapping is kept), or a collision (the chain ends here).
                other = self._blocks[existing]
                same = other.token_ids == tokens and other.parent == state.parent
                state.parent = other.serial if same else None
            state.last_hash = h
        state.num_marked = max(state.num_marked, num_full)

    def reset_prefix_cache(self) -> None:
        """Forget every unused cached block; blocks in use keep their registration."""
        for bid in self._evictable:
            self._unregister(bid)
            heapq.heappush(self._free, bid)
        self._evictable.clear()

    def _check(self) -> None:
        """Cross-check the invariants (for tests; O(total blocks))."""
        refs = [0] * self.num_blocks
        for seq_id, state in self._seqs.items():
            table = state.seq.block_table
            assert state.seq.seq_id == seq_id
            assert len(set(table)) == len(table), f"seq {seq_id} repeats a block"
            assert state.seq.num_computed_tokens <= len(table) * self.block_size
            for bid in table:
                refs[bid] += 1
        for c in self._copies:
            refs[c.src] += 1  # pinned until take_copies
        free, evictable = set(self._free), set(self._evictable)
        assert len(free) == len(self._free), "free list repeats a block"
        assert not free & evictable
        for bid, block in enumerate(self._blocks):
            assert block.ref_count == refs[bid], f"block {bid}: {block.ref_count} != {refs[bid]}"
            in_pools = (bid in free) + (bid in evictable) + (block.ref_count > 0)
            assert in_pools == 1, f"block {bid} is in {in_pools} of free/evictable/in-use"
            if bid in free:
                assert block.hash is None
            if bid in evictable:
                assert block.hash is not None
            if block.hash is not None:
                assert self._hash_to_block[block.hash] == bid
                assert len(block.token_ids) == self.block_size and block.serial != _ROOT
        for h, bid in self._hash_to_block.items():
            assert self._blocks[bid].hash == h
        children = sorted(b for bids in self._children.values() for b in bids)
        assert children == sorted(self._hash_to_block.values())
        for parent, bids in self._children.items():
            assert all(self._blocks[b].parent == parent for b in bids)
        if not self.prefix_caching:
            assert not self._hash_to_block
