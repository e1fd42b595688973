from __future__ import annotations

from policies.circuit_breaker import CircuitBreaker


def _trip(b: CircuitBreaker, now: float) -> None:
    for _ in range(b.failure_threshold):
        assert b.allow(now)
        b.record_failure(now)


def test_opens_after_consecutive_failures_only() -> None:
    b = CircuitBreaker(failure_threshold=3, base_backoff_s=1.0, max_backoff_s=8.0)
    b.record_failure(0.0)
    b.record_failure(0.0)
    b.record_success(0.1)  # a success in between resets the count
    b.record_failure(0.2)
    b.record_failure(0.2)
    assert b.state == "closed" and b.allow(0.3)
    b.record_failure(0.3)
    assert b.state == "open"


def test_rejects_while_open_then_lets_one_probe_through() -> None:
    b = CircuitBreaker(failure_threshold=3, base_backoff_s=1.0, max_backoff_s=8.0)
    _trip(b, 1.0)
    assert b.state == "open"
    assert not b.available(1.5) and not b.allow(1.99)
    assert b.available(2.0) and b.available(2.0)  # looking has no side effects
    assert b.allow(2.0)  # back-off over: the probe
    assert b.state == "half_open"
    assert not b.available(2.0) and not b.allow(2.1)  # one probe at a time
    b.release()  # that probe was cancelled: another may go
    assert b.allow(2.2)
    b.record_success(2.4)
    assert b.state == "closed" and b.allow(2.5) and b.allow(2.5)


def test_a_failed_probe_doubles_the_backoff_up_to_the_cap() -> None:
    b = CircuitBreaker(failure_threshold=1, base_backoff_s=1.0, max_backoff_s=3.0)
    b.record_failure(0.0)
    opens = []
    for _ in range(4):
        now = b.open_until
        assert b.allow(now)
        b.record_failure(now)
        assert b.state == "open"
        opens.append(b.open_until - now)
    assert opens == [2.0, 3.0, 3.0, 3.0]


def test_success_resets_the_backoff() -> None:
    b = CircuitBreaker(failure_threshold=1, base_backoff_s=1.0, max_backoff_s=60.0)
    b.record_failure(0.0)
    assert b.allow(1.0)
    b.record_failure(1.0)  # failed probe: 2 s
    assert b.allow(3.0)
    b.record_success(3.0)
    b.record_failure(10.0)  # tripped again: back to the base back-off
    assert b.open_until == 11.0


def test_late_outcomes_of_calls_sent_before_the_ejection_are_ignored() -> None:
    b = CircuitBreaker(failure_threshold=2, base_backoff_s=1.0, max_backoff_s=60.0)
    _trip(b, 0.0)
    for _ in range(5):  # the rest of the calls that were in flight when it died
        b.record_failure(0.1)
    assert b.open_until == 1.0  # the back-off did not grow
    b.record_success(0.2)  # a long stream that started before the ejection
    assert b.state == "open" and not b.available(0.5)


def test_hold_until_honours_retry_after() -> None:
    b = CircuitBreaker()
    b.hold_until(10.0)
    assert not b.allow(9.9) and b.allow(10.0)
    assert b.state == "closed" and b.allow(10.0)  # a pause, not an ejection: no probe gating


def test_hold_until_extends_an_open_breaker() -> None:
    b = CircuitBreaker(failure_threshold=1, base_backoff_s=1.0)
    b.record_failure(0.0)
    b.hold_until(30.0)
    b.hold_until(5.0)  # an earlier deadline never shortens it
    assert not b.available(29.0) and b.allow(30.0)
