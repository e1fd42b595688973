"""Per-backend outlier ejection: a circuit breaker with exponential back-off (pure; the
caller passes the time).

    closed --N consecutive failures--> open --backoff elapsed--> half_open
    half_open --probe succeeds--> closed (backoff reset)
    half_open --probe fails--> open (backoff doubled, up to max_backoff_s)

While open, outcomes of calls sent before the ejection are ignored: one late success does
not let a failing backend back in, and late failures do not stretch the back-off.

half_open lets one probe through at a time: filter candidates with `available` (no side
effects), then `allow` the one chosen. `hold_until(t)` keeps the breaker open until t
whatever its state (an upstream's Retry-After).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class CircuitBreaker:
    failure_threshold: int = 5
    base_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    failures: int = 0  # consecutive
    backoff_s: float = 0.0  # the current open period (0 until the first ejection)
    open_until: float = 0.0
    probing: bool = False  # half_open: a probe is in flight
    opened: bool = False  # has tripped and not yet recovered

    @property
    def state(self) -> str:
        if not self.opened:
            return "closed"
        return "half_open" if self.probing else "open"

    def available(self, now: float) -> bool:
        """Whether a call may be sent now (no side effects: filter candidates with it)."""
        if now < self.open_until:
            return False
        return not (self.opened and self.probing)

    def allow(self, now: float) -> bool:
        """available(), and if so count the call as sent: after an ejection that call is
        the one probe (until its outcome is recorded or `release`d)."""
        if not self.available(now):
            return False
        if self.opened:
            self.probing = True
        return True

    def release(self) -> None:
        """The probe ended with no verdict (cancelled): the next call may probe."""
        self.probing = False

    def record_success(self, now: float) -> None:
        if self.opened and not self.probing:
            return  # a call sent before the ejection: the ejection stands until a probe
        self.failures = 0
        self.opened = self.probing = False
        self.backoff_s = 0.0

    def record_failure(self, now: float) -> None:
        if self.opened:
            # Only a failed probe backs off longer. The other calls that were in flight
            # when the backend died fail now too; counting them would reach the cap at once.
            if self.probing:
                self._trip(
                    now, min(max(self.backoff_s, self.base_backoff_s) * 2, self.max_backoff_s)
                )
            return
        self.failures += 1
        if self.failures >= self.failure_threshold:
            self._trip(now, self.base_backoff_s)

    def hold_until(self, until: float) -> None:
        self.open_until = max(self.open_until, until)

    def _trip(self, now: float, backoff: float) -> None:
        self.opened, self.probing = True, False
        self.backoff_s = backoff
        self.open_until = max(self.open_until, now + backoff)
