"""Speculative decoding's planner: how many guesses each sequence feeds this step.

A step that feeds a sequence its last token plus k guessed tokens costs about what a
one-token step costs while the step is memory-bound, and yields 1 + (accepted guesses)
tokens. Whether it pays depends on two measured things: how often this sequence's
guesses are accepted (`AcceptanceTracker`), and how much longer a step with more tokens
takes on this machine (`StepCost`). The planner adds guesses one at a time, most
valuable first, while they raise every sequence's expected tokens per second taken
together (`plan_drafts`); under a big batch the step is already compute-bound and no
guess pays, so none is made. Plain Python: no torch, no I/O.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from backend.speculative.step_cost import StepCost


@dataclass(frozen=True, slots=True)
class Candidate:
    """A sequence that could speculate this step."""

    # P(guess i kept | the guesses before it kept), i = 1, 2, ... (AcceptanceTracker.rates);
    # depths past the tuple's end take its last value; a float: the same at every depth
    acceptance: float | tuple[float, ...]
    max_draft: int  # guesses available (proposal length, room left, num_speculative_tokens)
    context: int = 0  # tokens so far: its i-th guess's row attends to context + i

    def rate(self, depth: int) -> float:
        """P(guess `depth` kept | the guesses before it kept); depth from 1."""
        a = self.acceptance
        if isinstance(a, float):
            return a
        return a[min(depth, len(a)) - 1]


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
    guess adds prod_{j<=i} a_j expected tokens (it counts only if all guesses before it
    are kept; a_j = Candidate.rate(j)).

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
        (-math.log1p(c.rate(1)), i, 1, c.rate(1))
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
            nxt = gain * candidates[i].rate(depth + 1)
            heapq.heappush(heap, (-math.log1p(nxt / expected[i]), i, depth + 1, nxt))
    if not any(num_draft):
        reason = "not_worth_it"
    return Plan(num_draft, reason)


PROBE_EVERY = 16  # declined plans per probe


def probe(plan: Plan, candidates: Sequence[Candidate]) -> Plan:
    """The plan with one candidate fed every guess it has: a step size the cost model
    declined, tried once in a while so that a real step can show it was priced too dear
    (StepCost.observe reshapes the curve). Without it a cost model calibrated beside a
    burst of other work never sees the steps it declines, and a server would stay
    without speculation for its whole life. The candidate extended is the one whose
    extra guesses are expected to yield the most tokens, at least one (a probe then
    pays for itself at the acceptance it has); the plan is returned as it is if none.
    How often, and in which steps, to probe is the caller's."""
    best, best_gain = -1, 1.0
    for i, c in enumerate(candidates):
        kept, gain = 1.0, 0.0
        for depth in range(1, c.max_draft + 1):
            kept *= c.rate(depth)
            if depth > plan.num_draft[i]:
                gain += kept
        if gain >= best_gain:
            best, best_gain = i, gain
    if best < 0:
        return plan
    num_draft = list(plan.num_draft)
    num_draft[best] = candidates[best].max_draft
    return Plan(num_draft, "probe")
