"""Names a package exports without importing them until first used (PEP 562): the light
packages (backend.loading, backend.speculative) stay free of torch until a caller asks
for the part that needs it."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_getattr(package: str, names: Mapping[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` for `package`: name -> the submodule that defines it,
    imported when the name is first asked for, then kept in the package (later lookups
    skip this function)."""

    def __getattr__(name: str) -> object:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
