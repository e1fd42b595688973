"""Admission at one backend (policies/admission.py decides): a request past the
backend's bound is refused at once with Retry-After, 503 when the backend is full, 429
when its tenant holds more than its share. Both are "never sent" failures, so routing
tries another backend or group first; the breaker does not count them (a busy backend
is not a broken one). A stream holds its place until it ends."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from gateway.call import Call
from gateway.errors import UpstreamError
from gateway.observe import watch
from gateway.payload import Chunk
from policies.admission import GLOBAL, Admission


class Refused(UpstreamError):
    """A backend refused a request it never started: full (503) or the tenant over its
    share (429)."""

    def __init__(self, backend: str, why: str, retry_after_s: int) -> None:
        busy = why == GLOBAL
        super().__init__(
            f"{backend} is at capacity; retry after {retry_after_s} s"
            if busy
            else f"too many requests of this tenant in flight at {backend}; "
            f"retry after {retry_after_s} s",
            status_code=503 if busy else 429,
            error_type="server_error" if busy else "rate_limit_error",
            code="overloaded" if busy else "tenant_concurrency_exceeded",
            headers={"retry-after": str(retry_after_s)},
            retry_after=None,  # not the upstream's own: the breaker leaves it alone
            delivered=False,
        )
        self.why = why


class Gate:
    __slots__ = ("admission", "name", "refused")

    def __init__(self, name: str, admission: Admission) -> None:
        self.name = name
        self.admission = admission
        self.refused: dict[str, int] = {}  # why -> count (for /metrics)

    def enter(self, call: Call) -> int:
        """Takes a place for `call` (returns its cost) or raises Refused."""
        cost = estimate_tokens(call)
        why = self.admission.refusal(call.tenant, cost)
        if why is not None:
            self.refused[why] = self.refused.get(why, 0) + 1
            raise Refused(self.name, why, self.admission.retry_after_s(why))
        self.admission.enter(call.tenant, cost)
        return cost

    def leave(self, call: Call, cost: int) -> None:
        self.admission.leave(call.tenant, cost, time.monotonic())

    def held(self, call: Call, cost: int, stream: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        """The stream, holding its place until it ends, fails or is closed."""
        return watch(stream, _Place(self, call, cost))


class _Place:
    __slots__ = ("call", "cost", "gate")

    def __init__(self, gate: Gate, call: Call, cost: int) -> None:
        self.gate, self.call, self.cost = gate, call, cost

    def chunk(self, chunk: Chunk) -> None:
        return None

    def end(self, error: BaseException | None) -> None:
        self.gate.leave(self.call, self.cost)


def estimate_tokens(call: Call) -> int:
    """The prompt (about 4 characters a token) plus the most the request may generate
    (a default when it does not say)."""
    request: Any = call.request
    out = (
        getattr(request, "max_completion_tokens", None)
        or getattr(request, "max_tokens", None)
        or getattr(request, "max_output_tokens", None)
        or 512
    )
    n = getattr(request, "n", None) or 1
    return len(call.body.raw) // 4 * n + out * n
