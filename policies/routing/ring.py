"""Consistent hashing with virtual nodes, for the affinity policies: a key's place on the
ring of the current candidates, walked to the first backend under the load bound."""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Sequence

from policies.routing.prefix_keys import stable_hash
from policies.routing.state import MASK64, B, BackendState, id_of, outstanding


def _mix64(x: int) -> int:
    """splitmix64's finalizer: spreads any int (a token-id-like key, a small counter)
    evenly over the ring, so callers need not pre-hash their keys."""
    x &= MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


class Ring:
    """Sorted virtual-node points of one candidate set; `owners[k]` is the index (in that
    set's order) of the backend at `points[k]`."""

    __slots__ = ("ids", "index", "owners", "points")

    def __init__(self, ids: tuple[str, ...], points_of: Callable[[str], list[int]]) -> None:
        pairs = sorted((p, i) for i, bid in enumerate(ids) for p in points_of(bid))
        self.ids = ids
        self.index = {bid: i for i, bid in enumerate(ids)}
        self.points = [p for p, _ in pairs]
        self.owners = [i for _, i in pairs]


class RingView:
    """A ring as seen by one call's candidates: the ring of exactly that set, or of a
    superset with `remap` (ring index -> candidate index, -1 if not a candidate). Walking
    a superset ring and skipping the absent is the same as walking the subset's own ring,
    which is what makes consistent hashing consistent."""

    __slots__ = ("index", "remap", "ring")

    def __init__(self, ring: Ring, index: dict[str, int], remap: list[int] | None) -> None:
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
        return min(backends, key=outstanding)  # unreachable with load_factor >= 1


class Rings:
    """Rings for the candidate sets seen lately, by their tuple of ids. Each backend's
    virtual-node points are hashed once; a rebuild is one sort. A set that lost a few
    members (an ejected backend, a retry excluding the one that failed) reuses a cached
    superset's ring instead of building its own."""

    def __init__(self, vnodes: int, keep: int = 4) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be >= 1")
        self.vnodes = vnodes
        self.keep = keep
        self._rings: OrderedDict[tuple[str, ...], Ring] = OrderedDict()
        self._points: dict[str, list[int]] = {}

    def view(self, backends: Sequence[BackendState]) -> RingView:
        ids = tuple(map(id_of, backends))
        ring = self._rings.get(ids)
        if ring is not None:
            self._rings.move_to_end(ids)
            return RingView(ring, ring.index, None)
        for ring in reversed(self._rings.values()):
            if 2 * len(ids) >= len(ring.ids) and ring.index.keys() >= set(ids):
                index = {bid: i for i, bid in enumerate(ids)}
                return RingView(ring, index, [index.get(bid, -1) for bid in ring.ids])
        ring = self._rings[ids] = Ring(ids, self._points_of)
        while len(self._rings) > self.keep:
            self._rings.popitem(last=False)
        return RingView(ring, ring.index, None)

    def _points_of(self, backend_id: str) -> list[int]:
        points = self._points.get(backend_id)
        if points is None:
            if len(self._points) > 65536:  # ids churn (autoscaling): keep the cache bounded
                self._points.clear()
            points = self._points[backend_id] = [
                stable_hash(f"{backend_id}\x00{v}") for v in range(self.vnodes)
            ]
        return points
