"""The one error a bad configuration raises."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration; the message names the key (e.g. `groups[0].backends: ...`)."""
