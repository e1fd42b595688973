from __future__ import annotations

import math

import pytest

from policies.rate_limit import (
    Bucket,
    Decision,
    duration,
    keep_s,
    period,
    prompt_tokens,
    reservation,
    retry_after,
    spend,
    take,
)

T0 = 1_700_000_000.0  # epoch seconds, as the plugin's clock gives them (2023-11-14 22:13:20Z)


def _run(
    costs: list[tuple[float, float]], rate: float, burst: float
) -> tuple[list[Decision], Bucket | None]:
    """Takes (now, cost) in order, keeping the state as a store would."""
    state: Bucket | None = None
    decisions = []
    for now, cost in costs:
        decision, kept = take(state, cost, rate, burst, now)
        decisions.append(decision)
        state = kept if kept is not None else state
    return decisions, state


def test_a_full_bucket_allows_a_burst_of_the_whole_limit_then_refuses() -> None:
    decisions, state = _run([(T0, 1)] * 4, rate=3 / 60, burst=3)
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[0].reset_s == pytest.approx(20)  # one request's worth to refill
    assert decisions[2].reset_s == pytest.approx(60)
    assert decisions[3].retry_after_s == pytest.approx(20)
    assert state == Bucket(3.0, T0)  # the refusal changed nothing


def test_the_bucket_refills_at_the_rate() -> None:
    rate, burst = 3 / 60, 3
    _, state = _run([(T0, 1)] * 3, rate, burst)
    d, _ = take(state, 1, rate, burst, T0 + 19.9)
    assert not d.allowed and d.retry_after_s == pytest.approx(0.1)
    d, state = take(state, 1, rate, burst, T0 + 20)
    assert d.allowed and d.remaining == pytest.approx(0)
    assert state is not None
    # Long idle: full again, never more than the burst.
    d, _ = take(state, 1, rate, burst, T0 + 3600)
    assert d.allowed and d.remaining == pytest.approx(2)


def test_exactly_at_the_limit_is_allowed_whatever_the_float_dust() -> None:
    # 100 per minute: one every 0.6 s, and 0.6 * (100 / 60) is 0.9999999999999999.
    rate, burst = 100 / 60, 100
    _, state = _run([(T0, 1)] * 100, rate, burst)
    for i in range(1, 51):
        d, kept = take(state, 1, rate, burst, T0 + 0.6 * i)
        assert d.allowed, i
        state = kept
    d, _ = take(state, 1, rate, burst, T0 + 30.3)
    assert not d.allowed


def test_a_cost_above_one_needs_that_much_room() -> None:
    rate, burst = 100 / 60, 100
    d, state = take(None, 70, rate, burst, T0)
    assert d.allowed and d.remaining == pytest.approx(30)
    d, kept = take(state, 40, rate, burst, T0)
    assert not d.allowed and kept is None
    assert d.retry_after_s == pytest.approx(10 / rate)  # 10 more must drain
    d, _ = take(state, 30, rate, burst, T0)  # a smaller one still fits
    assert d.allowed and d.remaining == pytest.approx(0)
    d, _ = take(state, 40, rate, burst, T0 + 6)
    assert d.allowed


def test_a_cost_above_the_burst_never_fits() -> None:
    d, kept = take(None, 101, 100 / 60, 100, T0)
    assert not d.allowed and kept is None and d.retry_after_s == math.inf


def test_a_refund_gives_back_but_never_past_full() -> None:
    rate, burst = 1.0, 100
    _, state = take(None, 80, rate, burst, T0)
    d, state = take(state, -50, rate, burst, T0)
    assert d.allowed and d.remaining == pytest.approx(70)
    d, state = take(state, -500, rate, burst, T0)
    assert state == Bucket(0.0, T0) and d.remaining == 100 and d.reset_s == 0


def test_a_forced_charge_goes_into_debt_and_later_takes_wait() -> None:
    rate, burst = 1.0, 100
    _, state = take(None, 90, rate, burst, T0)
    d, state = take(state, 30, rate, burst, T0, force=True)  # the answer used more
    assert d.allowed and d.remaining == 0 and d.reset_s == pytest.approx(120)
    d, _ = take(state, 1, rate, burst, T0 + 20)
    assert not d.allowed and d.retry_after_s == pytest.approx(1)
    d, _ = take(state, 1, rate, burst, T0 + 21)
    assert d.allowed


