"""The semantic cache's error bound: similarity bands served only where the error rate
is bounded with confidence (Clopper-Pearson, Bonferroni over the bands); per-entry
vetoes from an entry's own wrong answers."""

from __future__ import annotations

import random

import pytest

from policies.error_bound import BANDS, EntryEvidence, ErrorBound, error_upper_bound


def test_clopper_pearson_upper_bound() -> None:
    # No error in n: the bound is 1 - alpha ** (1 / n); 149 clean outcomes pass 2%, 148 not.
    assert error_upper_bound(0, 149, 0.05) == pytest.approx(1 - 0.05 ** (1 / 149), abs=1e-9)
    assert error_upper_bound(0, 149, 0.05) < 0.02 < error_upper_bound(0, 148, 0.05)
    assert error_upper_bound(3, 300, 0.05) == pytest.approx(0.0256, abs=5e-4)  # tables
    assert error_upper_bound(0, 0, 0.05) == 1.0
    assert error_upper_bound(5, 5, 0.05) == 1.0


def test_nothing_is_served_before_evidence() -> None:
    bound = ErrorBound(max_error_rate=0.02, floor=0.7)
    assert not any(bound.served_bands())
    assert not bound.allows(0.999)


def test_a_band_is_served_after_enough_right_answers_in_it() -> None:
    bound = ErrorBound(max_error_rate=0.02, confidence=0.95, floor=0.7)
    # Bonferroni over the bands: alpha 0.01 each, so 228 clean outcomes (0.98^228 < 0.01).
    for i in range(228):
        assert not bound.allows(0.95), i
        bound.observe(0.95, False)
    assert bound.allows(0.95) and bound.allows(0.999)  # the top band: 0.94-1.0
    assert not bound.allows(0.93) and not bound.allows(0.75)  # no evidence there


def _fill(bound: ErrorBound, error_by_band: list[float], n: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(n):
        s = rng.uniform(bound.floor, 1.0)
        bound.observe(s, rng.random() < error_by_band[bound.band(s)])


def test_bands_are_judged_each_on_its_own() -> None:
    """Risk need not fall as similarity rises: reversed relations sit near 1.0."""
    bound = ErrorBound(max_error_rate=0.02, floor=0.7)
    _fill(bound, [0.2, 0.002, 0.0, 0.002, 0.15], n=10_000, seed=1)
    assert bound.served_bands() == [False, True, True, True, False]


def test_a_band_as_wrong_as_the_bound_is_never_served() -> None:
    bound = ErrorBound(max_error_rate=0.02, floor=0.7)
    _fill(bound, [0.03] * BANDS, n=10_000, seed=2)
    assert not any(bound.served_bands())


def test_an_entry_is_not_served_again_where_its_answer_was_wrong() -> None:
    bound = ErrorBound(max_error_rate=0.02, floor=0.7)
    _fill(bound, [0.0] * BANDS, n=3000, seed=3)
    entry = EntryEvidence()
    assert bound.allows(0.96, entry)
    bound.observe(0.96, True, entry)  # its answer did not fit a question at 0.96
    assert not bound.allows(0.96, entry) and not bound.allows(0.95, entry)
    assert bound.allows(0.97, entry) and bound.allows(0.96, EntryEvidence())


def test_old_outcomes_age_out() -> None:
    bound = ErrorBound(max_error_rate=0.02, floor=0.7, window=500)
    _fill(bound, [0.0] * BANDS, n=5000, seed=4)
    assert all(bound.served_bands())
    _fill(bound, [0.2] * BANDS, n=5000, seed=5)  # traffic changed
    assert bound.outcomes == 5 * 500
    assert not any(bound.served_bands())


def test_bands_cover_floor_to_one() -> None:
    bound = ErrorBound(max_error_rate=0.02, floor=0.8)
    assert bound.band(0.8) == 0 and bound.band(0.79) == 0 and bound.band(1.0) == BANDS - 1
    assert bound.edges(0) == pytest.approx((0.8, 0.84))
    assert bound.edges(BANDS - 1) == pytest.approx((0.96, 1.0))


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        ErrorBound(max_error_rate=0)
    with pytest.raises(ValueError):
        ErrorBound(max_error_rate=0.02, confidence=1)
