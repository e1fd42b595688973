"""What a plugin gets at start-up (`startup(*, gateway)`): the gateway's shared services,
not the gateway itself, so a plugin depends on a few stable names only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.embeddings import Embedder
    from gateway.metrics import GatewayMetrics
    from gateway.stores.fail_open import FailOpenStore
    from gateway.targets import Backend


@dataclass(frozen=True, slots=True)
class PluginHost:
    store: FailOpenStore  # where caches and conversations keep state (fails open)
    metrics: GatewayMetrics | None  # Prometheus metrics, None when off
    backends: Callable[[], list[Backend]]  # every backend of every model, each once
    # The local embedding model, loaded on the first call (None when not configured).
    load_embedder: Callable[[], Awaitable[Embedder | None]]
