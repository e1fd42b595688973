"""Routing policies: which backend gets the next request.

Pure decision logic, no I/O and no clock. The caller (plugins/routing.py, or the
simulation in bench/routing_sim.py) keeps each `BackendState.outstanding` current,
passes the healthy candidates to `choose`, and tells the policy where a request went
with `on_routed` so that affinity policies can learn.

- RoundRobin, Weighted (smooth weighted round robin, as nginx does), LeastOutstanding.
- PrefixAffinity: a prompt goes where its longest prefix was last sent (that backend
  likely still holds the prefix's KV cache); a prefix never seen goes to its place on a
  hash ring. Both under a load bound, so a popular prefix cannot hot-spot one backend:
  consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018).
- ConversationAffinity: the same, keyed by the conversation id.

bench/routing_sim.py measures them (hit rate, balance, queueing) against an oracle that
sees every backend's cache, at 8 to 1,000 backends.
"""

from __future__ import annotations

import hashlib
import math
import struct
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Protocol, TypeVar

_MASK64 = (1 << 64) - 1


@dataclass(slots=True, eq=False)
class BackendState:
    """One backend as routing sees it. eq=False: two idle backends with equal fields are
    still two backends, so identity is what compares (and hashes)."""

    id: str
    weight: float = 1.0
    outstanding: int = 0  # requests sent and not yet finished, kept by the caller


B = TypeVar("B", bound=BackendState)


@dataclass(frozen=True, slots=True)
class RoutingKey:
    """What a request offers for affinity: `prefix_hashes[i]` covers its prompt up to a
    block boundary, boundaries increasing (see prefix_hash_chain); `affinity` is a
    conversation (or user) id."""

    prefix_hashes: tuple[int, ...] = ()
    affinity: str | None = None


class Policy(Protocol):
    def choose(self, backends: Sequence[B], key: RoutingKey) -> B:
        """Pick one of `backends` (the healthy candidates, never empty)."""
        ...

    def on_routed(self, backend: BackendState, key: RoutingKey) -> None:
        """The request with `key` was sent to `backend`."""
        ...


