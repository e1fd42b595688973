"""Finds plugin classes by name in the entry-point group `llm_gateway.plugins` (built-in
plugins are registered there too, by this package's own pyproject) and builds them
from config, with errors that name the config key."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from importlib.metadata import entry_points

from gateway.chain import ChainEntry
from gateway.config import ConfigError, PluginEntry
from gateway.plugin import ENTRY_POINT_GROUP, Plugin

log = logging.getLogger(__name__)


def discover() -> dict[str, type[Plugin]]:
    """name -> plugin class, for every installed distribution's entry points."""
    found: dict[str, type[Plugin]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            log.warning("plugin %r is registered twice; keeping the first", ep.name)
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # a broken third-party package must not stop start-up
            log.warning("cannot load plugin %r (%s): %r", ep.name, ep.value, exc)
            continue
        if not (inspect.isclass(cls) and issubclass(cls, Plugin)):
            log.warning("entry point %r does not name a Plugin subclass; ignored", ep.name)
            continue
        found[ep.name] = cls
    return found


def build_chain(
    entries: list[PluginEntry],
    available: Mapping[str, type[Plugin]],
    where: str,
    instances: dict[tuple[str, str], Plugin],
) -> list[ChainEntry]:
    """ChainEntries for `entries` (config key `where`). Plugins with the same name and
    settings are built once and shared between models' chains (`instances`)."""
    chain: list[ChainEntry] = []
    for i, entry in enumerate(entries):
        cls = available.get(entry.name)
        if cls is None:
            known = ", ".join(sorted(available)) or "none installed"
            raise ConfigError(f"{where}[{i}]: unknown plugin {entry.name!r} (known: {known})")
        key = (entry.name, repr(sorted(entry.settings.items())))
        plugin = instances.get(key)
        if plugin is None:
            try:
                plugin = cls(**entry.settings)
            except TypeError as exc:
                raise ConfigError(f"{where}[{i}].settings: {entry.name}: {exc}") from None
            instances[key] = plugin
        chain.append(ChainEntry(entry.name, plugin, entry.optional))
    return chain
