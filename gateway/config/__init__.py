"""Gateway configuration: one file (TOML or YAML) plus environment overrides, read here
and nowhere else, validated at start-up with errors that name the bad key.

    [server]             host, port
    [engine]             the bundled engine (an upstream group of kind "engine")
    [[groups]]           upstream groups: kind "openai" (any OpenAI-compatible server,
                         one or more backends) or "engine"
    [[models]]           what clients put in `model` -> groups in fallback order, the
                         name the upstream gets (alias), routing policy, plugin chain
    plugins = [...]      the plugin chain, in order (names from the entry-point group
                         llm_gateway.plugins), each "name" or {name, optional, settings};
                         default: DEFAULT_CHAIN
    [auth]               API keys -> tenants (no keys: auth off, tenant "default")
    [headers]            which client headers go upstream, which upstream headers come back
    [store]              where caches and conversations live: "memory" (in process, the
                         default) or "redis" (shared by replicas); fail-open timeout
    [embeddings]         the local embedding model (all-MiniLM-L6-v2): /v1/embeddings and
                         the semantic cache, with dynamic batching
    [telemetry]          OpenTelemetry export

Environment overrides: LLM_GATEWAY_<KEY>__<KEY>... = value, e.g.
LLM_GATEWAY_SERVER__PORT=9000 or LLM_GATEWAY_GROUPS__0__BACKENDS__0__URL=http://...;
values are parsed as JSON when they parse (numbers, booleans, lists), else taken as text.

    sections.py      the sections and their keys
    engine.py        [engine], from which the engine's command-line flags are made
    environment.py   every read of the process environment
    load.py          file + overrides -> GatewayConfig, and the checks across sections
"""

from __future__ import annotations

from gateway.config.engine import EngineSection, engine_config
from gateway.config.environment import EngineEnvironment, engine_environment
from gateway.config.error import ConfigError
from gateway.config.load import load_config
from gateway.config.sections import (
    DEFAULT_CHAIN,
    DEFAULT_EMBEDDING_MODEL,
    ROUTING_POLICIES,
    ApiKey,
    AuthConfig,
    BackendConfig,
    EmbeddingsConfig,
    GatewayConfig,
    GroupConfig,
    HeadersConfig,
    ModelRoute,
    PluginEntry,
    RoutingPolicy,
    Seconds,
    ServerConfig,
    StoreConfig,
    TelemetryConfig,
)

__all__ = [
    "DEFAULT_CHAIN",
    "DEFAULT_EMBEDDING_MODEL",
    "ROUTING_POLICIES",
    "ApiKey",
    "AuthConfig",
    "BackendConfig",
    "ConfigError",
    "EmbeddingsConfig",
    "EngineEnvironment",
    "EngineSection",
    "GatewayConfig",
    "GroupConfig",
    "HeadersConfig",
    "ModelRoute",
    "PluginEntry",
    "RoutingPolicy",
    "Seconds",
    "ServerConfig",
    "StoreConfig",
    "TelemetryConfig",
    "engine_config",
    "engine_environment",
    "load_config",
]
