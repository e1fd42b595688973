"""How often guesses are kept: the planner's estimate, per sequence and per run.

A guess's chance depends most on how long the text has agreed with the source the
guesses continue. Prompt lookup continuing a 20-token match is on a copy and nearly
always right; a fresh 2-token match is often a coincidence; and once a guess is kept,
the next one continues a match one token longer. So acceptance is estimated per *run*:
the tokens of agreement before a guess (the n-gram match's length plus the guesses
before it that were kept; a model proposer, which matches nothing, counts the guesses
before it). The planner's i-th guess then adds prod_{j<i} P(kept | run + j) expected
tokens, which follows a copy's bursts (a wrong occurrence fails at once, the right one
holds) where one average rate per sequence planned too few guesses on long runs and too
many on short ones.

Each sequence's estimate is shrunk toward the engine's (`RunAcceptance`, pooled over
its sequences and slowly forgetting), which is shrunk toward the configured prior, so a
new sequence starts from what this server has seen rather than from a constant.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

# A run falls in the bucket of the last edge <= it; runs past the last edge share it.
RUN_EDGES = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
MAX_RUN = RUN_EDGES[-1]


def run_bucket(run: int) -> int:
    return bisect_right(RUN_EDGES, run) - 1


def _zeros() -> list[float]:
    return [0.0] * len(RUN_EDGES)


@dataclass(slots=True)
class RunCounts:
    """Decaying counts of judged and kept guesses, per run bucket."""

    accepted: list[float] = field(default_factory=_zeros)
    tried: list[float] = field(default_factory=_zeros)

    def decay(self, factor: float) -> None:
        for b in range(len(RUN_EDGES)):
            self.accepted[b] *= factor
            self.tried[b] *= factor

    def add(self, run: int, num_drafted: int, num_accepted: int) -> None:
        # Guesses after the first rejection were never judged: they carry no evidence.
        for j in range(min(num_accepted + 1, num_drafted)):
            b = run_bucket(run + j)
            self.tried[b] += 1.0
            self.accepted[b] += 1.0 if j < num_accepted else 0.0

    def rate(self, bucket: int, prior: float, weight: float) -> float:
        return (self.accepted[bucket] + prior * weight) / (self.tried[bucket] + weight)


@dataclass(slots=True)
class RunAcceptance:
    """The engine's estimate over all its sequences: what a sequence starts from.

    Forgets slowly (`decay` per update of any sequence, guesses or not), so a run length
    that stopped being tried because it did badly drifts back to the prior and is tried
    again, rather than never."""

    prior: float
    weight: float = 4.0  # pseudo-trials behind the prior
    decay: float = 0.995
    counts: RunCounts = field(default_factory=RunCounts)

    def rate(self, bucket: int) -> float:
        return self.counts.rate(bucket, self.prior, self.weight)


@dataclass(slots=True)
class AcceptanceTracker:
    """One sequence's P(guess kept | run), shrunk toward the engine's (`shared`).

    Counts decay by `decay` per update, so the estimate follows the text as it changes;
    a step without guesses also decays them toward the engine's estimate, so a sequence
    that was cut off for low acceptance is tried again after a while rather than never.
    """

    shared: RunAcceptance
    weight: float = 2.0  # pseudo-trials behind the engine's estimate
    decay: float = 0.9
    counts: RunCounts = field(default_factory=RunCounts)

    def rate_at(self, run: int) -> float:
        b = run_bucket(run)
        return self.counts.rate(b, self.shared.rate(b), self.weight)

    def rates(self, run: int, k: int) -> tuple[float, ...]:
        """P(guess i kept | guesses before it kept), i = 1..k, for guesses that start after
        a run of `run` tokens."""
        return tuple(self.rate_at(run + j) for j in range(k))

    def record(self, run: int, num_drafted: int, num_accepted: int) -> None:
        self._forget()
        self.counts.add(run, num_drafted, num_accepted)
        self.shared.counts.add(run, num_drafted, num_accepted)

    def idle(self) -> None:
        self._forget()

    def _forget(self) -> None:
        self.counts.decay(self.decay)
        self.shared.counts.decay(self.shared.decay)
