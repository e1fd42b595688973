"""The step-cost model: a calibrated curve, rescaled by real steps, plus attention."""

from __future__ import annotations

import pytest

from backend.speculative import StepCost


def _cost(points: dict[int, float]) -> StepCost:
    cost = StepCost()
    for n, s in points.items():
        cost.calibrate(n, s)
    return cost


def test_step_cost_interpolates_and_never_decreases() -> None:
    cost = StepCost()
    for n, s in [(1, 0.010), (8, 0.012), (16, 0.020), (17, 0.015), (64, 0.080)]:
        cost.calibrate(n, s)
    assert cost(1) == pytest.approx(0.010)
    assert cost(4) == pytest.approx(0.010 + 0.002 * 3 / 7)
    assert cost(12) == pytest.approx(0.012 + 0.003 * 4 / 8)
    assert cost(16) == pytest.approx(0.015)  # a point above a larger step's is lowered
    assert cost(17) == pytest.approx(0.015)
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


def test_step_cost_adds_attention_to_the_weights_part() -> None:
    cost = _cost({8: 0.042})
    cost.attention = 1e-6  # seconds per attended context token
    assert cost(8) == pytest.approx(0.042)
    assert cost(8, attended=8 * 2000) == pytest.approx(0.058)
    cost.observe(8, 0.058 * 1.2, attended=8 * 2000)  # slower than predicted: both scale
    assert cost(8) > 0.042 and cost(8, attended=8 * 2000) > 0.058


def test_one_slowed_point_does_not_make_every_larger_step_dear() -> None:
    """Timed while another process held a core, the two-token step came out twice the
    one-token step, above the four- and eight-token ones: it was the slowed timing."""
    cost = _cost({1: 0.064, 2: 0.127, 4: 0.080, 8: 0.095, 16: 0.160})
    assert cost(2) == pytest.approx(0.080)
    assert cost(2) / cost(1) < 1.3  # a guess still looks as cheap as it is
    assert cost(8) == pytest.approx(0.095)


def test_a_real_step_far_below_its_point_reshapes_the_curve() -> None:
    """Calibrated beside a burst of other work: 4 and 8 rows priced at 4x one row. A real
    step of 8 rows at 1.5x undoes it (and the points below follow: the curve never
    falls); real steps near their prediction only rescale."""
    cost = _cost({1: 0.030, 2: 0.040, 4: 0.120, 8: 0.120, 16: 0.210})
    cost.observe(8, 0.045)
    assert cost(8) == pytest.approx(0.045 / StepCost.TYPICAL)  # one fast step of the usual
    assert cost(4) <= cost(8)
    assert cost(1) == pytest.approx(0.030)
    before = cost(16)
    cost.observe(16, before * 0.85)  # ordinary noise: a nudge to the scale, not a new point
    assert cost(16) == pytest.approx(before * (1 - 0.05 * 0.15))


def test_attention_overpriced_at_start_up_comes_down() -> None:
    cost = _cost({1: 0.010, 16: 0.030})
    cost.attention = 4e-5  # timed under load: 5x what it costs
    predicted = cost(9, attended=9 * 150)
    cost.observe(9, 0.025, attended=9 * 150)
    assert cost.attention < 4e-5
    assert cost(9, attended=9 * 150) == pytest.approx(0.025 / StepCost.TYPICAL)
    assert predicted > 0.060
