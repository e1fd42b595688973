"""`RedisStore`: a Redis or Valkey server shared by gateway replicas (redis-py asyncio)."""

from __future__ import annotations

import hashlib
import re
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from gateway.stores import StoreError
from policies.rate_limit import Decision

# Redis's own errors, and what the socket layer raises under them (TimeoutError is an OSError).
_FAILURES = (RedisError, OSError)

# policies/rate_limit.py `take` and `keep_s`, step for step (same float operations in the
# same order, so both stores decide alike). State: "used stamp". Numbers go back as
# text: Redis would truncate a Lua number to an integer, and %.17g round-trips a double.
TAKE_SCRIPT = """
local cost, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now, ttl, force = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6] == "1"
local eps = 1e-6
local used, stamp = 0, now
local state = redis.call("GET", KEYS[1])
if state then
  local u, s = string.match(state, "^(%S+) (%S+)$")
  if u and tonumber(u) and tonumber(s) then used, stamp = tonumber(u), tonumber(s) end
end
if now > stamp then
  used = math.max(0, used - (now - stamp) * rate)
  stamp = now
end
local lag = stamp - now
local function until_full(u)
  if u <= 0 then return 0 end
  if rate > 0 then return lag + u / rate end
  return math.huge
end
local function num(x) return string.format("%.17g", x) end
if cost > 0 and not force and used + cost > burst + eps then
  local wait = math.huge
  if cost <= burst + eps and rate > 0 then wait = lag + (used + cost - burst) / rate end
  return {0, num(math.max(0, burst - used)), num(until_full(used)), num(wait)}
end
used = math.max(0, used + cost)
local keep = ttl
if rate > 0 then keep = math.max(ttl, stamp - now + used / rate) end
local px = math.max(1, math.ceil(keep * 1000))
redis.call("SET", KEYS[1], num(used) .. " " .. num(stamp), "PX", px)
return {1, num(math.max(0, burst - used)), num(until_full(used)), "0"}
"""
_TAKE_SHA = hashlib.sha1(TAKE_SCRIPT.encode()).hexdigest()


def _glob_escape(text: str) -> str:
    """`text` as a literal in a SCAN MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class RedisStore:
    """Keys live under `prefix`, so several gateways (or tests) can share one server.

    One pooled client for the store's lifetime. Retries are off and socket timeouts are
    short: a dead or stalled server fails the call at once (as `StoreError`), and
    `FailOpenStore` turns that into a miss instead of holding the request.
    """

    kind = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "llm-gateway:",
        timeout_s: float = 0.05,
        max_connections: int = 64,
    ) -> None:
        self.prefix = prefix
        # A burst of more calls than connections waits (up to timeout_s) for a free one; the
        # plain pool would fail them at once and FailOpenStore would read a healthy server
        # as down.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._client = Redis.from_pool(pool)  # owns the pool: aclose() closes both

    async def get(self, key: str) -> bytes | None:
        try:
            # decode_responses is off: redis-py hands back bytes, whatever its stubs allow.
            value = cast("bytes | None", await self._client.get(self.prefix + key))
        except _FAILURES as e:
            raise StoreError(f"redis GET failed: {e!r}") from e
        return value

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []  # MGET with no keys is an error
        prefix = self.prefix
        try:
            values = cast("list[bytes | None]", await self._client.mget([prefix + k for k in keys]))
        except _FAILURES as e:
            raise StoreError(f"redis MGET failed: {e!r}") from e
        return values

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        # PX takes whole milliseconds and rejects 0: round up to at least 1 ms.
        px = None if ttl_s is None else max(1, round(ttl_s * 1000))
        try:
            await self._client.set(self.prefix + key, value, px=px)
        except _FAILURES as e:
            raise StoreError(f"redis SET failed: {e!r}") from e

    async def delete(self, key: str) -> None:
        try:
            await self._client.delete(self.prefix + key)
        except _FAILURES as e:
            raise StoreError(f"redis DEL failed: {e!r}") from e

    async def scan(self, prefix: str) -> list[str]:
        match = _glob_escape(self.prefix + prefix) + "*"
        skip = len(self.prefix)
        try:
            keys = [key async for key in self._client.scan_iter(match=match, count=1000)]
        except _FAILURES as e:
            raise StoreError(f"redis SCAN failed: {e!r}") from e
        # SCAN may return a key more than once (while the server rehashes).
        return [key.decode()[skip:] for key in dict.fromkeys(keys)]

    async def take(
        self,
        key: str,
        cost: float,
        rate_per_s: float,
        burst: float,
        now: float,
        ttl_s: float,
        *,
        force: bool = False,
    ) -> Decision:
        # repr() of a float is exact, and Lua's tonumber reads it back to the same double.
        args = [repr(float(x)) for x in (cost, rate_per_s, burst, now, ttl_s)]
        args.append("1" if force else "0")
        keys = [self.prefix + key]
        try:
            try:
                reply = await self._client.evalsha(_TAKE_SHA, 1, *keys, *args)
            except NoScriptError:  # a fresh (or flushed) server: EVAL caches it for next time
                reply = await self._client.eval(TAKE_SCRIPT, 1, *keys, *args)
        except _FAILURES as e:
            raise StoreError(f"redis take (EVALSHA) failed: {e!r}") from e
        return _decision(reply)

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except _FAILURES as e:
            raise StoreError(f"redis PING failed: {e!r}") from e

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except _FAILURES as e:
            raise StoreError(f"redis close failed: {e!r}") from e


def _decision(reply: Any) -> Decision:
    try:
        allowed, remaining, reset_s, retry_after_s = reply
        return Decision(bool(allowed), float(remaining), float(reset_s), float(retry_after_s))
    except (TypeError, ValueError) as e:
        raise StoreError(f"redis take: unexpected reply {reply!r}") from e