def test_a_clock_going_backwards_refills_nothing_and_waits_the_gap() -> None:
    rate, burst = 1.0, 10
    _, state = take(None, 10, rate, burst, T0)
    d, kept = take(state, 1, rate, burst, T0 - 5)  # a replica whose clock is behind
    assert not d.allowed and kept is None
    assert d.retry_after_s == pytest.approx(6) and d.reset_s == pytest.approx(15)
    d, state = take(state, -3, rate, burst, T0 - 5)  # refunds still apply
    assert state == Bucket(7.0, T0)  # the stamp never goes back
    d, _ = take(state, 1, rate, burst, T0 + 1)  # the refill counts from the stamp
    assert d.allowed and d.remaining == pytest.approx(3)


def test_zero_cost_reads_the_bucket() -> None:
    _, state = take(None, 5, 1.0, 10, T0)
    d, kept = take(state, 0, 1.0, 10, T0 + 2)
    assert d.allowed and d.remaining == pytest.approx(7) and kept == Bucket(3.0, T0 + 2)


def test_keep_state_until_full_at_least() -> None:
    assert keep_s(Bucket(30, T0), 1.0, T0, 60) == 60
    assert keep_s(Bucket(90, T0), 1.0, T0, 60) == 90  # in debt: longer than the window
    assert keep_s(Bucket(90, T0), 0.0, T0, 600) == 600  # a budget: the caller's period


# --- budgets -------------------------------------------------------------------------------


def test_periods_are_utc_days() -> None:
    index, ends_in = period(T0, 86400)
    assert index == 19675 and ends_in == pytest.approx(6400)  # 22:13:20 -> midnight
    assert period(86400 * 3, 86400) == (3, 86400)


def test_a_budget_spends_until_the_period_ends() -> None:
    d, state = spend(None, 600, 1000, 86400, T0)
    assert d.allowed and d.remaining == 400 and d.reset_s == pytest.approx(6400)
    d, kept = spend(state, 500, 1000, 86400, T0 + 1000)  # nothing drains within the day
    assert not d.allowed and kept is None and d.retry_after_s == pytest.approx(5400)
    d, state = spend(state, 400, 1000, 86400, T0 + 1000)  # exactly the rest
    assert d.allowed and d.remaining == 0
    d, _ = spend(state, 1, 1000, 86400, T0 + 6400)  # the next day
    assert d.allowed and d.remaining == 999 and d.reset_s == pytest.approx(86400)


def test_a_budget_refuses_what_could_never_fit() -> None:
    d, kept = spend(None, 1001, 1000, 86400, T0)
    assert not d.allowed and kept is None and d.retry_after_s == math.inf
    _, state = spend(None, 10, 1000, 86400, T0)
    d, _ = spend(state, 1001, 1000, 86400, T0)
    assert d.retry_after_s == math.inf and d.reset_s == pytest.approx(6400)


# --- costs and headers ---------------------------------------------------------------------


def test_prompt_estimate_counts_text_not_structure() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 9999}}
    parts = [{"type": "text", "text": "y" * 20}, image]  # 4 + 20 chars, 9 ("image_url")
    chat = {
        "model": "m" * 400,  # not part of the prompt
        "messages": [
            {"role": "user", "content": "x" * 36},  # 4 + 36 chars
            {"role": "user", "content": parts},  # 4 + the parts
        ],
        "max_tokens": 10**6,
    }
    assert prompt_tokens(chat) == math.ceil((40 + 4 + 24 + 9) / 4)  # an image's URL does not
    assert prompt_tokens({"prompt": [1, 2, 3]}) == 3  # token ids
    assert prompt_tokens({"input": ["abcd", "efgh"]}) == 2
    assert prompt_tokens({}) == 0


def test_reservation_holds_the_prompt_and_the_most_it_may_generate() -> None:
    assert reservation(10, 100, 1, 512, math.inf) == 110
    assert reservation(10, 100, 3, 512, math.inf) == 310
    assert reservation(10, None, 1, 512, math.inf) == 522
    assert reservation(10, None, 1, 512, 200) == 200  # the default is cut to fit the limit
    assert reservation(10, 1000, 1, 512, 200) == 1010  # an explicit maximum is not


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-1, "0s"),
        (math.inf, "0s"),
        (0.0004, "1ms"),
        (0.02, "20ms"),
        (0.9999, "1s"),
        (1, "1s"),
        (1.5, "1.5s"),
        (6.125, "6.125s"),
        (59.99, "59.99s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (90.5, "1m30.5s"),
        (3723, "1h2m3s"),
        (6400, "1h46m40s"),
        (20.000000001, "20s"),
    ],
)
def test_durations_read_as_openai_writes_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    assert [retry_after(s) for s in (0.0, 0.2, 1.0, 1.01, 19.9, 20.0000001)] == [1, 1, 1, 2, 20, 20]
