"""Retry decisions (pure): which failures are worth another backend, a budget that keeps
retries from multiplying load during an outage, and back-off with jitter."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})


def should_retry(
    status: int | None,
    attempt: int,
    max_attempts: int,
    delivered: bool = True,
    lost: bool = False,
) -> bool:
    """status: the upstream's HTTP status, None when it never answered. attempt: attempts
    made so far. delivered: whether the request may have reached the upstream. lost: the
    upstream closed the connection before answering anything (the caller passes False
    when it does not retry those).

    An answer that reports a failure or a refusal (408, 429, 5xx) may be tried elsewhere:
    the upstream said it did not do the work. No answer at all is retried when the request
    was never sent (connect failure, no free connection), or when the upstream dropped the
    connection without a byte of answer: a backend that died or restarted, whose work died
    with it (an inference request changes nothing upstream; at worst a billed upstream
    that crashed after the work counts it twice, which is why the caller may turn this
    off). A timeout is never retried: the upstream may still be working on the request,
    and sending it again would double the load of an upstream already too slow. Never
    retries other 4xx: the request itself is wrong and would fail anywhere."""
    if attempt >= max_attempts:
        return False
    if status is None:
        return not delivered or lost
    return status in RETRYABLE


@dataclass(slots=True)
class RetryBudget:
    """Token bucket: each request deposits `ratio` tokens, each retry spends one, and
    `min_per_s` tokens accrue per second regardless, so a quiet gateway may still retry.
    During an outage retries stay at most ~ratio of traffic instead of multiplying it."""

    ratio: float = 0.2
    min_per_s: float = 10.0
    cap: float = 100.0
    tokens: float = 10.0
    last: float | None = None

    def deposit(self, now: float) -> None:
        self._accrue(now)
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def try_spend(self, now: float) -> bool:
        self._accrue(now)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def _accrue(self, now: float) -> None:
        if self.last is not None and now > self.last:
            self.tokens = min(self.cap, self.tokens + (now - self.last) * self.min_per_s)
        self.last = now


def backoff(attempt: int, base: float, cap: float, jitter_u: float) -> float:
    """Full-jitter exponential back-off: uniform in [0, min(cap, base * 2**attempt)],
    with jitter_u in [0, 1) supplied by the caller."""
    # 2.0**1024 overflows a float; by then the cap has long been reached anyway
    return min(cap, base * 2.0 ** min(attempt, 1000)) * jitter_u


def parse_retry_after(value: str | None, now: float, cap: float = 3600.0) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date (against
    `now`, wall-clock epoch seconds). None when absent or unreadable; capped at `cap`."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "nan" and "inf" parse as floats but say nothing useful
        return min(max(seconds, 0.0), cap) if math.isfinite(seconds) else None
    try:
        date = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if date.tzinfo is None:  # "-0000": UTC by RFC 5322, not the host's local time
        date = date.replace(tzinfo=UTC)
    return min(max(date.timestamp() - now, 0.0), cap)
