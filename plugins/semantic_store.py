"""How the semantic cache keeps its entries in the gateway's store (memory or Redis):
one key per entry, `sem:<partition>:<id>`, holding what the index needs to be rebuilt
without re-embedding (plugins/semantic_cache.py writes them; `load_entries` reads them
back at start-up and when other replicas sharing the store added some)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec

from gateway.stores import Store
from plugins.exact_cache import decode_entry
from policies.semantic_verify import analyse

if TYPE_CHECKING:
    from plugins.semantic_index import PartitionedIndex

log = logging.getLogger(__name__)

PREFIX = "sem:"


class StoredEntry(msgspec.Struct, array_like=True):
    """What the store keeps per entry: enough to rebuild the index without re-embedding."""

    partition: str
    query: str
    vector: bytes  # float32, the embedder's dimension
    expires: float  # wall clock
    answer: bytes  # exact_cache.encode_entry(body, created)


_stored_decoder = msgspec.json.Decoder(StoredEntry)
_encoder = msgspec.json.Encoder()


def encode_stored(stored: StoredEntry) -> bytes:
    return _encoder.encode(stored)


def decode_stored(raw: bytes | None) -> StoredEntry | None:
    if raw is None:
        return None
    try:
        return _stored_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def entry_id(key: str) -> int:
    """sem:<partition>:<id> -> id."""
    return int(key.rsplit(":", 1)[1])


async def load_entries(store: Store, index: PartitionedIndex, now: float) -> int:
    """Loads every live entry `store` holds that `index` lacks; returns how many."""
    import numpy as np

    from plugins.semantic_index import IndexEntry

    keys = [k for k in await store.scan(PREFIX) if entry_id(k) not in index]
    loaded = 0
    for start in range(0, len(keys), 500):
        batch = keys[start : start + 500]
        for key, raw in zip(batch, await store.get_many(batch), strict=True):
            stored = decode_stored(raw)
            if stored is None:
                continue
            found = decode_entry(stored.answer)
            if found is None or stored.expires <= now:
                continue
            vector = np.frombuffer(stored.vector, dtype=np.float32)
            if vector.shape != (index.dim,):
                continue  # written by another embedding model
            entry = IndexEntry(
                id=entry_id(key),
                partition=stored.partition,
                query=stored.query,
                analysis=analyse(stored.query),
                store_key=key,
                created=found[0],
                expires=stored.expires,
            )
            for gone in index.add(entry, vector):
                await store.delete(gone.store_key)
            loaded += 1
    if loaded:
        log.info("semantic cache: %d entries loaded from the %s store", loaded, store.kind)
    return loaded
