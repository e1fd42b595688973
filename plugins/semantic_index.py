"""The semantic cache's vector index: one FAISS inner-product index per partition.

A partition is everything that must match exactly before meaning is compared: tenant,
model, sampling parameters, conversation scope and the conversation before the newest
user turn (policies/cache.py `semantic_split`). A search only ever looks inside one
partition, so another tenant's entries are not filtered out after the fact: they are
not in the index searched at all.

Vectors are L2-normalized (the embedder does it), so inner product = cosine. Entries
expire (TTL) and the whole index is bounded (`max_entries`, least recently used first
out, across partitions). No I/O here: the plugin persists entries in the store and
deletes the store keys this index reports as evicted.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np

from policies.error_bound import EntryEvidence
from policies.semantic_verify import Analysis


@dataclass(slots=True)
class IndexEntry:
    id: int
    partition: str
    query: str
    analysis: Analysis
    store_key: str
    created: float  # wall clock (time.time), also what max-age is checked against
    expires: float  # wall clock
    # What the entry's own labelled outcomes say (the error bound's per-entry part);
    # kept in this process only: a restart or another replica starts it afresh.
    evidence: EntryEvidence = field(default_factory=EntryEvidence)


class PartitionedIndex:
    def __init__(
        self, dim: int, max_entries: int = 100_000, clock: Callable[[], float] = time.time
    ) -> None:
        self.dim = dim
        self.max_entries = max_entries
        self._clock = clock  # wall clock, as entries' expiry times are
        self._indexes: dict[str, faiss.IndexIDMap2] = {}
        self._entries: OrderedDict[int, IndexEntry] = OrderedDict()  # LRU order

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._entries

    @property
    def partitions(self) -> int:
        return len(self._indexes)

    def add(self, entry: IndexEntry, vector: np.ndarray) -> list[IndexEntry]:
        """Adds `entry` (vector shape (dim,)); returns the entries evicted to make room."""
        if entry.id in self._entries:
            self.remove(entry.id)
        index = self._indexes.get(entry.partition)
        if index is None:
            index = self._indexes[entry.partition] = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        index.add_with_ids(_row(vector), np.array([entry.id], dtype=np.int64))
        self._entries[entry.id] = entry
        evicted = []
        while len(self._entries) > self.max_entries:
            oldest = next(iter(self._entries))
            evicted.append(self._entries[oldest])
            self.remove(oldest)
        return evicted

    def remove(self, entry_id: int) -> IndexEntry | None:
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return None
        index = self._indexes[entry.partition]
        index.remove_ids(np.array([entry_id], dtype=np.int64))  # type: ignore[arg-type]
        if index.ntotal == 0:
            del self._indexes[entry.partition]
        return entry

    def search(
        self, partition: str, vector: np.ndarray, k: int, min_similarity: float
    ) -> list[tuple[float, IndexEntry]]:
        """The best `k` live entries of `partition` at `min_similarity` or more, best
        first (vector shape (dim,)). Expired entries met on the way are dropped."""
        index = self._indexes.get(partition)
        if index is None:
            return []
        scores, ids = index.search(_row(vector), min(k, index.ntotal))
        now = self._clock()
        found = []
        for score, entry_id in zip(scores[0].tolist(), ids[0].tolist(), strict=True):
            if entry_id < 0 or score < min_similarity:
                continue
            entry = self._entries.get(entry_id)
            if entry is None:
                continue
            if entry.expires <= now:
                self.remove(entry_id)
                continue
            found.append((float(score), entry))
        return found

    def touch(self, entry_id: int) -> None:
        """A hit: the entry becomes the most recently used."""
        if entry_id in self._entries:
            self._entries.move_to_end(entry_id)

    def expired(self, now: float) -> list[IndexEntry]:
        """Removes and returns every expired entry (a periodic sweep)."""
        gone = [e for e in self._entries.values() if e.expires <= now]
        for entry in gone:
            self.remove(entry.id)
        return gone


def _row(vector: np.ndarray) -> np.ndarray:
    """(dim,) or (1, dim) -> a contiguous float32 (1, dim) array, as FAISS wants."""
    return np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
