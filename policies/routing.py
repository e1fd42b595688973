"""Routing policies (pure): which backend of a group takes a request.

    RoundRobin            each in turn
    Weighted              smooth weighted round robin (nginx's): interleaved, not bursty
    LeastOutstanding      fewest requests in flight; ties rotate
    PrefixAffinity        requests sharing a prompt prefix go where its KV is cached
    ConversationAffinity  one conversation stays on one backend (its history's KV)

Affinity uses consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam
2018): a key hashes to a point on a ring of virtual nodes; the request goes to the first
backend clockwise whose in-flight count stays within load_factor x the mean, so a
popular prefix spills over to the next backends instead of hot-spotting one, and adding
or removing a backend moves only the keys it owned. PrefixAffinity also learns where each
prefix (hash chain of the prompt's leading blocks) was last sent and prefers the backend
holding the longest known prefix, within the same bound.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True, eq=False)
class BackendState:
    id: str
    weight: float = 1.0
    outstanding: int = 0  # requests in flight (the caller keeps it current)


@dataclass(frozen=True, slots=True)
class RoutingKey:
    prefix_hashes: tuple[int, ...] = ()  # hash chain: element i covers blocks 0..i
    affinity: str | None = None  # conversation id


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def prefix_hash_chain(
    data: str | Sequence[int], block_size: int, max_blocks: int
) -> tuple[int, ...]:
    """Chained hashes of the leading full blocks of a prompt (text: block_size characters;
    token ids: block_size tokens), at most max_blocks. Same input, same hashes, in every
    process (no salted hash())."""
    out: list[int] = []
    prev = 0
    n = min(len(data) // block_size, max_blocks)
    for i in range(n):
        block = data[i * block_size : (i + 1) * block_size]
        raw = (
            block.encode()
            if isinstance(block, str)
            else b"".join(t.to_bytes(4, "little") for t in block)
        )
        prev = _hash(prev.to_bytes(8, "big") + raw)
        out.append(prev)
    return tuple(out)


class Policy(Protocol):
    def choose(self, backends: Sequence[BackendState], key: RoutingKey) -> BackendState:
        """backends: the healthy candidates, non-empty."""
        ...

    def on_routed(self, backend: BackendState, key: RoutingKey) -> None:
        """The request went to `backend` (and was accepted there)."""
        ...


class RoundRobin:
    def __init__(self) -> None:
        self._next = itertools.count()

    def choose(self, backends: Sequence[BackendState], key: RoutingKey) -> BackendState:
        return backends[next(self._next) % len(backends)]

    def on_routed(self, backend: BackendState, key: RoutingKey) -> None:
        return None


class Weighted:
    """Smooth weighted round robin: each pick adds every backend's weight to its score,
    takes the highest, and subtracts the total from it."""

    def __init__(self) -> None:
        self._score: dict[str, float] = {}

    def choose(self, backends: Sequence[BackendState], key: RoutingKey) -> BackendState:
        total = 0.0
        best: BackendState | None = None
        for b in backends:
            score = self._score.get(b.id, 0.0) + b.weight
            self._score[b.id] = score
            total += b.weight
            if best is None or score > self._score[best.id]:
                best = b
        assert best is not None
        self._score[best.id] -= total
        return best

    def on_routed(self, backend: BackendState, key: RoutingKey) -> None:
        return None


class LeastOutstanding:
    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, backends: Sequence[BackendState], key: RoutingKey) -> BackendState:
        least = min(b.outstanding for b in backends)
        tied = [b for b in backends if b.outstanding == least]
        return tied[next(self._turn) % len(tied)]

    def on_routed(self, backend: BackendState, key: RoutingKey) -> None:
        return None


class _Ring:
    """Virtual nodes of a backend set on a 64-bit ring."""

    def __init__(self, ids: Sequence[str], vnodes: int) -> None:
        points = sorted((_hash(f"{i}#{v}".encode()), i) for i in ids for v in range(vnodes))
        self.keys = [p for p, _ in points]
        self.owners = [i for _, i in points]


class _BoundedRing:
    """Consistent hashing with bounded loads over whatever candidates are healthy now."""

    def __init__(self, load_factor: float, vnodes: int) -> None:
        if load_factor < 1.0:
            raise ValueError("load_factor must be >= 1")
        self.load_factor, self.vnodes = load_factor, vnodes
        self._rings: OrderedDict[tuple[str, ...], _Ring] = OrderedDict()

    def bound(self, backends: Sequence[BackendState]) -> int:
        total = sum(b.outstanding for b in backends) + 1
        return max(1, math.ceil(self.load_factor * total / len(backends)))

    def pick(self, backends: Sequence[BackendState], point: int) -> BackendState:
        by_id = {b.id: b for b in backends}
        ring = self._ring(tuple(sorted(by_id)))
        bound = self.bound(backends)
        start = bisect.bisect(ring.keys, point)
        n = len(ring.owners)
        tried: set[str] = set()
        for j in range(n):  # clockwise until a backend under the bound
            owner = ring.owners[(start + j) % n]
            if owner in tried:
                continue
            tried.add(owner)
            if by_id[owner].outstanding + 1 <= bound:
                return by_id[owner]
            if len(tried) == len(by_id):
                break
        return min(backends, key=lambda b: b.outstanding)  # unreachable with factor >= 1

    def _ring(self, ids: tuple[str, ...]) -> _Ring:
        ring = self._rings.get(ids)
        if ring is None:
            ring = self._rings[ids] = _Ring(ids, self.vnodes)
            if len(self._rings) > 8:  # a few recent healthy-sets; rebuilding is cheap
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(ids)
        return ring


class PrefixAffinity:
    def __init__(self, load_factor: float = 1.25, vnodes: int = 64, memory: int = 200_000) -> None:
        self._ring = _BoundedRing(load_factor, vnodes)
        self._owner: OrderedDict[int, str] = OrderedDict()  # prefix hash -> backend id (LRU)
        self.memory = memory
        self._short = LeastOutstanding()  # prompts shorter than a block: nothing to reuse

    def choose(self, backends: Sequence[BackendState], key: RoutingKey) -> BackendState:
        if not key.prefix_hashes:
            return self._short.choose(backends, key)
        by_id = {b.id: b for b in backends}
        bound = self._ring.bound(backends)
        for h in reversed(key.prefix_hashes):  # the longest prefix some backend holds
            owner = self._owner.get(h)
            if owner is not None and owner in by_id:
                if by_id[owner].outstanding + 1 <= bound:
                    return by_id[owner]
                break  # its holder is overloaded: place by the ring
        return self._ring.pick(backends, key.prefix_hashes[0])

    def on_routed(self, backend: BackendState, key: RoutingKey) -> None:
        for h in key.prefix_hashes:
            self._owner[h] = backend.id
            self._owner.move_to_end(h)
        while len(self._owner) > self.memory:
            self._owner.popitem(last=False)


class ConversationAffinity:
    """The conversation id on the ring; without one, prefix affinity."""

    def __init__(self, load_factor: float = 1.25, vnodes: int = 64) -> None:
        self._ring = _BoundedRing(load_factor, vnodes)
        self._prefix = PrefixAffinity(load_factor, vnodes)

    def choose(self, backends: Sequence[BackendState], key: RoutingKey) -> BackendState:
        if key.affinity is None:
            return self._prefix.choose(backends, key)
        return self._ring.pick(backends, _hash(key.affinity.encode()))

    def on_routed(self, backend: BackendState, key: RoutingKey) -> None:
        self._prefix.on_routed(backend, key)
