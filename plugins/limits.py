"""Per-tenant rate limits and token budgets, counted in the gateway store so that
replicas sharing a Redis count together.

    [[plugins]]                 # first in the chain; then [[plugins]] name = "routing"...
    name = "limits"
    [plugins.settings]
    default = {requests_per_minute = 600, tokens_per_minute = 100000}
    tenants = {"team-a" = {tokens_per_day = 2000000}}   # over the default, per limit

- Per call, for `call.tenant`: one request from its requests-per-minute bucket; for
  chat, completions, responses and embeddings also a reservation of tokens (the prompt
  estimated at 4 characters a token, plus the most the answer may use: max tokens times
  `n`, or `reserve_tokens`) from its tokens-per-minute bucket and its tokens-per-day
  budget (a UTC day). Buckets are policies/rate_limit.py's token bucket, taken
  atomically in the store (`Store.take`), keyed `rl:<tenant>:<kind>`.
- Refused: 429 `rate_limit_exceeded` naming the limit, `Retry-After` (whole seconds,
  rounded up) and `retry-after-ms` for when enough is back. A request larger than a
  limit can ever allow is refused without them (waiting would not help).
- Answered: the usage the answer reports (a complete body, or a stream's usage chunk)
  replaces the reservation, the difference refunded or charged (past the limit: later
  calls wait for the debt to drain). An error instead of an answer refunds it; a stream
  cut off before its usage, or a call the client abandoned, keeps it (tokens may have
  been spent). A refused request still counts as a request, as at OpenAI.
- Every reply and every 429 carries OpenAI's `x-ratelimit-limit|remaining|reset-requests`
  and `-tokens` (per minute) for the limits configured, and `-tokens-day` for the budget
  (tokens headers on calls that use tokens). They replace an upstream's headers of the
  same name: the client's limits are the gateway's.
- The store fails open: with Redis down or slow, requests are allowed.

Put it first in the chain (before the caches, whose hits then count too), and never
mark it optional: an optional plugin's refusal is skipped as its failure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from gateway.call import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Call, Reply
from gateway.errors import OpenAIError
from gateway.metrics import body_usage, chunk_usage
from gateway.observe import watch
from gateway.payload import Chunk
from gateway.plugin import Next, Plugin
from gateway.views import UsageView
from policies import rate_limit
from policies.rate_limit import EPS, Decision

if TYPE_CHECKING:
    from gateway.runtime import PluginHost
    from gateway.stores import Store

TOKEN_ENDPOINTS = frozenset({CHAT, COMPLETIONS, RESPONSES, EMBEDDINGS})
MINUTE_S, DAY_S = 60.0, 86400.0
REQUESTS, TOKENS, TOKENS_DAY = "requests", "tokens", "tokens-day"  # header suffixes
LIMIT_NAMES = ("requests_per_minute", "tokens_per_minute", "tokens_per_day")


class RateLimited(OpenAIError):
    status_code = 429

    def __init__(self, message: str, headers: dict[str, str], kind: str) -> None:
        super().__init__(message, code="rate_limit_exceeded", headers=headers)
        # OpenAI's type says which limit: "requests" or "tokens".
        self.error_type = "requests" if kind == REQUESTS else "tokens"


@dataclass(frozen=True, slots=True)
class Limits:
    """One tenant's limits; None: unlimited."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    tokens_per_day: float | None = None

    @classmethod
    def parse(cls, settings: Mapping[str, Any] | None, where: str, base: Limits) -> Limits:
        """`settings` over `base`, limit by limit. TypeError (which the plugin loader
        reports as a config error) names a bad key or value."""
        values: dict[str, float | None] = {name: getattr(base, name) for name in LIMIT_NAMES}
        for name, value in (settings or {}).items():
            if name not in values:
                raise TypeError(f"{where}: unknown limit {name!r} (known: {', '.join(values)})")
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise TypeError(f"{where}.{name}: must be a positive number, got {value!r}")
            values[name] = float(value)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Meter:
    """One limit applied to one call: its bucket in the store and how it refills."""

    kind: str  # REQUESTS, TOKENS or TOKENS_DAY
    label: str  # how messages name it
    key: str
    limit: float
    rate_per_s: float  # 0: a budget, full again when its period ends
    ttl_s: float
    ends_at: float | None = None  # a budget's period end, on the plugin's clock


