"""What a model name routes to: upstream groups (fallback order) of backends.

A Backend is one upstream endpoint (the in-process engine, or one OpenAI-compatible
server) with the state routing needs: its routing state (id, weight, requests in
flight) and its circuit breaker. The routing plugin reads and updates them; /ready
and /metrics report them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.upstreams.base import Upstream

if TYPE_CHECKING:
    from gateway.runtime.admission import Gate
from policies.circuit_breaker import CircuitBreaker
from policies.routing import BackendState


@dataclass(slots=True, eq=False)
class Backend(BackendState):
    group: str = ""
    upstream: Upstream | None = None
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    gate: Gate | None = None  # admission: how much work it may hold (None: no bound)

    @property
    def client(self) -> Upstream:
        assert self.upstream is not None
        return self.upstream


@dataclass(slots=True)
class Group:
    name: str
    backends: list[Backend]


@dataclass(slots=True)
class ModelTarget:
    name: str  # what clients send
    groups: list[Group]  # fallback order
    upstream_model: str | None = None  # the name upstreams get (None: the same)
    routing: str = "prefix_affinity"
