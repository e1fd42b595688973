"""Speculative decoding in the step loop: which running decodes guess this step and how
many guesses each feeds, guessing, what verification kept, and the start-up calibration
of this machine's step cost. The pieces it uses are in backend/speculative/."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from collections.abc import Sequence as Seq

from backend.linear import SKINNY_MAX_ROWS
from backend.metrics import EngineMetrics
from backend.request import Request, SpecState
from backend.runner import ModelRunner
from backend.sampling_params import SamplingParams
from backend.scheduler import Scheduler
from backend.sequence import Sequence
from backend.speculative import (
    AcceptanceTracker,
    Candidate,
    NgramIndex,
    NgramProposer,
    Plan,
    Proposal,
    ProposalRequest,
    Proposer,
    RunAcceptance,
    SpeculativeConfig,
    StepCost,
    plan_drafts,
)
from backend.speculative.planner import PROBE_EVERY, probe
from backend.speculative.self_draft import SelfDraftProposer


def build_proposer(config: SpeculativeConfig, runner: ModelRunner) -> Proposer:
    if config.method == "ngram":
        return NgramProposer()
    if config.method == "self-draft":
        return SelfDraftProposer(runner, config.self_draft_layers)
    raise ValueError(f"speculative method {config.method!r} is not available")


class Speculation:
    def __init__(
        self,
        config: SpeculativeConfig,
        runner: ModelRunner,
        scheduler: Scheduler,
        metrics: EngineMetrics,
        max_model_len: int,
    ) -> None:
        self.config = config
        self.runner = runner
        self.scheduler = scheduler
        self.metrics = metrics
        self.max_model_len = max_model_len
        self.step_cost = StepCost()
        self._declined = 0  # plans that stopped short of the guesses on offer (probes)
        # What every sequence's acceptance estimate starts from: this engine's experience.
        self.acceptance = RunAcceptance(config.prior_acceptance)
        self.proposer = build_proposer(config, runner)

    def wants(self, params: SamplingParams) -> bool:
        """Whether a request speculates: as it asks, else the server's default. Never under
        a grammar: guesses would have to be checked against it token by token."""
        if params.grammar is not None:
            return False
        if params.speculative is None:
            return not self.config.speculative_opt_in
        return params.speculative

    def new_state(self) -> SpecState:
        ngram = None
        if self.config.method == "ngram":
            ngram = NgramIndex(self.config.ngram_min, self.config.ngram_max)
        return SpecState(AcceptanceTracker(self.acceptance), ngram)

    def propose(self, requests: Mapping[int, Request]) -> None:
        """Sets seq.draft for the running decodes whose guesses the planner finds worth
        their cost this step (`requests`: by seq_id)."""
        decodes = self._decodes(requests)
        if not decodes:
            return
        if self.proposer.lazy:  # a model proposer: plan first, then guess what is planned
            # Placeholders: the step is scheduled with them, then fill() guesses.
            proposals = [Proposal([0] * p.max_tokens) for _, _, p in decodes]
        else:  # cheap guesses first, so the plan sees how many each sequence has
            proposals = self.proposer.propose([p for _, _, p in decodes])
        candidates = [
            Candidate(s.tracker.rates(g.run, len(g.tokens)), len(g.tokens), r.seq.num_tokens)
            for (r, s, _), g in zip(decodes, proposals, strict=True)
        ]
        plan = self._plan(candidates)
        self.metrics.on_plan(plan.reason)
        for (req, spec, _), g, k in zip(decodes, proposals, plan.num_draft, strict=True):
            req.seq.draft = g.tokens[:k]
            spec.run = g.run
            if not k:
                spec.tracker.idle()

    def fill(self, seqs: Seq[Sequence]) -> None:
        """A model proposer's guesses, in place of the placeholders, once the step that
        feeds them is scheduled (their KV slots exist)."""
        if self.proposer.lazy:
            guessing = [s for s in seqs if s.draft]
            if guessing:
                self.proposer.fill(guessing)

    def record(self, req: Request, num_drafted: int, num_accepted: int) -> None:
        """What verification kept of a request's guesses this step."""
        if req.spec is None or not num_drafted:
            return
        req.spec.tracker.record(req.spec.run, num_drafted, num_accepted)
        req.spec.accepted += num_accepted
        req.spec.rejected += num_drafted - num_accepted
        self.metrics.on_verify(num_drafted, num_accepted)

    def calibrate(self) -> None:
        """Times forward steps of 1..128 one-query rows (what decodes and verify rows are)
        over a short context, and 8 rows over a long one: the shape of this machine's
        cost (StepCost), which real steps rescale (and reshape where it is far off). Call
        while the cache holds nothing in use.

        Rows, not a prefill of as many tokens: a few rows take the fused decode layer
        (model.py), a prefill the per-operation path, which on packed weights cost 2-3x
        more a step and made every guess look dear. The shapes are timed in interleaved
        passes, each one's best kept: other work on the machine (a busy core, a
        neighbour's burst) then falls on every shape alike instead of on whichever were
        being timed when it came. Timed one after another, a quiet one-token point beside
        slowed larger ones made every guess look dear for the server's whole life."""
        # Both sides of where the few-row matmul hands over to BLAS, where the curve jumps.
        edges = (SKINNY_MAX_ROWS, SKINNY_MAX_ROWS + 1)
        short, long, rows = min(16, self.max_model_len - 1), min(1024, self.max_model_len), 8
        sizes = sorted({1, 2, 4, 8, 12, *edges, 24, 32, 48, 64, 128})
        sizes = [n for n in sizes if n + short <= self.max_model_len] or [1]
        shapes = [(n, short) for n in sizes]
        if long > 4 * short:
            shapes.append((rows, long))
        self.runner.time_forward(sizes[-1], short)  # warm-up: first calls allocate, pick kernels
        best = _interleaved_best(shapes, self.runner.time_forward)
        for n in sizes:
            self.step_cost.calibrate(n, best[(n, short)])
        if (rows, long) in best:
            extra = best[(rows, long)] - best[(rows, short)]
            self.step_cost.attention = max(extra, 0.0) / (rows * (long - short))
        calibrate = getattr(self.proposer, "calibrate", None)
        if calibrate is not None:
            calibrate()

    def _decodes(
        self, requests: Mapping[int, Request]
    ) -> list[tuple[Request, SpecState, ProposalRequest]]:
        """The running decodes of speculating requests that have room for a guess."""
        out = []
        for seq in self.scheduler.running:
            req = requests[seq.seq_id]
            if req.spec is None or seq.num_uncomputed_tokens != 1:
                continue
            # Guesses past max_tokens or the context window could never be used.
            room = min(
                self.config.num_speculative_tokens,
                req.max_tokens - seq.num_output_tokens - 1,
                self.max_model_len - seq.num_tokens,
            )
            if room > 0:
                out.append((req, req.spec, ProposalRequest(seq.token_ids, room, req.spec.ngram)))
        return out

    def _plan(self, candidates: list[Candidate]) -> Plan:
        if not self.config.adaptive_speculation:
            return Plan([c.max_draft for c in candidates], "fixed")
        sched = self.scheduler
        base_tokens = min(
            sched.config.max_num_batched_tokens,
            sum(s.num_uncomputed_tokens for s in sched.running)
            + sum(s.num_uncomputed_tokens for s in sched.waiting),
        )
        attended = sum(s.num_tokens for s in sched.running if s.num_uncomputed_tokens == 1)
        num_seqs = len(sched.running) + len(sched.waiting)
        plan = plan_drafts(
            candidates,
            base_tokens,
            self.step_cost,
            attended,
            num_seqs,
            self.proposer.pass_seconds,
        )
        if plan.reason != "not_worth_it":
            return plan
        self._declined += 1
        if self._declined % PROBE_EVERY:
            return plan
        probed = probe(plan, candidates)
        # Probes only where speculation can pay at all: steps of few rows, in the fused
        # kernels' range. Past it a step is compute-bound and declining is right; probes
        # there (one in 16 declined plans) measured 0.92x of no speculation at 64
        # concurrent requests, 1.01x without them.
        if base_tokens + sum(probed.num_draft) > SKINNY_MAX_ROWS:
            return plan
        return probed


CALIBRATION_PASSES = 3  # as many timings per size as before interleaving: no more luck


def _interleaved_best(
    shapes: list[tuple[int, int]], time_forward: Callable[[int, int], float]
) -> dict[tuple[int, int], float]:
    """The fastest of CALIBRATION_PASSES timings of each (tokens, context) shape, the
    shapes taken in turn within each pass."""
    best = dict.fromkeys(shapes, math.inf)
    for _ in range(CALIBRATION_PASSES):
        for shape in shapes:
            best[shape] = min(best[shape], time_forward(*shape))
    return best
