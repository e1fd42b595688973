"""Rate limit decisions, free of I/O: a token bucket, a fixed-period budget, the cost a
request is charged before its answer, and the durations OpenAI's headers show.

The bucket is kept as how much of it is taken (`used`, drained at `rate_per_s`) and the
latest time seen (`stamp`). That one shape serves both kinds of limit:

- a refilling bucket (requests or tokens per minute): `burst` = the limit, `rate_per_s`
  = limit / 60; a burst of the whole limit, then one unit per 1/rate seconds;
- a budget (tokens per day): `rate_per_s` = 0, nothing drains; the budget comes back
  when its period ends, which the caller keys its state by (`period`).

A take is allowed when `used + cost` fits the burst; a refused take changes nothing.
A negative cost is a refund (never below empty); `force` charges even past the burst,
for usage learned after the fact: the bucket goes into debt and later takes wait.

Time: `now` comes from the caller (replicas' wall clocks). It only drains the bucket
when it is past `stamp`, so a clock that goes backwards (or a replica whose clock is
behind) never refills anything, and only waits longer, by the gap.

The same arithmetic runs as a Lua script in Redis (gateway/stores/redis.py), in the
same order of float operations, so both stores decide alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

# Float slack when comparing with the burst: a refill of 0.6 s * (100 / 60) per s is
# 0.9999999999999999, and epoch times carry ~1e-7 s of rounding; counts are whole.
EPS = 1e-6


@dataclass(frozen=True, slots=True)
class Bucket:
    used: float  # how much is taken; past the burst after a forced charge (debt)
    stamp: float  # the latest `now` seen: refill counts from here


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: float  # what could be taken now (0 while in debt)
    reset_s: float  # until the bucket is full again (inf: not by refill, a budget)
    retry_after_s: float = 0.0  # refused: until this cost would fit (inf: never by refill)


def take(
    state: Bucket | None,
    cost: float,
    rate_per_s: float,
    burst: float,
    now: float,
    *,
    force: bool = False,
) -> tuple[Decision, Bucket | None]:
    """The decision and the state to keep (None: keep what there is: a refusal)."""
    used, stamp = (0.0, now) if state is None else (state.used, state.stamp)
    if now > stamp:
        used = max(0.0, used - (now - stamp) * rate_per_s)
        stamp = now
    lag = stamp - now  # > 0 when `now` is behind a time already seen
    if cost > 0 and not force and used + cost > burst + EPS:
        wait = math.inf
        if cost <= burst + EPS and rate_per_s > 0:
            wait = lag + (used + cost - burst) / rate_per_s
        left = max(0.0, burst - used)
        return Decision(False, left, until_full(used, rate_per_s, lag), wait), None
    used = max(0.0, used + cost)
    kept = Bucket(used, stamp)
    return Decision(True, max(0.0, burst - used), until_full(used, rate_per_s, lag)), kept


def until_full(used: float, rate_per_s: float, lag: float = 0.0) -> float:
    if used <= 0:
        return 0.0
    return lag + used / rate_per_s if rate_per_s > 0 else math.inf


def keep_s(bucket: Bucket, rate_per_s: float, now: float, ttl_s: float) -> float:
    """How long a store keeps the state: `ttl_s`, and a refilling bucket at least until
    it is full again (an expired state reads as a full bucket)."""
    if rate_per_s <= 0:
        return ttl_s
    return max(ttl_s, bucket.stamp - now + bucket.used / rate_per_s)


# --- budgets: a fixed period ---------------------------------------------------------------


def period(now: float, period_s: float) -> tuple[int, float]:
    """(which period `now` is in, seconds until it ends). Periods start at the epoch, so
    a day of 86400 s ends at midnight UTC."""
    index = math.floor(now / period_s)
    return index, (index + 1) * period_s - now


def in_period(decision: Decision, ends_in_s: float) -> Decision:
    """A budget's decision from its take (rate 0): it is full again, and a refused take
    fits, when the period ends (a cost above the whole budget never fits: the caller
    tells that one apart, as `spend` does)."""
    return Decision(
        decision.allowed,
        decision.remaining,
        min(decision.reset_s, ends_in_s),
        min(decision.retry_after_s, ends_in_s) if not decision.allowed else 0.0,
    )


def spend(
    state: Bucket | None, cost: float, limit: float, period_s: float, now: float
) -> tuple[Decision, Bucket | None]:
    """A budget of `limit` per period: `take` with nothing drained, its state forgotten
    once its period is over (a store does that by keying the state by period)."""
    index, ends_in = period(now, period_s)
    if state is not None and period(state.stamp, period_s)[0] != index:
        state = None
    decision, kept = take(state, cost, 0.0, limit, now)
    decision = in_period(decision, ends_in)
    if cost > limit + EPS:  # never fits: no period makes it
        decision = replace(decision, retry_after_s=math.inf)
    return decision, kept


# --- what a request costs ------------------------------------------------------------------

CHARS_PER_TOKEN = 4
# What a request's prompt is made of, per endpoint: chat, completions, responses, embeddings.
PROMPT_FIELDS = ("messages", "prompt", "input", "instructions", "tools")


def prompt_tokens(request: Mapping[str, Any]) -> int:
    """A rough count of the request's prompt tokens (characters / 4), made before the
    answer's usage says the real one. Token ids (a prompt given as integers) count one
    each; inline data (an image as a data: URL) is not text and does not count."""
    chars = sum(_chars(request.get(name)) for name in PROMPT_FIELDS)
    return math.ceil(chars / CHARS_PER_TOKEN)


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return 0 if value.startswith("data:") else len(value)
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return CHARS_PER_TOKEN  # a token id
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    if isinstance(value, dict):
        return sum(_chars(v) for v in value.values())
    return 0


def reservation(prompt: int, max_output: int | None, n: int, reserve: int, cap: float) -> int:
    """Tokens held while a request is answered: its prompt and the most it may generate
    (`max_output` per choice, times `n`). A request that sets no maximum holds `reserve`
    per choice, cut to what fits under the smallest token limit (`cap`): a request that
    asked for nothing large is never "too large" for the default's sake."""
    if max_output is not None:
        return prompt + max(0, max_output) * max(1, n)
    wanted = reserve * max(1, n)
    if math.isfinite(cap):
        wanted = min(wanted, max(0, math.floor(cap) - prompt))
    return prompt + wanted


# --- headers -------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """OpenAI's (Go's) duration text, to the millisecond rounded up: 20ms, 1.5s, 6m0s,
    1h2m3s. "0s" for nothing; inf (never) has no duration and reads as 0s too."""
    if not math.isfinite(seconds) or seconds <= 0:
        return "0s"
    ms = math.ceil(seconds * 1000 - EPS)
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}" if rest % 1000 == 0 else f"{rest / 1000:.3f}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def retry_after(seconds: float) -> int:
    """Retry-After in whole seconds, rounded up (never 0: the client would come straight
    back), forgiving float dust (20.0000001 s is 20)."""
    return max(1, math.ceil(seconds - 1e-3))
