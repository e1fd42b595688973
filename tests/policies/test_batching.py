from __future__ import annotations

import itertools
import math
import random

import pytest

from policies.batching import BatchWindow, group_by_length


def test_waits_for_the_rest_of_the_window_then_flushes() -> None:
    w = BatchWindow(window_s=0.010, max_batch=8)
    d = w.decide(oldest=1.000, queued=3, now=1.004)
    assert not d.flush and d.wait_s == pytest.approx(0.006)
    assert w.decide(oldest=1.000, queued=3, now=1.010).flush
    assert w.decide(oldest=1.000, queued=3, now=5.000).flush


def test_a_full_batch_flushes_at_once() -> None:
    w = BatchWindow(window_s=0.010, max_batch=8)
    assert w.decide(oldest=1.0, queued=8, now=1.0).flush
    assert w.decide(oldest=1.0, queued=100, now=1.0).flush


def test_nothing_queued_waits_for_an_arrival() -> None:
    d = BatchWindow().decide(oldest=0.0, queued=0, now=10.0)
    assert not d.flush and d.wait_s == math.inf


def test_zero_window_flushes_every_arrival() -> None:
    assert BatchWindow(window_s=0.0).decide(oldest=2.0, queued=1, now=2.0).flush


def test_a_clock_going_backwards_never_stretches_the_window() -> None:
    d = BatchWindow(window_s=0.010).decide(oldest=5.0, queued=1, now=4.0)
    assert not d.flush and d.wait_s == pytest.approx(0.010)


def test_the_window_opens_when_the_model_goes_idle() -> None:
    w = BatchWindow(window_s=0.010, max_batch=64)
    # Queued at 1.0 while the model was busy until 1.5: it waits with the next arrivals.
    d = w.decide(oldest=1.0, queued=1, now=1.502, idle_since=1.5)
    assert not d.flush and d.wait_s == pytest.approx(0.008)
    assert w.decide(oldest=1.0, queued=1, now=1.510, idle_since=1.5).flush


def test_as_many_as_the_last_batch_go_at_once() -> None:
    w = BatchWindow(window_s=0.010, max_batch=64)
    assert w.decide(oldest=1.0, queued=1, now=1.0, expected=1).flush  # a lone caller
    assert not w.decide(oldest=1.0, queued=31, now=1.0, expected=32).flush
    assert w.decide(oldest=1.0, queued=32, now=1.0, expected=32).flush
    assert not w.decide(oldest=1.0, queued=1, now=1.0, expected=None).flush


def test_take_caps_at_max_batch() -> None:
    w = BatchWindow(max_batch=4)
    assert [w.take(n) for n in (0, 1, 4, 9)] == [0, 1, 4, 4]


@pytest.mark.parametrize(
    ("window_s", "max_batch"), [(-0.001, 8), (math.inf, 8), (math.nan, 8), (0.01, 0)]
)
def test_rejects_bad_settings(window_s: float, max_batch: int) -> None:
    with pytest.raises(ValueError):
        BatchWindow(window_s=window_s, max_batch=max_batch)


def test_similar_lengths_share_one_grid() -> None:
    assert group_by_length([]) == []
    assert group_by_length([7]) == [1]
    assert group_by_length([12] * 64) == [64]
    assert group_by_length([5, 6, 8, 9, 11, 12]) == [6]


def test_one_long_text_does_not_pad_the_short_ones() -> None:
    assert group_by_length([5] * 63 + [256]) == [63, 64]


def test_rejects_unsorted_lengths() -> None:
    with pytest.raises(ValueError):
        group_by_length([3, 2])


def _cost(lengths: list[int], ends: list[int], group: float, row: float) -> float:
    total, start = 0.0, 0
    for end in ends:
        n, longest = end - start, lengths[end - 1]
        total += group + n * longest * (longest + row)
        start = end
    return total


@pytest.mark.parametrize("seed", range(20))
def test_grouping_is_the_cheapest_of_all_splits(seed: int) -> None:
    rng = random.Random(seed)
    lengths = sorted(rng.randint(1, 256) for _ in range(rng.randint(1, 9)))
    ends = group_by_length(lengths, group_cost=3000.0, row_cost=40.0)
    assert ends[-1] == len(lengths) and ends == sorted(set(ends))
    n = len(lengths)
    best = min(
        _cost(lengths, [*cuts, n], 3000.0, 40.0)
        for k in range(n)
        for cuts in itertools.combinations(range(1, n), k)
    )
    assert _cost(lengths, ends, 3000.0, 40.0) == pytest.approx(best)
