"""/health and /ready, as orchestrators and load balancers read them.

/health (liveness): 200 while every vital part of this process works; 503 once one has
died for good (an in-process engine's step loop), so the orchestrator restarts the
process. An unreachable upstream is not a liveness failure: restarting the gateway
would not bring it back.

/ready (readiness): 200 while the gateway can serve: at least one model has a backend
whose circuit breaker lets calls through and that answers its probe. One model's
outage, or one of two upstream groups down, leaves the replica in the load balancer:
its other models still serve, and a model with no backend left answers 503 itself.
Probes run concurrently, in the background every `every_s` while the server runs
(`keep_fresh`), so /ready answers at once from the last round; load-balancer checks from
many sources cost no probes of their own. A result older than `max_age_s` (no server
loop running the rounds, or a round still waiting on a slow upstream) is refreshed on
demand, and callers that arrive while a round runs share it. What the process learns
between rounds counts at once: a backend ejected by its circuit breaker, a store the
caches already bypass. A failing store makes the status "degraded", still 200: caches
step aside and requests go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from gateway.call import Reply
from gateway.payload import Payload
from gateway.runtime import Gateway

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Readiness:
    """One round of probes: what each backend and the store answered."""

    checked_at: float
    answered: dict[str, bool]  # backend id -> its probe succeeded
    store_ok: bool


class Probes:
    def __init__(self, gateway: Gateway, every_s: float = 1.0, max_age_s: float = 2.0) -> None:
        self.gateway = gateway
        self.every_s = every_s
        self.max_age_s = max_age_s
        self._last: Readiness | None = None
        self._round: asyncio.Task[Readiness] | None = None

    def health(self, detail: bool) -> Reply:
        dead = [b.id for b in self.gateway.backends() if not b.client.alive()]
        payload: dict[str, object] = {"status": "dead" if dead else "ok"}
        if dead and detail:
            payload["dead"] = dead
        return Reply(body=Payload.of(payload), status=503 if dead else 200)

    async def ready(self, detail: bool) -> Reply:
        """The last round's answers, with what this process knows now on top: a backend
        whose breaker opened since, or a store the caches already bypass, counts at once."""
        readiness = await self._readiness()
        gw, now = self.gateway, time.monotonic()
        usable = {
            b.id: readiness.answered.get(b.id, False) and b.breaker.available(now)
            for b in gw.backends()
        }
        models = {
            name: any(usable[b.id] for g in t.groups for b in g.backends)
            for name, t in gw.targets.items()
        }
        store = gw.store
        store_ok = readiness.store_ok and not store.degraded
        ok = any(models.values())
        status = ("ready" if store_ok else "degraded") if ok else "unavailable"
        payload: dict[str, object] = {"status": status}
        if detail:
            error = None if store_ok else store.last_error
            payload["models"] = models
            payload["backends"] = usable
            payload["store"] = {"kind": store.kind, "ok": store_ok, "error": error}
        return Reply(body=Payload.of(payload), status=200 if ok else 503)

    async def keep_fresh(self) -> None:
        """A round of probes every `every_s`, until cancelled (the server stops)."""
        while True:
            try:
                await self._readiness(max_age_s=0.0)
            except Exception:  # a probe that raised: the next round tries again
                log.exception("readiness probes failed")
            await asyncio.sleep(self.every_s)

    async def _readiness(self, max_age_s: float | None = None) -> Readiness:
        last = self._last
        age = self.max_age_s if max_age_s is None else max_age_s
        if last is not None and time.monotonic() - last.checked_at < age:
            return last
        if self._round is None or self._round.done():
            self._round = asyncio.ensure_future(self._probe())
        # shield: a caller that goes away does not cancel the round the others wait for
        readiness = await asyncio.shield(self._round)
        self._last = readiness
        return readiness

    async def _probe(self) -> Readiness:
        gw = self.gateway
        backends = gw.backends()
        results = await asyncio.gather(*(b.client.ready() for b in backends), gw.store.check())
        answered = dict(zip((b.id for b in backends), results[:-1], strict=True))
        return Readiness(time.monotonic(), answered, bool(results[-1]))
