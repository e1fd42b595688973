"""Dynamic batching decisions (pure; the caller passes the time).

`BatchWindow` says when the queued items go to the model as one batch:

    queued >= max_batch                    flush now (a full batch gains nothing by waiting)
    queued >= expected                     flush now: as many as the last batch carried
                                           are here (a lone caller never waits; 32 callers
                                           in a loop go as soon as all 32 are back)
    window_s passed since the window       flush now
    opened
    otherwise                              wait until it ends; an arrival that fills the
                                           batch ends the wait early (ask again then)

The window opens when the oldest queued item arrived, or when the model went idle if
that is later: time spent waiting for a busy model is not time spent gathering a batch,
so the callers of the last batch, coming back a little apart, meet again in the next one
instead of the first of them going alone.

`group_by_length` says which length-sorted sequences of one batch share a padded
attention grid: one grid pads every sequence to the longest, one grid per sequence costs
a few extra small kernels each.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    flush: bool
    wait_s: float  # when not flushing: how long until the window ends (inf: nothing queued)


@dataclass(frozen=True, slots=True)
class BatchWindow:
    window_s: float = 0.002
    max_batch: int = 64

    def __post_init__(self) -> None:
        if not (self.window_s >= 0.0 and math.isfinite(self.window_s)):
            raise ValueError(f"window_s must be a finite number >= 0, got {self.window_s}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")

    def decide(
        self,
        oldest: float,
        queued: int,
        now: float,
        *,
        idle_since: float = -math.inf,
        expected: int | None = None,
    ) -> Decision:
        """oldest: arrival time of the oldest queued item; queued: items waiting;
        idle_since: when the model finished its last batch; expected: how many items the
        last batch carried (None: no batch yet)."""
        if queued <= 0:
            return Decision(flush=False, wait_s=math.inf)
        if queued >= self.max_batch or (expected is not None and queued >= expected):
            return Decision(flush=True, wait_s=0.0)
        opened = max(oldest, idle_since)
        # A clock that went backwards (now < opened) must not stretch the window.
        left = min(self.window_s, opened + self.window_s - now)
        if left <= 0.0:
            return Decision(flush=True, wait_s=0.0)
        return Decision(flush=False, wait_s=left)

    def take(self, queued: int) -> int:
        """How many of `queued` items the next batch carries (the rest wait for the next)."""
        return max(0, min(queued, self.max_batch))


def group_by_length(
    lengths: Sequence[int], group_cost: float = 3000.0, row_cost: float = 40.0
) -> list[int]:
    """Splits ascending `lengths` into consecutive groups; returns each group's end index
    (exclusive), the last being len(lengths).

    A group of n sequences padded to its longest, L, costs group_cost + n*L*(L + row_cost):
    n*L*L query-key pairs of attention plus a per-padded-row copy into the grid, both in
    units of one query-key pair (~1536 flops for 12 heads x 32 dims). The default
    group_cost (a few small kernels per layer, ~40 us) and row_cost were measured for
    all-MiniLM-L6-v2 on a 2-core AVX-512 CPU; only their ratio to L*L matters much.
    Minimizes the total cost exactly (O(n^2), n is at most one batch)."""
    n = len(lengths)
    if any(a > b for a, b in itertools.pairwise(lengths)):
        raise ValueError("lengths must be sorted ascending")
    if n == 0:
        return []

    def padded(count: int, length: int) -> float:
        return count * length * (length + row_cost)

    # Common case (short texts of similar length): one grid wastes less than a split costs.
    ideal = sum(padded(1, length) for length in lengths)
    if padded(n, lengths[-1]) - ideal <= group_cost:
        return [n]
    best = [0.0] * (n + 1)  # best[j]: cheapest grouping of lengths[:j]
    start = [0] * (n + 1)  # start[j]: where the last group of that grouping starts
    for j in range(1, n + 1):
        best[j] = math.inf
        for i in range(j):
            cost = best[i] + group_cost + padded(j - i, lengths[j - 1])
            if cost < best[j]:
                best[j], start[j] = cost, i
    ends: list[int] = []
    j = n
    while j > 0:
        ends.append(j)
        j = start[j]
    return ends[::-1]