def prefix_hash_chain(
    data: str | bytes | Sequence[int], block_size: int, max_blocks: int, *, tail: bool = True
) -> tuple[int, ...]:
    """64-bit hashes of a prompt's leading prefixes (characters of a str, bytes, or token
    ids), one per boundary of `prefix_boundaries`: hashes[i] covers the prompt up to its
    i-th boundary, so two prompts share hashes[:k] exactly when they agree up to the k-th.
    Only full blocks count, as a KV cache only reuses full blocks.

    The tail matters: a key that stops at a fixed length cannot tell apart conversations
    whose system prompt is longer, so past `max_blocks` the boundaries go on to the end of
    the prompt, ~6% apart. blake2b rather than hash(): str hashes are salted per process,
    and every gateway replica must compute the same key."""
    if block_size < 1 or max_blocks < 0:
        raise ValueError("block_size must be >= 1 and max_blocks >= 0")
    hashes: list[int] = []
    running = hashlib.blake2b(digest_size=8)
    done = 0
    for end in prefix_boundaries(len(data) // block_size, max_blocks, tail=tail):
        running.update(_block_bytes(data[done * block_size : end * block_size]))
        done = end
        hashes.append(int.from_bytes(running.digest(), "little"))
    return tuple(hashes)


def prefix_boundaries(n_blocks: int, max_blocks: int, *, tail: bool = True) -> list[int]:
    """Block counts that get a prefix hash: 1, 2, ..., max_blocks, then (tail) each 1/16
    past the one before, up to n_blocks. Integer steps, so every host agrees."""
    bounds = list(range(1, min(n_blocks, max_blocks) + 1))
    if tail:
        b = max_blocks + max(1, max_blocks // 16)
        while b <= n_blocks:
            bounds.append(b)
            b += max(1, b // 16)
    return bounds


def _block_bytes(block: str | bytes | Sequence[int]) -> bytes:
    if isinstance(block, str):
        return block.encode("utf-8", "surrogatepass")
    if isinstance(block, bytes | bytearray | memoryview):
        return bytes(block)
    return struct.pack(f"<{len(block)}q", *block)  # fixed byte order: same on every host


def stable_hash(text: str) -> int:
    """A 64-bit hash of `text` that is the same in every process."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def load_bound(total_outstanding: int, n_backends: int, load_factor: float) -> int:
    """The most requests one backend may hold once the next one is placed:
    ceil(c * (total + 1) / n). With c >= 1 some backend is always under it: were every
    backend at the bound they would hold n * bound >= total + 1 > total requests."""
    return math.ceil(load_factor * (total_outstanding + 1) / n_backends)


def first_healthy_group(groups: Iterable[Sequence[B]], healthy: Callable[[B], bool]) -> list[B]:
    """The healthy members of the first group that has any. Groups are in fallback order:
    a later group serves only while every earlier one is down. Empty if none has any."""
    for group in groups:
        members = [b for b in group if healthy(b)]
        if members:
            return members
    return []


class RoundRobin:
    def __init__(self) -> None:
        self._next = 0

    def choose(self, backends: Sequence[B], key: RoutingKey) -> B:
        backend = backends[self._next % len(backends)]
        self._next = (self._next + 1) & _MASK64
        return backend

    def on_routed(self, backend: BackendState, key: RoutingKey) -> None:
        pass


class Weighted:
    """Smooth weighted round robin (nginx): each pick, every backend's credit grows by its
    weight, the richest is chosen and pays back the total. Picks follow the weights over
    any window and interleave (5:1:1 gives a a b a c a a, not a a a a a b c)."""

    def __init__(self) -> None:
        self._credit: dict[str, float] = {}
        self._fallback = RoundRobin()

    def choose(self, backends: Sequence[B], key: RoutingKey) -> B:
        best: B | None = None
        best_credit = -math.inf
        total = 0.0
        for b in backends:
            if b.weight <= 0:
                continue  # weight 0 parks a backend
            credit = self._credit.get(b.id, 0.0) + b.weight
            self._credit[b.id] = credit
            total += b.weight
            if credit > best_credit:
                best, best_credit = b, credit
        if best is None:  # every candidate parked: better any than none
            return self._fallback.choose(backends, key)
        self._credit[best.id] = best_credit - total
        return best

    def on_routed(self, backend: BackendState, key: RoutingKey) -> None:
        pass


class LeastOutstanding:
    """Fewest requests in flight. The scan starts one place further each call, so ties
    (every backend idle, say) rotate instead of always landing on the first."""

    def __init__(self) -> None:
        self._start = 0

    def choose(self, backends: Sequence[B], key: RoutingKey) -> B:
        start = self._start % len(backends)
        self._start = start + 1
        loads = list(map(_outstanding, backends))  # C-speed scans: fine at 1,000 backends
        least = min(loads)
        try:
            return backends[loads.index(least, start)]
        except ValueError:  # the first least loaded lies before start
            return backends[loads.index(least)]

    def on_routed(self, backend: BackendState, key: RoutingKey) -> None:
        pass


_outstanding: Callable[[BackendState], int] = attrgetter("outstanding")
_id: Callable[[BackendState], str] = attrgetter("id")


class PrefixAffinity:
    """Requests that share a prompt prefix go to the backend holding its KV cache, with no
    backend past `load_bound` (so a popular system prompt spreads instead of hot-spotting).

    1. Learned: `on_routed` remembers prefix hash -> its last `holders` backends (an LRU
       map). The prompt's prefixes are tried longest first, and the least loaded of a
       prefix's holders under the bound takes the request: a conversation returns to
       where its last turn went. A prefix several backends hold (a shared system prompt)
       takes a holder only if it is loaded no more than the mean; otherwise the least
       loaded backend does, so new conversations land where their later turns fit.
    2. A prefix never seen goes to its place on the hash ring (from its first block's
       hash, the first backend under the bound): only a leaving backend's keys move.

    The map keeps, per routed request, the hashes of its longest prefix and of its
    1st, 2nd, 4th, 8th, ... boundaries: a later turn of the conversation contains the
    longest exactly, and a shared system prompt matches one at least half its length, for
    a handful of entries per request instead of one per block. It holds
    `prefixes_per_backend` entries per candidate backend, about what their caches hold.
    """

    def __init__(
        self,
        load_factor: float = 1.25,
        *,
        vnodes: int = 64,
        prefixes_per_backend: int = 512,
        min_prefixes: int = 4096,
        holders: int = 16,
    ) -> None:
        if load_factor < 1.0:
            raise ValueError("load_factor must be >= 1 (below 1 no backend may fit)")
        self.load_factor = load_factor
        self.prefixes_per_backend = prefixes_per_backend
        self.min_prefixes = min_prefixes
        self.holders = holders
        self._rings = _Rings(vnodes)
        self._learned: OrderedDict[int, list[str]] = OrderedDict()  # hash -> holders
        self._capacity = min_prefixes
        self._no_key = LeastOutstanding()

    def choose(self, backends: Sequence[B], key: RoutingKey) -> B:
        if not key.prefix_hashes:
            return self._no_key.choose(backends, key)
        n = len(backends)
        self._capacity = max(self.min_prefixes, self.prefixes_per_backend * n)
        total = sum(map(_outstanding, backends))
        bound = load_bound(total, n, self.load_factor)
        view = self._rings.view(backends)
        learned = self._learned
        for h in reversed(key.prefix_hashes):
            holders = learned.get(h)
            if holders is None:
                continue
            best: B | None = None
            for owner in reversed(holders):  # most recent first: ties go to it
                i = view.index.get(owner)
                if i is None:
                    continue  # not a candidate now (ejected, or already tried)
                load = backends[i].outstanding
                if load < bound and (best is None or load < best.outstanding):
                    best = backends[i]
            if best is None:
                continue  # its holders are full: a shorter prefix may be held elsewhere
            if len(holders) > 1 and best.outstanding * n > total:
                # A prefix several backends hold (a system prompt) is cheap to rebuild and
                # not worth an above-average backend: new conversations piled there would
                # overflow it on their later turns. The least loaded takes it instead.
                return self._no_key.choose(backends, key)
            return best
        return view.walk(backends, key.prefix_hashes[0], bound)

    def on_routed(self, backend: BackendState, key: RoutingKey) -> None:
        hashes = key.prefix_hashes
        last = len(hashes) - 1
        i = 0
        while i <= last:
            self._learn(hashes[i], backend.id)
            i = 2 * i + 1  # block counts 1, 2, 4, 8, ...
        if last >= 0 and last & (last + 1):  # not already learned as a power of two
            self._learn(hashes[last], backend.id)
        while len(self._learned) > self._capacity:
            self._learned.popitem(last=False)

    def _learn(self, h: int, backend_id: str) -> None:
        holders = self._learned.get(h)
        if holders is None:
            self._learned[h] = [backend_id]
            return
        self._learned.move_to_end(h)
        if holders[-1] == backend_id:
            return
        if backend_id in holders:
            holders.remove(backend_id)
        holders.append(backend_id)
        if len(holders) > self.holders:
            del holders[0]


class ConversationAffinity:
    """A conversation sticks to one backend (where its earlier turns are cached): the same
    learned map and bounded-load ring as PrefixAffinity, keyed by the conversation id. A
    request without an id is routed by its prefix."""

    def __init__(self, load_factor: float = 1.25, *, vnodes: int = 64) -> None:
        # one holder: a conversation goes back to where its newest turn went
        self._by_id = PrefixAffinity(
            load_factor, vnodes=vnodes, prefixes_per_backend=256, holders=1
        )
        self._by_prefix = PrefixAffinity(load_factor, vnodes=vnodes)

    def choose(self, backends: Sequence[B], key: RoutingKey) -> B:
        if key.affinity is None:
            return self._by_prefix.choose(backends, key)
        return self._by_id.choose(backends, _id_key(key.affinity))

    def on_routed(self, backend: BackendState, key: RoutingKey) -> None:
        if key.affinity is None:
            self._by_prefix.on_routed(backend, key)
        else:
            self._by_id.on_routed(backend, _id_key(key.affinity))


def _id_key(affinity: str) -> RoutingKey:
    return RoutingKey(prefix_hashes=(stable_hash(affinity),))


def _mix64(x: int) -> int:
    """splitmix64's finalizer: spreads any int (a token-id-like key, a small counter)
    evenly over the ring, so callers need not pre-hash their keys."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class _Ring:
    """Sorted virtual-node points of one candidate set; `owners[k]` is the index (in that
    set's order) of the backend at `points[k]`."""

    __slots__ = ("ids", "index", "owners", "points")

    def __init__(self, ids: tuple[str, ...], points_of: Callable[[str], list[int]]) -> None:
        pairs = sorted((p, i) for i, bid in enumerate(ids) for p in points_of(bid))
        self.ids = ids
        self.index = {bid: i for i, bid in enumerate(ids)}
        self.points = [p for p, _ in pairs]
        self.owners = [i for _, i in pairs]


class _View:
    """A ring as seen by one call's candidates: the ring of exactly that set, or of a
    superset with `remap` (ring index -> candidate index, -1 if not a candidate). Walking
    a superset ring and skipping the absent is the same as walking the subset's own ring,
    which is what makes consistent hashing consistent."""

    __slots__ = ("index", "remap", "ring")

    def __init__(self, ring: _Ring, index: dict[str, int], remap: list[int] | None) -> None:
        self.ring = ring
        self.index = index
        self.remap = remap

    def walk(self, backends: Sequence[B], key_hash: int, bound: int) -> B:
        points, owners, remap = self.ring.points, self.ring.owners, self.remap
        n = len(points)
        start = bisect_left(points, _mix64(key_hash))
        for step in range(n):
            i = owners[(start + step) % n]
            if remap is not None:
                i = remap[i]
                if i < 0:
                    continue
            if backends[i].outstanding < bound:
                return backends[i]
        return min(backends, key=_outstanding)  # unreachable with load_factor >= 1


class _Rings:
    """Rings for the candidate sets seen lately, by their tuple of ids. Each backend's
    virtual-node points are hashed once; a rebuild is one sort. A set that lost a few
    members (an ejected backend, a retry excluding the one that failed) reuses a cached
    superset's ring instead of building its own."""

    def __init__(self, vnodes: int, keep: int = 4) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be >= 1")
        self.vnodes = vnodes
        self.keep = keep
        self._rings: OrderedDict[tuple[str, ...], _Ring] = OrderedDict()
        self._points: dict[str, list[int]] = {}

    def view(self, backends: Sequence[BackendState]) -> _View:
        ids = tuple(map(_id, backends))
        ring = self._rings.get(ids)
        if ring is not None:
            self._rings.move_to_end(ids)
            return _View(ring, ring.index, None)
        for ring in reversed(self._rings.values()):
            if 2 * len(ids) >= len(ring.ids) and ring.index.keys() >= set(ids):
                index = {bid: i for i, bid in enumerate(ids)}
                return _View(ring, index, [index.get(bid, -1) for bid in ring.ids])
        ring = self._rings[ids] = _Ring(ids, self._points_of)
        while len(self._rings) > self.keep:
            self._rings.popitem(last=False)
        return _View(ring, ring.index, None)

    def _points_of(self, backend_id: str) -> list[int]:
        points = self._points.get(backend_id)
        if points is None:
            if len(self._points) > 65536:  # ids churn (autoscaling): keep the cache bounded
                self._points.clear()
            points = self._points[backend_id] = [
                stable_hash(f"{backend_id}\x00{v}") for v in range(self.vnodes)
            ]
        return points
