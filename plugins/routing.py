"""Routing: picks the backend for each call by the model's policy (policies/routing.py),
retries elsewhere on failures worth retrying, falls back across groups, and keeps each
backend's circuit breaker (policies/circuit_breaker.py) and in-flight count current.

Per call: candidates are the group's backends whose breaker lets calls through; the
policy picks one; the call goes on (`call_next`) with that backend in
`call.state["backend"]`. An upstream error worth retrying (429, 5xx, a request never
sent, or one whose backend dropped the connection before answering anything: it died;
`retry_lost=False` leaves those out; never a timeout or another 4xx: policies/retry.py)
is retried on another backend while the retry budget allows, then on the next group.
A 429/503's Retry-After keeps the backend out for that long. Streams count as in flight
until they end; a stream that breaks mid-answer counts as a failure of its backend (it
cannot be retried: the client already has part of the answer).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from gateway.call import CHAT, COMPLETIONS, RESPONSES, Call, Reply
from gateway.errors import UpstreamError
from gateway.observe import watch
from gateway.payload import Chunk
from gateway.plugin import Next, Plugin
from gateway.runtime.admission import Refused
from gateway.runtime.gateway import BACKEND
from gateway.runtime.host import PluginHost

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics
from gateway.targets import Backend, ModelTarget
from policies.circuit_breaker import CircuitBreaker
from policies.retry import RetryBudget, should_retry
from policies.routing import (
    ConversationAffinity,
    LeastOutstanding,
    Policy,
    PrefixAffinity,
    RoundRobin,
    RoutingKey,
    Weighted,
    prefix_hash_chain,
)


class Routing(Plugin):
    name = "routing"

    def __init__(
        self,
        *,
        max_attempts: int = 3,
        retry_ratio: float = 0.2,
        prefix_block_chars: int = 64,
        prefix_max_blocks: int = 64,
        load_factor: float = 1.25,
        failure_threshold: int = 5,
        ejection_base_s: float = 1.0,
        ejection_max_s: float = 60.0,
        retry_lost: bool = True,
    ) -> None:
        self.max_attempts = max_attempts
        self.retry_lost = retry_lost
        self.block_chars = prefix_block_chars
        self.max_blocks = prefix_max_blocks
        self.load_factor = load_factor
        self.budget = RetryBudget(ratio=retry_ratio)
        self._policies: dict[str, Policy] = {}  # per model target
        self._metrics: GatewayMetrics | None = None
        self._breaker = (failure_threshold, ejection_base_s, ejection_max_s)

    async def startup(self, *, gateway: PluginHost) -> None:
        """Gives every backend a breaker with this plugin's settings."""
        self._metrics = gateway.metrics
        threshold, base, cap = self._breaker
        for backend in gateway.backends():
            backend.breaker = CircuitBreaker(threshold, base, cap)

    def policy(self, target: ModelTarget) -> Policy:
        policy = self._policies.get(target.name)
        if policy is None:
            policy = self._policies[target.name] = self._make(target.routing)
        return policy

    def _make(self, name: str) -> Policy:
        if name == "round_robin":
            return RoundRobin()
        if name == "weighted":
            return Weighted()
        if name == "least_outstanding":
            return LeastOutstanding()
        if name == "conversation_affinity":
            return ConversationAffinity(load_factor=self.load_factor)
        return PrefixAffinity(load_factor=self.load_factor)

    def key(self, call: Call) -> RoutingKey:
        """The prompt's leading blocks (characters, a stand-in for tokens: the gateway does
        not tokenize) hashed as a chain, and the conversation id or `user` as affinity."""
        request = call.request
        if call.endpoint == CHAT:
            text = "".join(f"\x1e{m.role}\x1f{m.content}" for m in request.messages)
        elif call.endpoint == COMPLETIONS:
            text = str(request.prompt)
        elif call.endpoint == RESPONSES:
            text = str(request.input)
        else:
            text = ""  # embeddings, audio, images...: any backend will do
        hashes = prefix_hash_chain(text, self.block_chars, self.max_blocks)
        user = getattr(request, "user", None)
        return RoutingKey(prefix_hashes=hashes, affinity=call.conversation_id or user)

    async def handle(self, *, call: Call, call_next: Next) -> Reply:
        target = call.target
        if target is None:
            return await call_next(call)
        policy = self.policy(target)
        key = self.key(call)
        self.budget.deposit(time.monotonic())
        attempt = 0
        last: UpstreamError | None = None
        tried: set[str] = set()
        for group in target.groups:
            while True:
                now = time.monotonic()
                candidates = [
                    b for b in group.backends if b.id not in tried and b.breaker.available(now)
                ]
                if not candidates:
                    break  # next group
                backend = policy.choose(candidates, key)
                assert isinstance(backend, Backend)
                backend.breaker.allow(now)  # after an ejection, this call is the probe
                call.state[BACKEND] = backend
                backend.outstanding += 1
                try:
                    reply = await call_next(call)
                except UpstreamError as exc:
                    backend.outstanding -= 1
                    self._failed(backend, exc)
                    last = exc
                    attempt += 1
                    lost = exc.lost and self.retry_lost
                    status = exc.upstream_status
                    if not should_retry(status, attempt, self.max_attempts, exc.delivered, lost):
                        raise
                    if not self.budget.try_spend(time.monotonic()):
                        raise
                    tried.add(backend.id)
                    if self._metrics is not None:
                        self._metrics.upstream_outcome(backend.id, "retry")
                    continue
                except BaseException:  # cancelled (client gone) or a plugin below failed
                    backend.outstanding -= 1
                    backend.breaker.release()
                    raise
                policy.on_routed(backend, key)
                if reply.stream is None:
                    backend.outstanding -= 1
                    backend.breaker.record_success(time.monotonic())
                else:
                    reply.stream = watch(reply.stream, _Outcome(backend))
                return reply
        if last is not None:
            raise last
        wait = _retry_after(target, time.monotonic())
        raise UpstreamError(
            f"no backend of {target.name} is available (all ejected after failures or "
            "held back by their Retry-After)",
            status_code=503,
            code="no_backend_available",
            headers={"retry-after": str(wait)},
        )

    def _failed(self, backend: Backend, exc: UpstreamError) -> None:
        if isinstance(exc, Refused):
            return  # busy, not broken: the breaker is for failures
        now = time.monotonic()
        status = exc.upstream_status
        if status is None or status >= 500 or status == 429:
            backend.breaker.record_failure(now)
        else:  # it answered properly (the request was wrong): the backend is healthy
            backend.breaker.record_success(now)
        if exc.retry_after is not None:
            backend.breaker.hold_until(now + exc.retry_after)


class _Outcome:
    """A stream's end, told to its backend: done (success), failed upstream (failure),
    or given up by the client (neither: the breaker only forgets the call)."""

    __slots__ = ("backend",)

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def chunk(self, chunk: Chunk) -> None:
        return None

    def end(self, error: BaseException | None) -> None:
        backend = self.backend
        backend.outstanding -= 1
        if error is None:
            backend.breaker.record_success(time.monotonic())
        elif isinstance(error, UpstreamError):
            backend.breaker.record_failure(time.monotonic())
        else:
            backend.breaker.release()


def _retry_after(target: ModelTarget, now: float) -> int:
    """Whole seconds until the first of the target's backends may be tried again (at
    least 1: a backend whose probe is in flight may be back at any moment)."""
    waits = [b.breaker.open_until - now for g in target.groups for b in g.backends]
    return max(1, math.ceil(min(waits, default=1.0)))
