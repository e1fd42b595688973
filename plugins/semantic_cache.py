"""Semantic cache: a new question answered with the cached answer of an earlier one
that means the same, in the same conversation, for the same tenant and model.

Per call (chat completions whose newest message is a user turn of plain text):
1. Split (policies/cache.py): the partition key covers tenant, model, every sampling
   parameter, the conversation scope and the whole conversation before the newest user
   turn (system prompt, earlier turns, tool calls) — all must match exactly. Only the
   newest user turn's text is compared by meaning.
2. Embed that text (the gateway's embedder: all-MiniLM-L6-v2, dynamically batched with
   every other embedding call) and search the partition's FAISS index (plugins/
   semantic_index.py) for entries at `threshold` cosine or more.
3. Verify each candidate, best first (policies/semantic_verify.py): numbers, negation,
   polarity, key terms, task, word order, no opposite, sibling or differently measured
   words in the same place (WordNet, gateway/lexicon/), and a single swapped word must be
   a synonym.
4. A hit answers from the store (replayed as chunks for streams) with
   `x-semantic-cache: hit` and `x-semantic-similarity`; a miss goes on and its complete
   answer is kept: the entry (vector, question, answer) in the store under
   `sem:<partition>:<id>` with a TTL, and in the index. At start-up the index is rebuilt
   from the store, so entries outlive a restart (with the Redis store), and every
   `refresh_s` it loads what other gateway replicas sharing the store added.
5. Shadow checks: a `shadow_rate` share of hits is also answered by the backend in the
   background; the fresh answer is compared with the cached one (embedding cosine of
   the two answers) and counted agree/disagree: a live false-hit rate on /metrics.

Admission as for the exact cache: reproducible requests only by default, Cache-Control
honoured. Put it after `exact_cache` in the chain (an exact hit is cheaper).

numpy and FAISS (the `semantic` extra) are imported where they are used, not here: every
start-up imports this module (plugin discovery), with the extra installed or not.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import extras
from gateway.call import CHAT, Call, Reply
from gateway.lexicon import load_lexicon
from gateway.payload import Payload
from gateway.plugin import Next, Plugin
from gateway.replay import record, replay
from gateway.stores import Store, StoreError
from plugins.exact_cache import decode_entry, encode_entry
from plugins.semantic_evidence import Evidence
from plugins.semantic_store import PREFIX, StoredEntry, decode_stored, encode_stored, load_entries
from policies.cache import (
    CacheControl,
    entry_ttl,
    is_fresh,
    is_reproducible,
    parse_cache_control,
    semantic_split,
)
from policies.error_bound import ErrorBound
from policies.semantic_contrast import Lexicon
from policies.semantic_verify import Analysis, analyse, compare, verify

if TYPE_CHECKING:
    import numpy as np

    from gateway.runtime import PluginHost
    from plugins.semantic_index import IndexEntry, PartitionedIndex

log = logging.getLogger(__name__)

HEADER = "x-semantic-cache"
SIMILARITY_HEADER = "x-semantic-similarity"
SWEEP_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Found:
    """The best verified candidate: served, or held back by the error bound."""

    similarity: float
    entry: IndexEntry
    answer: Payload
    served: bool


class SemanticCache(Plugin):
    name = "semantic_cache"

    def __init__(
        self,
        *,
        threshold: float = 0.8,
        candidates: int = 4,
        ttl_s: float = 3600.0,
        max_ttl_s: float = 86400.0,
        max_entries: int = 100_000,
        refresh_s: float = 10.0,
        only_reproducible: bool = True,
        verify: bool = True,
        shadow_rate: float = 0.0,
        shadow_agreement: float = 0.9,
        max_error_rate: float | None = None,
        confidence: float = 0.95,
        lexicon: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < threshold <= 1:
            raise TypeError("threshold must be in (0, 1]")
        if not 0 <= shadow_rate <= 1:
            raise TypeError("shadow_rate must be in [0, 1]")
        if max_error_rate is not None and not 0 < max_error_rate < 1:
            raise TypeError("max_error_rate must be in (0, 1)")
        if not 0 < confidence < 1:
            raise TypeError("confidence must be in (0, 1)")
        extras.require("semantic", "the semantic_cache plugin")
        self.threshold, self.k = threshold, candidates
        self.ttl_s, self.max_ttl_s = ttl_s, max_ttl_s
        self.max_entries = max_entries
        self.refresh_s = refresh_s
        self.only_reproducible = only_reproducible
        self.verify = verify
        self.shadow_rate, self.shadow_agreement = shadow_rate, shadow_agreement
        self.bound = (
            ErrorBound(max_error_rate, confidence, floor=threshold) if max_error_rate else None
        )
        # WordNet's folder: the one `llm-gateway models pull` fills unless given.
        self.lexicon = Path(lexicon).expanduser() if lexicon else None
        self.words: Lexicon | None = None  # WordNet, when found
        self.evidence: Evidence | None = None
        self.index: PartitionedIndex | None = None
        self.store: Store | None = None
        self._gateway: PluginHost | None = None
        self._embed: Callable[[list[str]], Awaitable[np.ndarray]] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._clock = clock  # wall clock: expiry times are shared with other replicas
        self._swept = clock()

    async def startup(self, *, gateway: PluginHost) -> None:
        from plugins.semantic_index import PartitionedIndex

        embedder = await gateway.load_embedder()
        if embedder is None:
            raise RuntimeError("semantic_cache needs the embedding model ([embeddings] enabled)")
        self._gateway, self.store = gateway, gateway.store
        self._embed = embedder.embed
        self.evidence = Evidence(
            self.bound, self.shadow_agreement, embedder.embed, lambda: gateway.metrics
        )
        if self.verify:
            self.words = await load_lexicon(self.lexicon)
        self.index = PartitionedIndex(embedder.model.dim, self.max_entries, self._clock)
        await self.rebuild()
        if self.store.kind != "memory" and self.refresh_s > 0:
            # Other gateway replicas add entries to the shared store: pick them up.
            self._spawn(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.rebuild()

    async def shutdown(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def rebuild(self) -> int:
        """Loads every live entry the store holds that the index lacks (all of them at
        start-up; afterwards, those other replicas added); returns how many.
        Reads the store itself, not through its fail-open wrapper: a scan of many keys
        takes longer than a request's store timeout, and an index rebuilt empty because
        of that would silently lose the cache. A store that cannot answer at all leaves
        the index empty (logged); the gateway starts regardless."""
        assert self.store is not None and self.index is not None
        store: Store = getattr(self.store, "inner", self.store)
        try:
            return await load_entries(store, self.index, self._clock())
        except StoreError as exc:
            log.warning("semantic cache: cannot rebuild from the %s store: %s", store.kind, exc)
            return 0

    def _count(self, outcome: str) -> None:
        metrics = self._gateway.metrics if self._gateway is not None else None
        if metrics is not None:
            metrics.cache_outcome(self.name, outcome)

    async def handle(self, *, call: Call, call_next: Next) -> Reply:
        if call.endpoint != CHAT:
            return await call_next(call)
        control = parse_cache_control(call.headers.get("cache-control"))
        view = call.request
        reproducible = is_reproducible({"temperature": view.temperature, "seed": view.seed})
        split = None
        if (
            self.index is not None
            and control.may_write
            and (reproducible or not self.only_reproducible)
        ):
            data = call.body.data
            split = semantic_split(call.endpoint, call.tenant, call.conversation_id, data)
        if split is None:
            self._count("bypass")
            call.response_headers[HEADER] = "bypass"
            return await call_next(call)
        assert self._embed is not None
        try:
            vector = (await self._embed([split.query]))[0]
        except Exception as exc:  # embedder overloaded or failing: the cache steps aside
            log.warning("semantic cache bypassed, embedding failed: %r", exc)
            self._count("bypass")
            call.response_headers[HEADER] = "bypass"
            return await call_next(call)
        found = None
        if control.may_read:
            found = await self.lookup(split.context_key, split.query, vector, control.max_age)
            if found is not None and found.served:
                body, evidence = found.answer, self.evidence
                self._count("hit")
                call.response_headers[HEADER] = "hit"
                call.response_headers[SIMILARITY_HEADER] = f"{found.similarity:.4f}"
                if evidence and self.shadow_rate and random.random() < self.shadow_rate:
                    similarity, entry = found.similarity, found.entry
                    self._spawn(evidence.shadow(call, call_next, body, similarity, entry))
                if call.stream:  # the gateway hides the usage chunk if the client did not ask
                    return Reply(stream=replay(body, include_usage=True))
                return Reply(body=body)
        self._count("miss" if found is None else "explore")
        call.response_headers[HEADER] = "miss"
        ttl = entry_ttl(self.ttl_s, self.max_ttl_s, control)
        held_back = found

        async def keep(body: Payload) -> None:
            await self.add(split.context_key, split.query, vector, body, ttl)
            if held_back is not None and self.evidence is not None:
                cached, similarity = held_back.answer, held_back.similarity
                self._spawn(self.evidence.explored(cached, body, similarity, held_back.entry))

        reply = await call_next(call)
        if reply.body is not None:
            await keep(reply.body)
        elif reply.stream is not None:
            reply.stream = record(reply.stream, keep)
        return reply

    async def lookup(
        self, partition: str, query: str, vector: np.ndarray, max_age: float | None = None
    ) -> Found | None:
        """The best verified entry (served when the error bound, if any, allows it), or
        None."""
        assert self.index is not None and self.store is not None
        found = self.index.search(partition, vector, self.k, self.threshold)
        if not found:
            return None
        new = analyse(query)
        for similarity, entry in found:
            try:
                verified = not self.verify or await self._verified(entry, new)
            except Exception as exc:  # the word pair could not be embedded: no hit
                log.warning("semantic cache verification failed: %r", exc)
                return None
            if not verified:
                continue
            age = self._clock() - entry.created
            if max_age is not None and not is_fresh(age, CacheControl(max_age=max_age)):
                continue
            raw = await self.store.get(entry.store_key)
            stored = decode_stored(raw)
            answer = decode_entry(stored.answer) if stored is not None else None
            if answer is None:  # expired or evicted in the store (perhaps by a replica)
                self.index.remove(entry.id)
                continue
            served = self.evidence is None or self.evidence.allows(similarity, entry)
            if served:
                self.index.touch(entry.id)
            return Found(similarity, entry, answer[1], served)
        return None

    async def _verified(self, entry: IndexEntry, new: Analysis) -> bool:
        diff = compare(entry.analysis, new, self.words)  # once: verify takes it back
        similarity = None
        if diff.swapped is not None:
            assert self._embed is not None
            words = await self._embed(list(diff.swapped))
            similarity = float(words[0] @ words[1])
        return verify(entry.analysis, new, similarity, self.words, diff).same

    async def add(
        self, partition: str, query: str, vector: np.ndarray, body: Payload, ttl_s: float
    ) -> None:
        import numpy as np

        from plugins.semantic_index import IndexEntry

        assert self.index is not None and self.store is not None
        now = self._clock()
        entry_id = random.getrandbits(62)  # unique across replicas sharing one store
        key = f"{PREFIX}{partition}:{entry_id}"
        stored = StoredEntry(
            partition=partition,
            query=query,
            vector=np.asarray(vector, dtype=np.float32).tobytes(),
            expires=now + ttl_s,
            answer=encode_entry(body, now),
        )
        await self.store.set(key, encode_stored(stored), ttl_s)
        entry = IndexEntry(entry_id, partition, query, analyse(query), key, now, now + ttl_s)
        for gone in self.index.add(entry, vector):
            await self.store.delete(gone.store_key)
        if self._clock() - self._swept > SWEEP_EVERY_S:
            # Expired entries are dropped when a search meets them; this catches those
            # in partitions nobody asks about any more (the store expired them itself).
            self._swept = self._clock()
            self.index.expired(now)

    # ---- shadow checks ----------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
