"""Builds the running Gateway from a validated GatewayConfig: upstream groups and their
backends, model targets, API keys, the plugin chains (one per model, plugin instances
shared where name and settings agree)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from opentelemetry.trace import Tracer

from gateway import extras
from gateway.auth import Authenticator
from gateway.chain import ChainObserver
from gateway.config import (
    DEFAULT_EMBEDDING_MODEL,
    ConfigError,
    EmbeddingsConfig,
    GatewayConfig,
    GroupConfig,
    ModelRoute,
    StoreConfig,
)
from gateway.headers import HeaderRules
from gateway.metrics import GatewayMetrics
from gateway.runtime import Gateway
from gateway.runtime.admission import Gate

if TYPE_CHECKING:
    from gateway.embeddings import Embedder
from gateway.plugin import Plugin
from gateway.plugin_loader import build_chain, discover
from gateway.stores import Store
from gateway.stores.fail_open import FailOpenStore
from gateway.stores.memory import MemoryStore
from gateway.stores.redis import RedisStore
from gateway.targets import Backend, Group, ModelTarget
from gateway.upstreams.base import Upstream
from gateway.upstreams.http import HttpUpstream
from policies.admission import Admission

ENGINE_GROUP = "local"


def build_gateway(
    config: GatewayConfig,
    engine: Upstream | None = None,
    engine_model: str | None = None,
    plugins: Mapping[str, type[Plugin]] | None = None,
    observer: ChainObserver | None = None,
    environ: Mapping[str, str] | None = None,
    tracer: Tracer | None = None,
) -> Gateway:
    """engine: the in-process engine upstream when one runs, serving `engine_model`.
    With no models configured, that model is served through an engine group of its own.
    plugins: name -> class (default: entry-point discovery)."""
    groups_cfg = list(config.groups)
    models_cfg = list(config.models)
    if engine is not None and not any(g.kind == "engine" for g in groups_cfg):
        groups_cfg.append(GroupConfig(name=ENGINE_GROUP, kind="engine"))
    expose = HeaderRules(config.headers.expose)
    groups = {g.name: _group(g, i, engine, environ, expose) for i, g in enumerate(groups_cfg)}
    if not models_cfg and engine is not None and engine_model is not None:
        engine_groups = [g.name for g in groups_cfg if g.kind == "engine"]
        models_cfg = [ModelRoute(name=engine_model, groups=engine_groups)]
    targets = {
        m.name: ModelTarget(m.name, [groups[g] for g in m.groups], m.upstream_model, m.routing)
        for m in models_cfg
    }
    if not targets:
        raise ConfigError("models: nothing to serve (configure [[models]] or run the engine)")
    metrics = observer if isinstance(observer, GatewayMetrics) else None
    gw = Gateway(
        targets,
        auth=Authenticator(config.api_keys(environ)),
        tracer=tracer,
        capture_content=config.telemetry.capture_content,
        store=build_store(config.store, metrics),
        forward=HeaderRules(config.headers.forward),
        embedder_factory=embedder_factory(config.embeddings),
        embedder_names=embedder_names(config.embeddings),
        embedding_max_tokens=config.embeddings.max_tokens_per_request,
    )
    available = discover() if plugins is None else dict(plugins)
    instances: dict[tuple[str, str], Plugin] = {}
    chains = {}
    for i, m in enumerate(models_cfg):
        where = f"models[{i}].plugins" if m.plugins is not None else "plugins"
        chains[m.name] = build_chain(config.chain_for(m), available, where, instances)
    gw.plugins = list(instances.values())
    gw.build_chains(chains, observer)
    return gw


def _group(
    cfg: GroupConfig,
    index: int,
    engine: Upstream | None,
    env: Mapping[str, str] | None,
    expose: HeaderRules,
) -> Group:
    if cfg.kind == "engine":
        if engine is None:
            raise ConfigError(f"groups[{index}]: kind engine, but the engine is not running")
        name = f"{cfg.name}/engine"
        backend = Backend(
            id=name, group=cfg.name, upstream=engine, gate=engine_gate(name, engine, cfg)
        )
        return Group(cfg.name, [backend])
    api_key = cfg.bearer(index, env)
    backends = []
    for b in cfg.backends:
        name = b.name or b.url
        client = HttpUpstream(
            b.url,
            name=name,
            api_key=api_key,
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            max_connections=cfg.max_connections,
            http_client=cfg.http_client,
            headers=cfg.headers,
            query=cfg.query,
            expose=expose,
        )
        gate = None
        if cfg.max_in_flight is not None or cfg.max_in_flight_per_tenant is not None:
            admission = Admission(
                max_requests=cfg.max_in_flight or 2**31,
                max_tokens=cfg.max_in_flight_tokens,
                max_per_tenant=cfg.max_in_flight_per_tenant,
            )
            gate = Gate(name, admission)
        backends.append(
            Backend(id=name, weight=b.weight, group=cfg.name, upstream=client, gate=gate)
        )
    return Group(cfg.name, backends)


def engine_gate(name: str, engine: Upstream, cfg: GroupConfig | None = None) -> Gate | None:
    """The bundled engine's admission: by default twice what it runs per step (the rest
    wait in its queue) and twice the tokens its KV cache holds."""
    capacity = getattr(engine, "capacity", None)
    if capacity is None:
        return None
    seqs, kv_tokens = capacity()
    cfg = cfg or GroupConfig(name=name, kind="engine")
    admission = Admission(
        max_requests=cfg.max_in_flight or 2 * seqs,
        max_tokens=cfg.max_in_flight_tokens or 2 * kv_tokens,
        max_per_tenant=cfg.max_in_flight_per_tenant,
    )
    return Gate(name, admission)


def build_store(cfg: StoreConfig, metrics: GatewayMetrics | None = None) -> FailOpenStore:
    """The configured store, wrapped to fail open (gateway/stores/fail_open.py)."""
    inner: Store
    if cfg.kind == "redis":
        inner = RedisStore(cfg.url, prefix=cfg.prefix, timeout_s=cfg.timeout_ms / 1e3)
    else:
        inner = MemoryStore(max_entries=cfg.max_entries, max_bytes=int(cfg.max_mb * 2**20))
    on_bypass = None
    if metrics is not None:
        kind = cfg.kind

        def on_bypass(op: str) -> None:
            metrics.store_bypass(kind, op)

    return FailOpenStore(
        inner, timeout_s=cfg.timeout_ms / 1e3, cooldown_s=cfg.cooldown_s, on_bypass=on_bypass
    )


def embedder_factory(cfg: EmbeddingsConfig) -> Callable[[], Awaitable[Embedder]] | None:
    """What loads the embedding service when first needed (Gateway.load_embedder): the
    model in a worker thread (seconds; the event loop keeps serving), then the batcher."""
    if not local_embeddings(cfg):
        return None

    async def load() -> Embedder:
        # Imported here: torch and sentence-transformers cost seconds to import.
        from gateway.embeddings import Embedder, EmbeddingModel

        model = await asyncio.to_thread(
            EmbeddingModel,
            cfg.model,
            name=cfg.served_model_name,
            device=cfg.device,
            threads=cfg.threads,
        )
        embedder = Embedder(
            model,
            window_s=cfg.batch_window_ms / 1e3,
            max_batch=cfg.max_batch_size,
            max_queue=cfg.max_queue,
        )
        await embedder.start()
        return embedder

    return load


def embedder_names(cfg: EmbeddingsConfig) -> frozenset[str]:
    """The names /v1/embeddings answers to, known before the model loads."""
    if not local_embeddings(cfg):
        return frozenset()
    if cfg.served_model_name:
        return frozenset({cfg.served_model_name})
    return frozenset({DEFAULT_EMBEDDING_MODEL if cfg.model is None else Path(cfg.model).name})


def local_embeddings(cfg: EmbeddingsConfig) -> bool:
    """Whether the local model serves /v1/embeddings: [embeddings] enabled, or unset and
    the semantic extra installed. MissingExtra (a ConfigError) for enabled = true, or a
    model folder named, without the extra."""
    if cfg.enabled is False:
        return False
    if cfg.enabled is None and cfg.model is None:
        return extras.installed("semantic")
    extras.require("semantic", "the local embedding model ([embeddings] enabled or model)")
    return True
