"""Admission control (pure): how much work one backend may hold at once, and when to
tell a refused client to come back.

Work is counted in requests and in tokens (the prompt plus the most it may generate).
Past either bound a new request is refused at once, never queued for minutes: the
client gets a Retry-After estimated from how fast work has been finishing there. A
tenant may also be held to a share of the requests, so one client's burst is refused
(429) while the others still get in. A request larger than the whole token bound is let
in when nothing else is in flight: it could never fit otherwise, and the engine itself
refuses what is longer than its context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GLOBAL, TENANT = "global", "tenant"  # why a request was refused


@dataclass(slots=True)
class Admission:
    max_requests: int
    max_tokens: int | None = None
    max_per_tenant: int | None = None
    requests: int = 0
    tokens: int = 0
    by_tenant: dict[str, int] = field(default_factory=dict)
    gap_s: float | None = None  # moving average of the time between finishes
    last_finish: float | None = None

    def refusal(self, tenant: str, cost: int) -> str | None:
        """Why `tenant`'s request of `cost` tokens may not start now (None: it may)."""
        if self.max_per_tenant is not None and self.by_tenant.get(tenant, 0) >= (
            self.max_per_tenant
        ):
            return TENANT
        if self.requests >= self.max_requests:
            return GLOBAL
        if self.max_tokens is not None and self.requests and self.tokens + cost > self.max_tokens:
            return GLOBAL
        return None

    def enter(self, tenant: str, cost: int) -> None:
        self.requests += 1
        self.tokens += cost
        self.by_tenant[tenant] = self.by_tenant.get(tenant, 0) + 1

    def leave(self, tenant: str, cost: int, now: float) -> None:
        self.requests -= 1
        self.tokens -= cost
        left = self.by_tenant.get(tenant, 1) - 1
        if left:
            self.by_tenant[tenant] = left
        else:
            self.by_tenant.pop(tenant, None)
        if self.last_finish is not None:
            gap = max(now - self.last_finish, 0.0)
            self.gap_s = gap if self.gap_s is None else 0.8 * self.gap_s + 0.2 * gap
        self.last_finish = now

    def retry_after_s(self, why: str) -> int:
        """Whole seconds until a slot is likely free: one finish for a full backend, as
        many as the tenant is over its share for a tenant (at least 1, at most 60)."""
        if self.gap_s is None:
            return 1
        finishes = 1
        if why == TENANT and self.max_per_tenant is not None and self.requests:
            # the tenant's own requests finish at its share of the backend's rate
            finishes = max(1, round(self.requests / max(1, self.max_per_tenant)))
        return min(60, max(1, math.ceil(self.gap_s * finishes)))
