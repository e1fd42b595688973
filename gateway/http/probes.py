"""/health and /ready, as orchestrators and load balancers read them.

/health (liveness): 200 while every vital part of this process works; 503 once one has
died for good (an in-process engine's step loop), so the orchestrator restarts the
process. An unreachable upstream is not a liveness failure: restarting the gateway
would not bring it back.

/ready (readiness): 200 while the gateway can serve: at least one model has a backend
whose circuit breaker lets calls through and that answers its probe. One model's
outage, or one of two upstream groups down, leaves the replica in the load balancer:
its other models still serve, and a model with no backend left answers 503 itself.
Probes run concurrently and their result is kept for `max_age_s`: load-balancer checks
from many sources cost one round of probes, and callers that arrive while a round runs
share it. A failing store makes the status "degraded", still 200: caches step aside
and requests go on.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from gateway.call import Reply
from gateway.payload import Payload
from gateway.runtime import Gateway
from gateway.targets import Backend


@dataclass(frozen=True, slots=True)
class Readiness:
    checked_at: float
    backends: dict[str, bool]  # backend id -> usable now
    models: dict[str, bool]  # model -> has a usable backend
    store_ok: bool


class Probes:
    def __init__(self, gateway: Gateway, max_age_s: float = 1.0) -> None:
        self.gateway = gateway
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
        readiness = await self._readiness()
        ok = any(readiness.models.values())
        status = ("ready" if readiness.store_ok else "degraded") if ok else "unavailable"
        payload: dict[str, object] = {"status": status}
        if detail:
            store = self.gateway.store
            error = None if readiness.store_ok else store.last_error
            payload["models"] = readiness.models
            payload["backends"] = readiness.backends
            payload["store"] = {"kind": store.kind, "ok": readiness.store_ok, "error": error}
        return Reply(body=Payload.of(payload), status=200 if ok else 503)

    async def _readiness(self) -> Readiness:
        last = self._last
        if last is not None and time.monotonic() - last.checked_at < self.max_age_s:
            return last
        if self._round is None or self._round.done():
            self._round = asyncio.ensure_future(self._probe())
        # shield: a caller that goes away does not cancel the round the others wait for
        readiness = await asyncio.shield(self._round)
        self._last = readiness
        return readiness

    async def _probe(self) -> Readiness:
        gw = self.gateway
        now = time.monotonic()
        backends = gw.backends()
        results = await asyncio.gather(*(_usable(b, now) for b in backends), gw.store.check())
        usable = dict(zip((b.id for b in backends), results[:-1], strict=True))
        models = {
            name: any(usable[b.id] for g in t.groups for b in g.backends)
            for name, t in gw.targets.items()
        }
        return Readiness(time.monotonic(), usable, models, bool(results[-1]))


async def _usable(backend: Backend, now: float) -> bool:
    return backend.breaker.available(now) and await backend.client.ready()
