from __future__ import annotations

import pytest

from policies.retry import RetryBudget, backoff, parse_retry_after, should_retry


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retries_answers_that_report_a_failure(status: int) -> None:
    assert should_retry(status, attempt=1, max_attempts=3)
    assert not should_retry(status, attempt=3, max_attempts=3)


def test_no_answer_is_retried_when_never_sent_or_dropped_unanswered() -> None:
    assert should_retry(None, attempt=1, max_attempts=3, delivered=False)  # connect failed
    assert not should_retry(None, attempt=1, max_attempts=3, delivered=True)  # timed out
    assert should_retry(None, attempt=1, max_attempts=3, delivered=True, lost=True)  # died
    assert not should_retry(None, attempt=3, max_attempts=3, delivered=False)
    assert not should_retry(None, attempt=3, max_attempts=3, delivered=True, lost=True)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 501])
def test_never_retries_other_4xx_or_unretryable_5xx(status: int) -> None:
    assert not should_retry(status, attempt=0, max_attempts=3)


def test_retry_budget_caps_retries_at_a_fraction_of_traffic() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=0.0, tokens=0.0)
    spent = 0
    for _ in range(100):
        budget.deposit(now=0.0)
        spent += budget.try_spend(now=0.0)
    assert spent == 20


def test_retry_budget_refills_a_minimum_per_second_without_traffic() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=2.0, tokens=0.0)
    assert not budget.try_spend(now=100.0)  # nothing deposited, no time passed yet
    assert budget.try_spend(now=101.0) and budget.try_spend(now=101.0)  # one second: two
    assert not budget.try_spend(now=101.0)


def test_retry_budget_ignores_a_clock_going_backwards() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=1.0, tokens=0.0)
    budget.deposit(now=50.0)
    assert not budget.try_spend(now=10.0)  # no refill from a negative interval
    assert budget.try_spend(now=51.0)


def test_retry_budget_is_capped() -> None:
    budget = RetryBudget(ratio=1.0, min_per_s=0.0, cap=3.0, tokens=0.0)
    for _ in range(100):
        budget.deposit(now=0.0)
    assert sum(budget.try_spend(now=0.0) for _ in range(10)) == 3


def test_backoff_is_capped_full_jitter() -> None:
    assert backoff(0, 1.0, 60.0, 0.5) == 0.5
    assert backoff(3, 1.0, 60.0, 0.5) == 4.0
    assert backoff(10, 1.0, 60.0, 0.999) == pytest.approx(59.94)
    assert backoff(5000, 1.0, 60.0, 0.0) == 0.0  # huge attempts do not overflow
    assert backoff(5000, 1.0, 60.0, 1.0) == 60.0


def test_retry_after_seconds() -> None:
    assert parse_retry_after("7", now=0.0) == 7.0
    assert parse_retry_after("  2.5 ", now=0.0) == 2.5
    assert parse_retry_after("-3", now=0.0) == 0.0
    assert parse_retry_after("999999", now=0.0) == 3600.0
    assert parse_retry_after("999999", now=0.0, cap=60.0) == 60.0


def test_retry_after_http_date_against_now() -> None:
    when = "Wed, 21 Oct 2015 07:28:00 GMT"  # 1445412480 epoch seconds
    assert parse_retry_after(when, now=1445412470.0) == 10.0
    assert parse_retry_after(when, now=1445412490.0) == 0.0  # already past
    # "-0000" (zone unknown) is UTC by RFC 5322, whatever the host's time zone
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 -0000", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 09:28:00 +0200", now=1445412470.0) == 10.0


@pytest.mark.parametrize(
    "value", [None, "", "soon", "nan", "inf", "Wed, 99 Oct 2015 07:28:00 GMT", "12 monkeys"]
)
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=0.0) is None
