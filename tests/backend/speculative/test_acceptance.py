"""The per-sequence acceptance estimate: learns, and drifts back to the prior when idle."""

from __future__ import annotations

import pytest

from backend.speculative import AcceptanceTracker


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
