"""Speculative decoding's pure logic: prompt lookup, acceptance tracking, the step-cost
curve and the planner; and verification, including that rejection sampling leaves the
target's distribution unchanged (a statistical test over many seeded draws)."""

from __future__ import annotations

import random

import pytest
import torch

from backend.sampler import SampleRequest, SamplingParams
from backend.spec_verify import verify_draft
from backend.speculative import (
    AcceptanceTracker,
    Candidate,
    NgramIndex,
    SpeculativeConfig,
    StepCost,
    plan_drafts,
)


def _brute_force(tokens: list[int], k: int, lo: int, hi: int) -> list[int]:
    for n in range(min(hi, len(tokens) - 1), lo - 1, -1):
        suffix = tokens[-n:]
        for end in range(len(tokens) - 1, n - 1, -1):  # latest occurrence ending before len
            if tokens[end - n : end] == suffix:
                return tokens[end : end + k]
    return []


def test_ngram_continues_the_latest_earlier_occurrence() -> None:
    index = NgramIndex(2, 4)
    tokens = [1, 2, 3, 4, 9, 1, 2, 3, 5, 7, 1, 2, 3]
    # suffix [1, 2, 3] occurred twice before; the latest one was followed by 5, 7
    assert index.propose(tokens, 3) == [5, 7, 1]
    assert index.propose([5, 6], 3) == []  # no earlier occurrence at all


def test_ngram_prefers_the_longest_match() -> None:
    index = NgramIndex(1, 3)
    tokens = [7, 8, 9, 1, 5, 9, 2, 7, 8, 9]
    # [8, 9] / [7, 8, 9] occurred at the start (-> 1); a bare [9] later (-> 2)
    assert index.propose(tokens, 1) == [1]


def test_ngram_index_grown_incrementally_matches_brute_force() -> None:
    rng = random.Random(7)
    tokens: list[int] = []
    index = NgramIndex(1, 3)
    for _ in range(400):
        tokens.append(rng.randrange(6))
        if rng.random() < 0.5:  # lookups at irregular points, as a sequence grows
            assert index.propose(tokens, 4) == _brute_force(tokens, 4, 1, 3)


def test_acceptance_tracker_learns_and_drifts_back_when_idle() -> None:
    t = AcceptanceTracker(prior=0.6)
    assert t.rate == pytest.approx(0.6)
    for _ in range(20):
        t.record(num_drafted=4, num_accepted=0)  # always rejected at once
    assert t.rate < 0.15
    for _ in range(60):
        t.idle()
    assert t.rate > 0.5  # tried again after a while
    for _ in range(20):
        t.record(num_drafted=4, num_accepted=4)
    assert t.rate > 0.9


def test_step_cost_interpolates_and_never_decreases() -> None:
    cost = StepCost()
    for n, s in [(1, 0.010), (8, 0.012), (16, 0.020), (17, 0.015), (64, 0.080)]:
        cost.calibrate(n, s)
    assert cost(1) == pytest.approx(0.010)
    assert cost(4) == pytest.approx(0.010 + 0.002 * 3 / 7)
    assert cost(17) == pytest.approx(0.020)  # a point below its left neighbour is lifted
    assert cost(128) == pytest.approx(0.160)  # proportional beyond the last point
    values = [cost(n) for n in range(1, 200)]
    assert values == sorted(values)


def test_real_steps_rescale_the_calibrated_shape() -> None:
    cost = _cost({1: 0.010, 16: 0.020})
    for _ in range(200):
        cost.observe(1, 0.015)  # the machine got 1.5x slower
    assert cost(1) == pytest.approx(0.015, rel=0.01)
    assert cost(16) == pytest.approx(0.030, rel=0.01)  # the shape is kept
    cost.observe(16, 100.0)  # one wild outlier moves it by at most alpha * 2x
    assert cost(16) < 0.030 * 1.1


def _cost(points: dict[int, float]) -> StepCost:
    cost = StepCost()
    for n, s in points.items():
        cost.calibrate(n, s)
    return cost


FLAT_THEN_LINEAR = {1: 1.0, 16: 1.1, 32: 2.0, 64: 4.0, 128: 8.0}


def test_planner_speculates_when_steps_are_memory_bound() -> None:
    plan = plan_drafts([Candidate(0.8, 8)], base_tokens=1, cost=_cost(FLAT_THEN_LINEAR))
    assert plan.num_draft == [8]
    assert plan.reason == "max_draft"


def test_planner_gives_more_guesses_to_the_better_sequence() -> None:
    cost = _cost({1: 1.0, 4: 1.05, 8: 1.6, 16: 3.2})
    plan = plan_drafts([Candidate(0.3, 8), Candidate(0.9, 8)], base_tokens=2, cost=cost)
    assert plan.num_draft[1] > plan.num_draft[0]


def test_planner_stops_speculating_under_a_compute_bound_batch() -> None:
    cost = _cost(FLAT_THEN_LINEAR)
    plan = plan_drafts([Candidate(0.7, 8)] * 64, base_tokens=64, cost=cost)
    assert plan.num_draft == [0] * 64
    assert plan.reason == "not_worth_it"


