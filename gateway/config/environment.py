"""The process environment: the one place the gateway reads it.

    LLM_GATEWAY_<KEY>__<KEY>...   overrides one config key (apply_overrides), e.g.
                                  LLM_GATEWAY_SERVER__PORT=9000
    *_env keys of the config      secrets by variable name: server.admin_key_env,
                                  auth.keys[].key_env, groups[].api_key_env (secret)
    LLM_GATEWAY_HOME              llm-gateway's folder: pulled models in HOME/models,
                                  built kernels in HOME/kernels (engine_environment)
    LLM_GATEWAY_CPU_KERNELS=0     the engine without our C++ kernels
    CXX                           the C++ compiler that builds them
    HTTP(S)_PROXY, NO_PROXY       the proxy for an upstream's URL (upstream_proxy)
    HF_HUB_OFFLINE,               default to 1 before the embedding model loads, so no
    TRANSFORMERS_OFFLINE          model hub is ever reached (default_to_offline_hub)
    LLM_GATEWAY_WORKER_CONFIG,    the config file and logging choice a parent hands its
    LLM_GATEWAY_WORKER_LOG        --workers processes

Every function takes `environ` (default: this process's) so tests pass their own.
backend/ reads none of these: the gateway hands the engine its settings
(EngineEnvironment.apply -> EngineConfig).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import urllib.request
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config.error import ConfigError

if TYPE_CHECKING:
    from backend.engine import EngineConfig

ENV_PREFIX = "LLM_GATEWAY_"
HOME_VARIABLE = "LLM_GATEWAY_HOME"
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own name
CPU_KERNELS_VARIABLE = "LLM_GATEWAY_CPU_KERNELS"
COMPILER_VARIABLE = "CXX"
WORKER_CONFIG_VARIABLE = "LLM_GATEWAY_WORKER_CONFIG"
WORKER_LOG_VARIABLE = "LLM_GATEWAY_WORKER_LOG"
OFFLINE_HUB_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def variables(environ: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def secret(variable: str, key: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of `variable`, which the config key `key` names; ConfigError if unset."""
    value = variables(environ).get(variable)
    if not value:
        raise ConfigError(f"{key}: the variable {variable} is not set")
    return value


@dataclass(frozen=True, slots=True)
class EngineEnvironment:
    """What the environment says about the bundled engine."""

    cpu_kernels: bool = True  # False: LLM_GATEWAY_CPU_KERNELS=0
    compiler: str | None = None  # CXX
    home: Path | None = None  # LLM_GATEWAY_HOME

    def apply(self, config: EngineConfig) -> EngineConfig:
        """`config` with what the environment says, where the config has its defaults."""
        return dataclasses.replace(
            config,
            kernels=config.kernels if self.cpu_kernels else "torch",
            compiler=config.compiler or self.compiler,
            home=config.home or self.home,
        )


def engine_environment(environ: Mapping[str, str] | None = None) -> EngineEnvironment:
    env = variables(environ)
    home = env.get(HOME_VARIABLE)
    return EngineEnvironment(
        cpu_kernels=env.get(CPU_KERNELS_VARIABLE, "1") != "0",
        compiler=env.get(COMPILER_VARIABLE) or None,
        home=Path(home).expanduser() if home else None,
    )


def upstream_proxy(url: str) -> str | None:
    """The proxy the environment names for `url`, unless NO_PROXY exempts its host."""
    from httpx import URL

    parsed = URL(url)
    if urllib.request.proxy_bypass(parsed.host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parsed.scheme) or proxies.get("all")


def default_to_offline_hub() -> None:
    """HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE default to 1, so huggingface_hub and
    transformers never reach a model hub (an operator's own setting wins). Both read them
    once, when first imported: call this before sentence-transformers is imported."""
    for name in OFFLINE_HUB_VARIABLES:
        os.environ.setdefault(name, "1")


def hand_config_to_workers(path: Path, log_level: str, log_format: str) -> None:
    """uvicorn's --workers start fresh processes that build their own app: they find the
    parent's config file and logging choice here (worker_config_path, worker_logging)."""
    os.environ[WORKER_CONFIG_VARIABLE] = str(path.resolve())
    os.environ[WORKER_LOG_VARIABLE] = f"{log_level}:{log_format}"


def share_metrics_directory(environ: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """Where the workers keep their metrics (prometheus-client's multiprocess mode reads
    PROMETHEUS_MULTIPROC_DIR when it is imported, so it is set before they start): the
    operator's directory when they set one, else a new temporary one. Returns it, and
    whether it was made here (and so is the caller's to remove)."""
    given = variables(environ).get(METRICS_DIR_VARIABLE)
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="llm-gateway-metrics-"))
    os.environ[METRICS_DIR_VARIABLE] = str(path)
    return path, not given


def worker_logging(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(level, format) the parent chose; info and text when it said nothing."""
    level, _, fmt = variables(environ).get(WORKER_LOG_VARIABLE, "info:text").partition(":")
    return level, fmt or "text"


def worker_config_path(environ: Mapping[str, str] | None = None) -> Path:
    return Path(variables(environ)[WORKER_CONFIG_VARIABLE])


def apply_overrides(
    raw: dict[str, Any], sections: Collection[str], environ: Mapping[str, str] | None = None
) -> None:
    """Sets LLM_GATEWAY_<KEY>__<KEY>... = value into the raw config `raw`, for the
    variables whose first key is one of `sections`; values are parsed as JSON when they
    parse (numbers, booleans, lists), else taken as text."""
    for name, text in sorted(variables(environ).items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if path[0] not in sections:
            continue  # the other LLM_GATEWAY_* variables below are not config keys
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
