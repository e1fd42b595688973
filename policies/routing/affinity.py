"""Affinity policies: a request goes where its prefix (or its conversation) was last
sent, since that backend likely still holds its KV cache, under a load bound."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from policies.routing.balancing import LeastOutstanding
from policies.routing.prefix_keys import stable_hash
from policies.routing.ring import Rings
from policies.routing.state import B, BackendState, RoutingKey, load_bound, outstanding


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
        self._rings = Rings(vnodes)
        self._learned: OrderedDict[int, list[str]] = OrderedDict()  # hash -> holders
        self._capacity = min_prefixes
        self._no_key = LeastOutstanding()

    def choose(self, backends: Sequence[B], key: RoutingKey) -> B:
        if not key.prefix_hashes:
            return self._no_key.choose(backends, key)
        n = len(backends)
        self._capacity = max(self.min_prefixes, self.prefixes_per_backend * n)
        total = sum(map(outstanding, backends))
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