@dataclass(frozen=True, slots=True)
class Held:
    """What a call took from a meter, and the bucket as that take left it."""

    meter: Meter
    cost: float
    decision: Decision


def meters(tenant: str, limits: Limits, now: float, tokens: bool) -> list[Meter]:
    # Quoted, so that no tenant name can reach into another tenant's keys.
    base = f"rl:{quote(tenant, safe='')}:"
    found: list[Meter] = []
    if rpm := limits.requests_per_minute:
        label = "requests per minute (RPM)"
        found.append(Meter(REQUESTS, label, base + REQUESTS, rpm, rpm / MINUTE_S, MINUTE_S))
    if tokens and (tpm := limits.tokens_per_minute):
        label = "tokens per minute (TPM)"
        found.append(Meter(TOKENS, label, base + TOKENS, tpm, tpm / MINUTE_S, MINUTE_S))
    if tokens and (tpd := limits.tokens_per_day):
        index, ends_in = rate_limit.period(now, DAY_S)
        key, label = f"{base}{TOKENS_DAY}:{index}", "tokens per day (TPD)"
        found.append(Meter(TOKENS_DAY, label, key, tpd, 0.0, ends_in, now + ends_in))
    return found


class RateLimits(Plugin):
    name = "limits"

    def __init__(
        self,
        *,
        default: Mapping[str, Any] | None = None,
        tenants: Mapping[str, Mapping[str, Any]] | None = None,
        reserve_tokens: int = 512,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """default: {requests_per_minute, tokens_per_minute, tokens_per_day}, each
        optional; tenants: {tenant: the same}, over the default limit by limit;
        reserve_tokens: output tokens held for a request that sets no maximum; clock:
        wall-clock seconds, shared by replicas (tests pass their own)."""
        if isinstance(reserve_tokens, bool) or not isinstance(reserve_tokens, int):
            raise TypeError(f"reserve_tokens: must be an integer, got {reserve_tokens!r}")
        if reserve_tokens < 0:
            raise TypeError(f"reserve_tokens: must be >= 0, got {reserve_tokens}")
        self.default = Limits.parse(default, "default", Limits())
        self.tenants = {
            tenant: Limits.parse(settings, f"tenants.{tenant}", self.default)
            for tenant, settings in (tenants or {}).items()
        }
        self.reserve_tokens = reserve_tokens
        self.clock = clock
        self.store: Store | None = None

    async def startup(self, *, gateway: PluginHost) -> None:
        self.store = gateway.store

    def limits_for(self, tenant: str) -> Limits:
        return self.tenants.get(tenant, self.default)

    async def handle(self, *, call: Call, call_next: Next) -> Reply:
        limits = self.limits_for(call.tenant)
        if self.store is None or limits == Limits():
            return await call_next(call)
        now = self.clock()
        uses_tokens = call.endpoint in TOKEN_ENDPOINTS
        tokens = self._reservation(call, limits) if uses_tokens else 0
        found = meters(call.tenant, limits, now, uses_tokens)
        held = await self._admit(call.tenant, found, tokens)
        counts_tokens = any(m.kind != REQUESTS for m in found)
        try:
            reply = await call_next(call)
        except Exception:
            await self._correct(held, 0)  # no answer: none of the tokens were used
            raise
        if reply.body is not None and counts_tokens:
            usage = body_usage(call, reply.body)
            if usage is not None:
                held = await self._correct(held, usage.prompt + usage.completion)
        elif reply.stream is not None and counts_tokens:
            reply.stream = watch(reply.stream, _Usage(self, call, held))
        reply.headers.update(headers(held))
        return reply

    def _reservation(self, call: Call, limits: Limits) -> int:
        data = call.body.data
        prompt = rate_limit.prompt_tokens(data) if isinstance(data, dict) else 0
        if call.endpoint == EMBEDDINGS:
            return prompt
        view = call.request
        max_output: int | None = None
        for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
            max_output = getattr(view, name, None)
            if max_output is not None:
                break
        n = getattr(view, "n", None) or 1
        caps = [x for x in (limits.tokens_per_minute, limits.tokens_per_day) if x is not None]
        cap = min(caps, default=math.inf)
        return rate_limit.reservation(prompt, max_output, n, self.reserve_tokens, cap)

    async def _take(self, meter: Meter, cost: float, *, force: bool = False) -> Decision:
        assert self.store is not None
        now = self.clock()
        ttl_s = meter.ttl_s if meter.ends_at is None else meter.ends_at - now
        decision = await self.store.take(
            meter.key, cost, meter.rate_per_s, meter.limit, now, ttl_s, force=force
        )
        if meter.ends_at is None:
            return decision
        return rate_limit.in_period(decision, meter.ends_at - now)

    async def _admit(self, tenant: str, found: list[Meter], tokens: int) -> list[Held]:
        """Takes the call's cost from each meter in turn, or raises RateLimited."""

        def cost(m: Meter) -> float:
            return 1 if m.kind == REQUESTS else tokens

        for m in found:
            if cost(m) > m.limit + EPS:  # could never fit: nothing is taken
                seen = [Held(r, 0, await self._take(r, 0)) for r in found]
                message = (
                    f"Request too large for {m.label} on tenant '{tenant}': Limit "
                    f"{_number(m.limit)}, Requested {_number(cost(m))}. "
                    "Reduce the prompt or the maximum number of tokens to generate."
                )
                raise RateLimited(message, headers(seen), m.kind)
        held: list[Held] = []
        for i, m in enumerate(found):
            decision = await self._take(m, cost(m))
            if decision.allowed:
                held.append(Held(m, cost(m), decision))
                continue
            # Tokens held so far go back; the request itself counts (as at OpenAI: a
            # client that retries at once does not get through by retrying).
            held = await self._correct(held, 0)
            rest = [Held(r, 0, await self._take(r, 0)) for r in found[i + 1 :]]
            out = headers([*held, Held(m, cost(m), decision), *rest])
            wait = decision.retry_after_s
            if math.isfinite(wait):
                out["retry-after"] = str(rate_limit.retry_after(wait))
                out["retry-after-ms"] = str(math.ceil(wait * 1000 - EPS))
            used = math.ceil(m.limit - decision.remaining - EPS)
            message = (
                f"Rate limit reached for {m.label} on tenant '{tenant}': Limit "
                f"{_number(m.limit)}, Used {used}, Requested {_number(cost(m))}. "
                f"Please try again in {rate_limit.duration(wait)}."
            )
            raise RateLimited(message, out, m.kind)
        return held

    async def _correct(self, held: list[Held], tokens: float) -> list[Held]:
        """Replaces each token reservation in `held` by `tokens`, what the call used:
        the difference refunded, or charged even past the limit (it was used)."""
        now = self.clock()
        out: list[Held] = []
        for h in held:
            diff = tokens - h.cost
            over = h.meter.ends_at is not None and h.meter.ends_at <= now  # that day is gone
            if h.meter.kind == REQUESTS or abs(diff) < EPS or over:
                out.append(h)
                continue
            out.append(Held(h.meter, tokens, await self._take(h.meter, diff, force=True)))
        return out


class _Usage:
    """A stream's usage chunk, once the stream ends, corrects its reservation (a stream
    cut off before it keeps the whole reservation: the tokens may have been spent)."""

    __slots__ = ("call", "held", "limits", "usage")

    def __init__(self, limits: RateLimits, call: Call, held: list[Held]) -> None:
        self.limits, self.call, self.held = limits, call, held
        self.usage: UsageView | None = None

    def chunk(self, chunk: Chunk) -> None:
        if b'"usage"' in chunk.raw:
            self.usage = chunk_usage(self.call, chunk) or self.usage

    async def end(self, error: BaseException | None) -> None:
        if self.usage is not None:
            await self.limits._correct(self.held, self.usage.prompt + self.usage.completion)


def headers(held: list[Held]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the meters a call went through."""
    out: dict[str, str] = {}
    for h in held:
        kind, decision = h.meter.kind, h.decision
        out[f"x-ratelimit-limit-{kind}"] = _number(h.meter.limit)
        out[f"x-ratelimit-remaining-{kind}"] = str(math.floor(decision.remaining + EPS))
        out[f"x-ratelimit-reset-{kind}"] = rate_limit.duration(decision.reset_s)
    return out


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
