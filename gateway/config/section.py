"""What every config section is: keyword-only, frozen, and strict about unknown keys (a
typo is an error that names the key, not a setting silently ignored)."""

from __future__ import annotations

from msgspec import Struct


class Section(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    pass
