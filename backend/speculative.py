"""Speculative decoding, the pure-logic half: proposers, acceptance tracking, and the
planner that decides each step how many guesses each sequence gets (no torch, no I/O).

A step that feeds a sequence its last token plus k guessed tokens costs about what a
one-token step costs while the step is memory-bound, and yields 1 + (accepted guesses)
tokens. Whether it pays depends on two measured things: how often this sequence's
guesses are accepted, and how much longer a step with more tokens takes on this
machine (`StepCost`). The planner adds guesses one at a time, most valuable first,
while they raise every sequence's expected tokens per second taken together
(`plan_drafts`); under a big batch the step is already compute-bound and no guess
pays, so none is made.

Verification (rejection sampling over the target's logits) lives in spec_verify.py.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

PROPOSERS = ("ngram", "self-draft")


@dataclass(frozen=True, slots=True)
class SpeculativeConfig:
    method: str = "ngram"  # one of PROPOSERS
    max_draft_tokens: int = 8  # k at most, per sequence and step
    default_on: bool = True  # requests that do not say get speculation when this is on
    ngram_max: int = 4  # prompt lookup: longest suffix n-gram tried first...
    ngram_min: int = 2  # ...down to this length
    self_draft_layers: int = 8  # self-draft: the target's first layers + its norm and head
    prior_acceptance: float = 0.6  # acceptance assumed before a sequence has any history
    # False: every proposal is fed whole (fixed k), whatever it costs; for experiments
    # and for tests that must not depend on this machine's timings.
    adaptive: bool = True

    def __post_init__(self) -> None:
        if self.method not in PROPOSERS:
            raise ValueError(f"speculative method must be one of {PROPOSERS}, got {self.method!r}")
        if not 1 <= self.max_draft_tokens <= 32:
            raise ValueError("max_draft_tokens must be in [1, 32]")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError("need 1 <= ngram_min <= ngram_max")
        if self.self_draft_layers < 1:
            raise ValueError("self_draft_layers must be at least 1")
        if not 0.0 < self.prior_acceptance < 1.0:
            raise ValueError("prior_acceptance must be in (0, 1)")


class NgramIndex:
    """Prompt lookup for one sequence: the latest earlier occurrence of its last n tokens
    (n from ngram_max down to ngram_min) and the tokens that followed it there.

    Kept incrementally: an n-gram is indexed once the token after it exists, so a lookup
    never finds the suffix itself, and each new token costs O(ngram_max) dict updates.
    """

    def __init__(self, ngram_min: int, ngram_max: int) -> None:
        self.ngram_min, self.ngram_max = ngram_min, ngram_max
        self._ends: dict[tuple[int, ...], int] = {}  # n-gram -> end of its latest occurrence
        self._indexed = 0  # n-grams ending before this position are in the index

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        length = len(tokens)
        for end in range(max(self._indexed, 1), length):  # index n-grams ending at `end`
            for n in range(self.ngram_min, min(self.ngram_max, end) + 1):
                self._ends[tuple(tokens[end - n : end])] = end
        self._indexed = max(self._indexed, length)
        if k <= 0:
            return []
        for n in range(min(self.ngram_max, length - 1), self.ngram_min - 1, -1):
            found = self._ends.get(tuple(tokens[length - n :]))
            if found is not None:
                return list(tokens[found : found + k])
        return []


@dataclass(slots=True)
class AcceptanceTracker:
    """Per-sequence estimate of a = P(guess i accepted | guesses before it accepted).

    Counts decay by `decay` per update, so the estimate follows the text as it changes;
    a step without guesses also decays them toward the prior, so a sequence that was
    cut off for low acceptance is tried again after a while rather than never.
    """

    prior: float
    weight: float = 2.0  # pseudo-trials behind the prior
    decay: float = 0.9
    accepted: float = 0.0
    tried: float = 0.0

    @property
    def rate(self) -> float:
        return (self.accepted + self.prior * self.weight) / (self.tried + self.weight)

    def record(self, num_drafted: int, num_accepted: int) -> None:
        # Guesses after the first rejection were never judged: they carry no evidence.
        tried = min(num_accepted + 1, num_drafted)
        self.accepted = self.accepted * self.decay + num_accepted
        self.tried = self.tried * self.decay + tried

    def idle(self) -> None:
        self.accepted *= self.decay
        self.tried *= self.decay


class StepCost:
    """Seconds a forward step takes on this machine:

        cost(tokens, attended) = scale * (curve(tokens) + attention * attended)

    curve: the weights' part, as a function of the step's token count (flat while
    streaming the weights dominates, with a step where the few-row matmul hands over to
    the BLAS GEMM, then rising); attended: the context tokens the step's one-query rows
    (decodes, verify rows) attend to, summed, and `attention` the seconds per such token.
    Without the second term a step of 64 long decodes looks as cheap as a 64-token
    prefill, and guesses look free where they are not.

    The shape (curve points, `attention`) comes from a calibration at engine start-up,
    timed back to back so that its points compare; real steps only move `scale`, an
    exponential average of measured / predicted time, which follows the machine getting
    slower or faster as a whole. (Refining each point from real steps instead lets noise
    bend the curve: one inflated point makes the next segment flat and guesses free.)
    """

    def __init__(self, alpha: float = 0.05) -> None:
        self.alpha = alpha
        self.attention = 0.0  # seconds per attended context token
        self.scale = 1.0
        self._points: dict[int, float] = {}

    def calibrate(self, num_tokens: int, seconds: float) -> None:
        """One point of the curve: a step of num_tokens tokens attending to nothing."""
        self._points[num_tokens] = seconds

    def observe(self, num_tokens: int, seconds: float, attended: int = 0) -> None:
        """A real step: nudges `scale` (one outlier moves it at most by alpha * 2x)."""
        predicted = self._curve(num_tokens) + self.attention * attended
        if predicted > 0.0 and seconds > 0.0:
            ratio = min(max(seconds / predicted, 0.5 * self.scale), 2.0 * self.scale)
            self.scale += self.alpha * (ratio - self.scale)

    def __call__(self, num_tokens: int, attended: int = 0) -> float:
        return self.scale * (self._curve(num_tokens) + self.attention * attended)

    def _curve(self, num_tokens: int) -> float:
        if not self._points:
            return float(num_tokens)
        xs = sorted(self._points)
        # Interpolate through the origin below the first point: a cost never goes below
        # zero, and a larger step never costs less than a smaller one.
        if num_tokens <= xs[0]:
            return self._points[xs[0]] * num_tokens / xs[0]
        ylo = self._points[xs[0]]
        for lo, hi in itertools.pairwise(xs):
            yhi = max(self._points[hi], ylo)
            if num_tokens <= hi:
                return ylo + (yhi - ylo) * (num_tokens - lo) / (hi - lo)
            ylo = yhi
        return ylo * num_tokens / xs[-1]  # beyond: proportional


@dataclass(frozen=True, slots=True)
class Candidate:
    """A sequence that could speculate this step."""

    acceptance: float  # its tracker's rate
    max_draft: int  # guesses available (proposal length, room left, max_draft_tokens)
    context: int = 0  # tokens so far: its i-th guess's row attends to context + i


@dataclass(slots=True)
class Plan:
    num_draft: list[int]  # guesses per candidate, in candidate order
    reason: str  # why speculation stopped where it did (for metrics and logs)


def plan_drafts(
    candidates: Sequence[Candidate],
    base_tokens: int,
    cost: StepCost,
    base_attended: int = 0,
    num_seqs: int | None = None,
    draft_pass: float = 0.0,
) -> Plan:
    """How many guesses each candidate feeds this step.

    base_tokens: tokens the step runs without speculation (decodes, prefill chunks);
    base_attended: what its decode rows attend to (StepCost); num_seqs: sequences in the
    step (default: the candidates); draft_pass: seconds a model proposer spends per
    guess depth (one batched pass per depth; 0 for prompt lookup). A candidate's i-th
    guess adds a**i expected tokens (it counts only if all guesses before it are
    accepted).

    Objective: the sum over the step's sequences of log(expected tokens / step cost)
    (proportional fairness). For one sequence that is its tokens per second. In a shared
    step every sequence waits for the step, so a guess must pay for slowing all of them:
    speculation takes the headroom that is nearly free (a memory-bound step) and never
    buys one request's speed with everyone else's. Plain throughput per step would not
    see that: a batch whose slowest request cannot speculate finishes later. Guesses are
    added best first while they raise the objective.
    """
    num_draft = [0] * len(candidates)
    expected = [1.0] * len(candidates)  # expected tokens of each candidate this step
    heap = [
        (-math.log1p(c.acceptance), i, 1, c.acceptance)
        for i, c in enumerate(candidates)
        if c.max_draft > 0
    ]
    if not heap:
        return Plan(num_draft, "no_proposal")
    heapq.heapify(heap)
    n = max(num_seqs if num_seqs is not None else len(candidates), 1)
    tokens, attended, deepest = base_tokens, base_attended, 0
    now = cost(tokens, attended)
    reason = "max_draft"
    while heap:
        neg_utility, i, depth, gain = heap[0]
        extra = attended + candidates[i].context + depth
        then = cost(tokens + 1, extra) + max(depth, deepest) * draft_pass * cost.scale
        if -neg_utility <= n * math.log(then / now):
            reason = "not_worth_it"
            break
        heapq.heappop(heap)
        expected[i] += gain
        tokens, attended, now, deepest = tokens + 1, extra, then, max(depth, deepest)
        num_draft[i] = depth
        if depth < candidates[i].max_draft:
            nxt = gain * candidates[i].acceptance
            heapq.heappush(heap, (-math.log1p(nxt / expected[i]), i, depth + 1, nxt))
    if not any(num_draft):
        reason = "not_worth_it"
    return Plan(num_draft, reason)


class Proposer(Protocol):
    """Guesses the next tokens of many sequences at once.

    lazy = False (n-gram lookup): guessing is cheap, so `propose` runs before planning
    and the plan sees how many guesses each sequence has. lazy = True (model guessers):
    the engine plans with the room each sequence has, schedules the step with that many
    placeholder guesses (so their KV slots exist), then `fill`s them in one batched pass.
    """

    lazy: bool
    pass_seconds: float  # one guessing pass for one sequence (0: negligible), for planning

    def propose(self, requests: Sequence[ProposalRequest]) -> list[list[int]]: ...

    def fill(self, seqs: Sequence[Any]) -> None: ...


@dataclass(slots=True)
class ProposalRequest:
    token_ids: Sequence[int]  # everything so far, prompt included
    max_tokens: int  # at most this many guesses
    ngram: NgramIndex | None = None  # the sequence's own lookup index (n-gram proposer)


class NgramProposer:
    """Prompt lookup (Saxena 2023): guesses continue an earlier occurrence of the suffix."""

    lazy = False
    pass_seconds = 0.0

    def propose(self, requests: Sequence[ProposalRequest]) -> list[list[int]]:
        out = []
        for r in requests:
            if r.ngram is None:
                raise ValueError("the n-gram proposer needs each sequence's NgramIndex")
            out.append(r.ngram.propose(r.token_ids, r.max_tokens))
        return out

    def fill(self, seqs: Sequence[Any]) -> None:
        raise NotImplementedError("prompt lookup proposes up front")
