"""What the semantic cache learns from the backend: each comparison of a cached answer
with the backend's answer to the new question is a labelled outcome (agree: the cached
answer was right for it; disagree: a false hit, or one it would have been).

Outcomes come from two places (plugins/semantic_cache.py):
- shadow checks: a `shadow_rate` share of served hits is answered by the backend too,
  in the background; disagreements are the live false-hit rate on /metrics;
- explorations (with `max_error_rate` set): a verified candidate the error bound does
  not allow yet is answered by the backend (the client gets that answer) and compared.
With `max_error_rate`, every outcome feeds the bound (policies/error_bound.py), which
decides from then on which candidates are served.

Answers agree when their texts are equal or their embeddings' cosine is at least
`agreement`: a stand-in for "the cached answer is right for the new question", exact
for reproducible answers to the same question, looser for reworded ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from gateway.call import Call
from gateway.payload import Payload
from gateway.plugin import Next
from policies.error_bound import ErrorBound

if TYPE_CHECKING:
    import numpy as np

    from gateway.metrics import GatewayMetrics
    from plugins.semantic_index import IndexEntry

log = logging.getLogger(__name__)


class Evidence:
    def __init__(
        self,
        bound: ErrorBound | None,
        agreement: float,
        embed: Callable[[list[str]], Awaitable[np.ndarray]],
        metrics: Callable[[], GatewayMetrics | None],
    ) -> None:
        self.bound = bound
        self.agreement = agreement
        self._embed = embed
        self._metrics = metrics
        self.shadow_agreed = self.shadow_disagreed = 0

    def allows(self, similarity: float, entry: IndexEntry) -> bool:
        """Whether a verified candidate may be served (always, without a bound)."""
        return self.bound is None or self.bound.allows(similarity, entry.evidence)

    async def agree(self, cached: Payload, fresh: Payload) -> bool:
        texts = [_text(cached), _text(fresh)]
        if texts[0] == texts[1]:
            return True
        vectors = await self._embed(texts)
        return float(vectors[0] @ vectors[1]) >= self.agreement

    async def shadow(
        self, call: Call, call_next: Next, cached: Payload, similarity: float, entry: IndexEntry
    ) -> None:
        """A served hit: asks the backend too and compares its answer with the cached one."""
        fresh_call = call.edit(stream=None, stream_options=None).replace(
            state={}, response_headers={}
        )

        async def fresh() -> Payload:
            reply = await call_next(fresh_call)
            assert reply.body is not None
            return reply.body

        agree = await self._compare("shadow", cached, fresh(), similarity, entry)
        if agree is None:
            return
        if agree:
            self.shadow_agreed += 1
        else:
            self.shadow_disagreed += 1
        metrics = self._metrics()
        if metrics is not None:
            checked = self.shadow_agreed + self.shadow_disagreed
            metrics.false_hit_rate.set(self.shadow_disagreed / checked)

    async def explored(
        self, cached: Payload, fresh: Payload, similarity: float, entry: IndexEntry
    ) -> None:
        """A candidate the bound held back was answered by the backend: compare."""

        async def answered() -> Payload:
            return fresh

        await self._compare("explore", cached, answered(), similarity, entry)

    async def _compare(
        self,
        source: str,
        cached: Payload,
        fresh: Awaitable[Payload],
        similarity: float,
        entry: IndexEntry,
    ) -> bool | None:
        """Whether the answers agree (None when that could not be found out): counted
        by `source` and learned from."""
        try:
            agree = await self.agree(cached, await fresh)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("semantic cache %s comparison failed: %r", source, exc)
            self._count(source, "error")
            return None
        self._learn(similarity, agree, entry)
        self._count(source, "agree" if agree else "disagree")
        return agree

    def _learn(self, similarity: float, agree: bool, entry: IndexEntry) -> None:
        if self.bound is None:
            return
        self.bound.observe(similarity, not agree, entry.evidence)
        metrics = self._metrics()
        if metrics is not None:
            for band, served in enumerate(self.bound.served_bands()):
                low, high = self.bound.edges(band)
                metrics.semantic_band_served.labels(f"{low:.2f}-{high:.2f}").set(served)

    def _count(self, source: str, outcome: str) -> None:
        metrics = self._metrics()
        if metrics is None:
            return
        if source == "shadow":
            metrics.shadow_checks.labels(outcome).inc()
        else:
            metrics.semantic_explorations.labels(outcome).inc()


def _text(body: Payload) -> str:
    parts = []
    for c in body.data.get("choices") or ():
        message = c.get("message") or {}
        content = message.get("content") if "message" in c else c.get("text")
        parts.append(content if isinstance(content, str) else "")
    return "".join(parts)
