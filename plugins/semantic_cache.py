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
   polarity, key terms, task, word order, and a single swapped word must be a synonym.
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
from typing import TYPE_CHECKING

import msgspec

from gateway import extras
from gateway.call import CHAT, Call, Reply
from gateway.payload import Payload
from gateway.plugin import Next, Plugin
from gateway.replay import record, replay
from gateway.stores import Store, StoreError
from plugins.exact_cache import decode_entry, encode_entry
from policies.cache import (
    CacheControl,
    entry_ttl,
    is_fresh,
    is_reproducible,
    parse_cache_control,
    semantic_split,
)
from policies.semantic_verify import Analysis, analyse, substitution, verify

if TYPE_CHECKING:
    import numpy as np

    from gateway.runtime import PluginHost
    from plugins.semantic_index import IndexEntry, PartitionedIndex

log = logging.getLogger(__name__)

HEADER = "x-semantic-cache"
SIMILARITY_HEADER = "x-semantic-similarity"
PREFIX = "sem:"
SWEEP_EVERY_S = 60.0


class StoredEntry(msgspec.Struct, array_like=True):
    """What the store keeps per entry: enough to rebuild the index without re-embedding."""

    partition: str
    query: str
    vector: bytes  # float32, the embedder's dimension
    expires: float  # wall clock
    answer: bytes  # exact_cache.encode_entry(body, created)