def test_step_cost_adds_attention_to_the_weights_part() -> None:
    cost = _cost({8: 0.042})
    cost.attention = 1e-6  # seconds per attended context token
    assert cost(8) == pytest.approx(0.042)
    assert cost(8, attended=8 * 2000) == pytest.approx(0.058)
    cost.observe(8, 0.058 * 1.2, attended=8 * 2000)  # slower than predicted: both scale
    assert cost(8) > 0.042 and cost(8, attended=8 * 2000) > 0.058


def test_planner_counts_what_guesses_attend_to() -> None:
    """Flat weights' part: guesses over a short context pay, over a very long one (where
    every verify row reads the whole KV history) they do not."""
    cost = _cost({1: 1.0, 16: 1.05})
    cost.attention = 1e-3
    short = plan_drafts([Candidate(0.9, 8, context=10)], 1, cost, base_attended=10)
    assert short.num_draft == [8]
    long = plan_drafts([Candidate(0.9, 8, context=20_000)], 1, cost, base_attended=20_000)
    assert long.num_draft == [0] and long.reason == "not_worth_it"


def test_planner_without_proposals() -> None:
    plan = plan_drafts([Candidate(0.9, 0)], base_tokens=1, cost=_cost(FLAT_THEN_LINEAR))
    assert plan.num_draft == [0] and plan.reason == "no_proposal"


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="method"):
        SpeculativeConfig(method="eagle")
    with pytest.raises(ValueError, match="max_draft_tokens"):
        SpeculativeConfig(max_draft_tokens=0)


# ---- verification -----------------------------------------------------------------------


def test_greedy_verify_keeps_the_matching_prefix_then_corrects() -> None:
    logits = torch.full((4, 10), -5.0)
    for row, best in enumerate([3, 4, 8, 1]):
        logits[row, best] = 5.0
    row = SampleRequest(SamplingParams(temperature=0.0), None)
    assert [r.token_id for r in verify_draft(logits, [3, 4, 5], row)] == [3, 4, 8]
    assert [r.token_id for r in verify_draft(logits, [3, 4, 8], row)] == [3, 4, 8, 1]  # bonus
    assert [r.token_id for r in verify_draft(logits, [0, 4, 8], row)] == [3]


def test_greedy_verify_applies_penalties_over_the_guesses() -> None:
    # Row 1's best token is 2, but 2 was just guessed: a repetition penalty makes 5 win,
    # exactly as plain decoding after emitting 2 would.
    logits = torch.zeros(2, 6)
    logits[0, 2] = 3.0
    logits[1, 2], logits[1, 5] = 3.0, 2.0
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    row = SampleRequest(params, None, [0], [])
    assert [r.token_id for r in verify_draft(logits, [2], row)] == [2, 5]


VOCAB = 5
TARGET = torch.tensor([1.0, 0.2, -0.5, 0.7, 0.0])
DRAFT_Q = torch.tensor([0.5, 0.1, 0.1, 0.2, 0.1])


def _chi_square_ok(counts: torch.Tensor, probs: torch.Tensor) -> bool:
    expected = probs * counts.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    return chi2 < 20.5  # p = 0.0004 at 4 degrees of freedom: fails only when wrong


@pytest.mark.parametrize("with_q", [False, True], ids=["point-mass guess", "draft distribution"])
def test_rejection_sampling_preserves_the_target_distribution(with_q: bool) -> None:
    params = SamplingParams(temperature=1.0, seed=0)
    gen = torch.Generator().manual_seed(1234)
    guess_gen = torch.Generator().manual_seed(99)
    p = torch.softmax(TARGET, dim=-1).unsqueeze(0)
    first = torch.zeros(VOCAB)
    second_given_first = torch.zeros(VOCAB, VOCAB)
    draws = 5_000
    for _ in range(draws):
        if with_q:
            g0, g1 = torch.multinomial(DRAFT_Q, 2, replacement=True, generator=guess_gen).tolist()
            q = DRAFT_Q.expand(2, VOCAB)
        else:
            g0, g1, q = 0, 1, None  # fixed guesses, as prompt lookup makes them
        out = verify_draft(
            TARGET.clone().expand(3, VOCAB).contiguous(), [g0, g1], SampleRequest(params, gen), q
        )
        t = [r.token_id for r in out]
        first[t[0]] += 1
        if len(t) > 1:
            second_given_first[t[0], t[1]] += 1
    assert _chi_square_ok(first, p[0])
    # The second token, whatever the first was, also follows the target (rows are equal
    # here, so its distribution is p too).
    assert _chi_square_ok(second_given_first.sum(0), p[0])


def test_planner_charges_a_model_proposers_passes() -> None:
    """Guesses that would pay if free stop paying once each depth costs a draft pass."""
    cost = _cost({1: 1.0, 16: 1.05})
    free = plan_drafts([Candidate(0.5, 8)], 1, cost)
    assert free.num_draft[0] >= 2
    paid = plan_drafts([Candidate(0.5, 8)], 1, cost, draft_pass=0.5)
    assert paid.num_draft == [0]
