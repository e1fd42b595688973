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
    ProposalRequest,
    Proposer,
    SpeculativeConfig,
    StepCost,
    plan_drafts,
)
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
        self.proposer = build_proposer(config, runner)

    def wants(self, params: SamplingParams) -> bool:
        """Whether a request speculates: as it asks, else the server's default."""
        if params.speculative is None:
            return not self.config.speculative_opt_in
        return params.speculative

    def new_state(self) -> SpecState:
        ngram = None
        if self.config.method == "ngram":
            ngram = NgramIndex(self.config.ngram_min, self.config.ngram_max)
        return SpecState(AcceptanceTracker(self.config.prior_acceptance), ngram)

    def propose(self, requests: Mapping[int, Request]) -> None:
        """Sets seq.draft for the running decodes whose guesses the planner finds worth
        their cost this step (`requests`: by seq_id)."""
        decodes = self._decodes(requests)
        if not decodes:
            return
        proposals = [p for _, _, p in decodes]
        if self.proposer.lazy:  # a model proposer: plan first, then guess what is planned
            candidates = [
                Candidate(s.tracker.rate, p.max_tokens, r.seq.num_tokens) for r, s, p in decodes
            ]
            plan = self._plan(candidates)
            # Placeholders: the step is scheduled with them, then fill() guesses.
            drafts = [[0] * k for k in plan.num_draft]
        else:  # cheap guesses first, so the plan sees how many each sequence has
            guesses = self.proposer.propose(proposals)
            candidates = [
                Candidate(s.tracker.rate, len(g), r.seq.num_tokens)
                for (r, s, _), g in zip(decodes, guesses, strict=True)
            ]
            plan = self._plan(candidates)
            drafts = [g[:k] for g, k in zip(guesses, plan.num_draft, strict=True)]
        self.metrics.on_plan(plan.reason)
        for (req, spec, _), draft in zip(decodes, drafts, strict=True):
            req.seq.draft = list(draft)
            if not draft:
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
        req.spec.tracker.record(num_drafted, num_accepted)
        req.spec.accepted += num_accepted
        req.spec.rejected += num_drafted - num_accepted
        self.metrics.on_verify(num_drafted, num_accepted)

    def calibrate(self) -> None:
        """Times forward steps of 1..128 tokens, and one-query rows over a short and a long
        context: the shape of this machine's cost (StepCost); real steps then only rescale
        it. Call while the cache holds nothing in use.

        The sizes are timed in interleaved passes, each size's best kept: other work on
        the machine (a busy core, a neighbour's burst) then falls on every size alike
        instead of on whichever sizes were being timed when it came. Timed one size
        after another, a quiet one-token point beside slowed larger ones made every guess
        look dear for the server's whole life."""
        # Both sides of where the few-row matmul hands over to BLAS, where the curve jumps.
        edges = (SKINNY_MAX_ROWS, SKINNY_MAX_ROWS + 1)
        sizes = sorted({1, 2, 4, 8, 12, *edges, 24, 32, 48, 64, 128})
        sizes = [n for n in sizes if n <= self.max_model_len]
        self.runner.time_forward(sizes[-1])  # warm-up: first calls allocate and pick kernels
        best = _interleaved_best([(n, 0) for n in sizes], self.runner.time_forward)
        for n in sizes:
            self.step_cost.calibrate(n, best[(n, 0)])
        rows, short, long = 8, 16, min(1024, self.max_model_len)
        if long > 4 * short:
            timed = _interleaved_best([(rows, short), (rows, long)], self.runner.time_forward)
            t_short, t_long = timed[(rows, short)], timed[(rows, long)]
            self.step_cost.attention = max(t_long - t_short, 0.0) / (rows * (long - short))
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
        return plan_drafts(
            candidates,
            base_tokens,
            self.step_cost,
            attended,
            num_seqs,
            self.proposer.pass_seconds,
        )


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
