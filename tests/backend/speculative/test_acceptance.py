"""The acceptance estimate: learned per run of agreement, per sequence and engine-wide,
and drifting back when idle."""

from __future__ import annotations

import pytest

from backend.speculative import AcceptanceTracker, RunAcceptance


def test_acceptance_tracker_learns_and_drifts_back_when_idle() -> None:
    t = AcceptanceTracker(RunAcceptance(prior=0.6))
    assert t.rate_at(2) == pytest.approx(0.6)
    for _ in range(20):
        t.record(2, num_drafted=4, num_accepted=0)  # always rejected at once
    assert t.rate_at(2) < 0.15
    for _ in range(600):
        t.idle()
    assert t.rate_at(2) > 0.45  # tried again after a while (the engine's estimate forgets too)
    for _ in range(20):
        t.record(2, num_drafted=4, num_accepted=4)
    assert t.rate_at(2) > 0.9


def test_a_copy_burst_is_learned_per_run() -> None:
    """Short matches that fail at once and long ones that hold (a copy whose first
    guesses pick the wrong occurrence): one average would plan both alike."""
    t = AcceptanceTracker(RunAcceptance(prior=0.6))
    for _ in range(10):
        t.record(2, num_drafted=8, num_accepted=0)
        t.record(12, num_drafted=8, num_accepted=8)
    short, long = t.rates(2, 1)[0], t.rates(12, 8)
    assert short < 0.2
    assert min(long) > 0.9


def test_a_new_sequence_starts_from_what_the_engine_has_seen() -> None:
    shared = RunAcceptance(prior=0.6)
    first = AcceptanceTracker(shared)
    for _ in range(30):
        first.record(2, num_drafted=4, num_accepted=0)
    second = AcceptanceTracker(shared)
    assert second.rate_at(2) < 0.3
    assert second.rate_at(16) == pytest.approx(0.6)  # nothing seen there yet
