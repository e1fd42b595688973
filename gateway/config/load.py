"""Reading the config: the file (TOML or YAML), then LLM_GATEWAY_* overrides from the
environment, then decoding into GatewayConfig and the checks that span sections (group
names unique, models naming known groups, URLs with the right schemes)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from gateway.config.environment import apply_overrides
from gateway.config.error import ConfigError
from gateway.config.sections import GatewayConfig


def load_config(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Reads `path` (TOML or YAML by extension; None: defaults), applies environment
    overrides, validates. Raises ConfigError naming the bad key."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read(path)
    apply_overrides(raw, set(GatewayConfig.__struct_fields__), environ)
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


_AT = re.compile(r"^(.*) - at `\$\.?(.*)`$")


def where_and_what(message: str) -> tuple[str, str]:
    """A msgspec validation message split into (where, what): "Expected `int` >= 1 - at
    `$.engine.max_num_seqs`" -> ("engine.max_num_seqs", "Expected `int` >= 1"); where is
    "" for the top level."""
    match = _AT.match(message)
    what, where = match.groups() if match else (message, "")
    return where, what


def _name_key(message: str) -> str:
    """msgspec says "Object contains unknown field `prot` - at `$.server`": lead with the key."""
    where, what = where_and_what(message)
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
