"""The planner: guesses where a step is memory-bound and they pay, none where not."""

from __future__ import annotations

from backend.speculative import Candidate, Plan, StepCost, plan_drafts
from backend.speculative.planner import probe


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


def test_planner_charges_a_model_proposers_passes() -> None:
    """Guesses that would pay if free stop paying once each depth costs a draft pass."""
    cost = _cost({1: 1.0, 16: 1.05})
    free = plan_drafts([Candidate(0.5, 8)], 1, cost)
    assert free.num_draft[0] >= 2
    paid = plan_drafts([Candidate(0.5, 8)], 1, cost, draft_pass=0.5)
    assert paid.num_draft == [0]


def test_planner_follows_acceptance_by_depth() -> None:
    """A copy's burst: the first guess is a coin toss, the ones after it near certain.
    With the same average rate everywhere the planner stops early; given rates by depth
    it feeds the whole proposal."""
    cost = _cost({1: 1.0, 4: 1.3, 8: 1.8, 16: 3.0})
    flat = plan_drafts([Candidate(0.5, 8)], 1, cost)
    bursty = plan_drafts([Candidate((0.5, *[0.98] * 7), 8)], 1, cost)
    assert flat.num_draft[0] < 8
    assert bursty.num_draft == [8]
    # and the reverse: a first guess that is likely and later ones that are not
    fading = plan_drafts([Candidate((0.9, 0.1), 8)], 1, cost)
    assert fading.num_draft == [1]


def test_a_probe_feeds_the_most_promising_declined_guesses() -> None:
    """Priced too dear (a bad start-up calibration), guesses that would be kept are
    declined; a probe feeds them once so a real step can correct the price."""
    dear = _cost({1: 0.030, 2: 0.040, 4: 0.120, 8: 0.120, 16: 0.210})
    copy, chat = Candidate(0.95, 8), Candidate(0.2, 8)
    plan = plan_drafts([chat, copy], 2, dear)
    assert plan.reason == "not_worth_it" and plan.num_draft[1] < 8
    probed = probe(plan, [chat, copy])
    assert probed.num_draft == [plan.num_draft[0], 8] and probed.reason == "probe"
    # guesses expected to yield less than a token are never probed
    assert probe(Plan([0], "not_worth_it"), [chat]).num_draft == [0]