_stored_decoder = msgspec.json.Decoder(StoredEntry)
_encoder = msgspec.json.Encoder()


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
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < threshold <= 1:
            raise TypeError("threshold must be in (0, 1]")
        if not 0 <= shadow_rate <= 1:
            raise TypeError("shadow_rate must be in [0, 1]")
        extras.require("semantic", "the semantic_cache plugin")
        self.threshold, self.k = threshold, candidates
        self.ttl_s, self.max_ttl_s = ttl_s, max_ttl_s
        self.max_entries = max_entries
        self.refresh_s = refresh_s
        self.only_reproducible = only_reproducible
        self.verify = verify
        self.shadow_rate, self.shadow_agreement = shadow_rate, shadow_agreement
        self.index: PartitionedIndex | None = None
        self.store: Store | None = None
        self._gateway: PluginHost | None = None
        self._embed: Callable[[list[str]], Awaitable[np.ndarray]] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._clock = clock  # wall clock: expiry times are shared with other replicas
        self._swept = clock()
        self.shadow_agreed = self.shadow_disagreed = 0

    async def startup(self, *, gateway: PluginHost) -> None:
        from plugins.semantic_index import PartitionedIndex

        embedder = await gateway.load_embedder()
        if embedder is None:
            raise RuntimeError("semantic_cache needs the embedding model ([embeddings] enabled)")
        self._gateway, self.store = gateway, gateway.store
        self._embed = embedder.embed
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
            return await self._load_all(store)
        except StoreError as exc:
            log.warning("semantic cache: cannot rebuild from the %s store: %s", store.kind, exc)
            return 0

    async def _load_all(self, store: Store) -> int:
        import numpy as np

        from plugins.semantic_index import IndexEntry

        assert self.index is not None
        index = self.index
        keys = [k for k in await store.scan(PREFIX) if _entry_id(k) not in index]
        loaded, now = 0, self._clock()
        for start in range(0, len(keys), 500):
            batch = keys[start : start + 500]
            for key, raw in zip(batch, await store.get_many(batch), strict=True):
                stored = _decode_stored(raw)
                if stored is None:
                    continue
                found = decode_entry(stored.answer)
                if found is None or stored.expires <= now:
                    continue
                vector = np.frombuffer(stored.vector, dtype=np.float32)
                if vector.shape != (self.index.dim,):
                    continue  # written by another embedding model
                entry = IndexEntry(
                    id=_entry_id(key),
                    partition=stored.partition,
                    query=stored.query,
                    analysis=analyse(stored.query),
                    store_key=key,
                    created=found[0],
                    expires=stored.expires,
                )
                for gone in self.index.add(entry, vector):
                    await store.delete(gone.store_key)
                loaded += 1
        if loaded:
            log.info("semantic cache: %d entries loaded from the %s store", loaded, store.kind)
        return loaded

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
        if control.may_read:
            hit = await self.lookup(split.context_key, split.query, vector, control.max_age)
            if hit is not None:
                similarity, body = hit
                self._count("hit")
                call.response_headers[HEADER] = "hit"
                call.response_headers[SIMILARITY_HEADER] = f"{similarity:.4f}"
                if self.shadow_rate and random.random() < self.shadow_rate:
                    self._spawn(self._shadow(call, call_next, body))
                if call.stream:  # the gateway hides the usage chunk if the client did not ask
                    return Reply(stream=replay(body, include_usage=True))
                return Reply(body=body)
        self._count("miss")
        call.response_headers[HEADER] = "miss"
        ttl = entry_ttl(self.ttl_s, self.max_ttl_s, control)

        async def keep(body: Payload) -> None:
            await self.add(split.context_key, split.query, vector, body, ttl)

        reply = await call_next(call)
        if reply.body is not None:
            await keep(reply.body)
        elif reply.stream is not None:
            reply.stream = record(reply.stream, keep)
        return reply

    async def lookup(
        self, partition: str, query: str, vector: np.ndarray, max_age: float | None = None
    ) -> tuple[float, Payload] | None:
        """(similarity, answer) of the best verified entry, or None."""
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
            stored = _decode_stored(raw)
            answer = decode_entry(stored.answer) if stored is not None else None
            if answer is None:  # expired or evicted in the store (perhaps by a replica)
                self.index.remove(entry.id)
                continue
            self.index.touch(entry.id)
            return similarity, answer[1]
        return None

    async def _verified(self, entry: IndexEntry, new: Analysis) -> bool:
        pair = substitution(entry.analysis, new)
        similarity = None
        if pair is not None:
            assert self._embed is not None
            words = await self._embed(list(pair))
            similarity = float(words[0] @ words[1])
        return verify(entry.analysis, new, similarity).same

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
        await self.store.set(key, _encoder.encode(stored), ttl_s)
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

    async def _shadow(self, call: Call, call_next: Next, cached: Payload) -> None:
        """Asks the backend too and compares its answer with the one served."""
        fresh_call = call.edit(stream=None, stream_options=None).replace(
            state={}, response_headers={}
        )
        try:
            reply = await call_next(fresh_call)
            assert reply.body is not None and self._embed is not None
            texts = [_text(cached), _text(reply.body)]
            vectors = await self._embed(texts)
            agree = texts[0] == texts[1] or float(vectors[0] @ vectors[1]) >= self.shadow_agreement
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("semantic cache shadow check failed: %r", exc)
            self._shadow_outcome("error")
            return
        if agree:
            self.shadow_agreed += 1
        else:
            self.shadow_disagreed += 1
        self._shadow_outcome("agree" if agree else "disagree")

    def _shadow_outcome(self, outcome: str) -> None:
        metrics = self._gateway.metrics if self._gateway is not None else None
        if metrics is None:
            return
        metrics.shadow_checks.labels(outcome).inc()
        checked = self.shadow_agreed + self.shadow_disagreed
        if checked:
            metrics.false_hit_rate.set(self.shadow_disagreed / checked)


def _entry_id(key: str) -> int:
    """sem:<partition>:<id> -> id."""
    return int(key.rsplit(":", 1)[1])


def _decode_stored(raw: bytes | None) -> StoredEntry | None:
    if raw is None:
        return None
    try:
        return _stored_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _text(body: Payload) -> str:
    parts = []
    for c in body.data.get("choices") or ():
        message = c.get("message") or {}
        content = message.get("content") if "message" in c else c.get("text")
        parts.append(content if isinstance(content, str) else "")
    return "".join(parts)
