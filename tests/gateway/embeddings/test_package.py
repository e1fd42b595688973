"""gateway.embeddings re-exports its public names, and importing it (as the HTTP runtime
does at start-up, for the route) loads neither numpy nor torch."""

from __future__ import annotations

import importlib
import subprocess
import sys

import gateway.embeddings

_MODULES = ("batcher", "errors", "model", "route", "types")


def test_every_public_name_is_the_defining_modules_own() -> None:
    for name in gateway.embeddings.__all__:
        value = getattr(gateway.embeddings, name)
        homes = [importlib.import_module(f"gateway.embeddings.{m}") for m in _MODULES]
        assert any(getattr(home, name, None) is value for home in homes), name


def test_importing_the_package_leaves_the_model_stack_unloaded() -> None:
    probe = (
        "import sys, gateway.embeddings\n"
        "heavy = {'numpy', 'torch', 'sentence_transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True)
