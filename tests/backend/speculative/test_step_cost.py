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


def test_step_cost_adds_attention_to_the_weights_part() -> None:
    cost = _cost({8: 0.042})
    cost.attention = 1e-6  # seconds per attended context token
    assert cost(8) == pytest.approx(0.042)
    assert cost(8, attended=8 * 2000) == pytest.approx(0.058)
    cost.observe(8, 0.058 * 1.2, attended=8 * 2000)  # slower than predicted: both scale
    assert cost(8) > 0.042 and cost(8, attended=8 * 2000) > 0.058
