from __future__ import annotations

import pytest

from policies.circuit_breaker import CircuitBreaker
from policies.retry import RetryBudget, backoff, parse_retry_after, should_retry


@pytest.mark.parametrize("status", [None, 408, 429, 500, 502, 503, 504])
def test_retries_on_no_answer_429_and_5xx(status: int | None) -> None:
    assert should_retry(status, attempt=1, max_attempts=3)
    assert not should_retry(status, attempt=3, max_attempts=3)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_never_retries_other_4xx(status: int) -> None:
    assert not should_retry(status, attempt=0, max_attempts=3)


def test_retry_budget_caps_retries_at_a_fraction_of_traffic() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=0.0, tokens=0.0)
    spent = 0
    for _ in range(100):
        budget.deposit(now=0.0)
        spent += budget.try_spend(now=0.0)
    assert spent == 20


def test_backoff_is_capped_full_jitter() -> None:
    assert backoff(0, 1.0, 60.0, 0.5) == 0.5
    assert backoff(10, 1.0, 60.0, 0.999) == pytest.approx(59.94)


def test_retry_after_seconds_dates_and_garbage() -> None:
    assert parse_retry_after("7", now=0.0) == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon", now=0.0) is None
    assert parse_retry_after(None, now=0.0) is None
    assert parse_retry_after("999999", now=0.0) == 3600.0


def test_breaker_opens_after_consecutive_failures_and_recovers() -> None:
    b = CircuitBreaker(failure_threshold=3, base_backoff_s=1.0, max_backoff_s=8.0)
    b.record_failure(0.0)
    b.record_success(0.1)  # a success in between resets the count
    for t in (1.0, 1.1, 1.2):
        assert b.allow(t)
        b.record_failure(t)
    assert b.state == "open" and not b.allow(1.5)
    assert b.available(2.3) and b.available(2.3)  # looking has no side effects
    assert b.allow(2.3)  # back-off over: one probe
    assert b.state == "half_open" and not b.allow(2.3)  # only one at a time
    b.release()  # that probe was cancelled: another may go
    assert b.allow(2.35)
    b.record_success(2.4)
    assert b.state == "closed" and b.allow(2.5)


def test_a_failed_probe_doubles_the_backoff_up_to_the_cap() -> None:
    b = CircuitBreaker(failure_threshold=1, base_backoff_s=1.0, max_backoff_s=3.0)
    b.record_failure(0.0)
    opens = []
    now = 0.0
    for _ in range(4):
        now = b.open_until
        assert b.allow(now)
        b.record_failure(now)
        opens.append(b.open_until - now)
    assert opens == [2.0, 3.0, 3.0, 3.0]


def test_hold_until_honours_retry_after() -> None:
    b = CircuitBreaker()
    b.hold_until(10.0)
    assert not b.allow(9.9) and b.allow(10.0)
