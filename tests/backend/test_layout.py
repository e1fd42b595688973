"""The shape of backend/: what it may import, where it reads the environment, how big its
files and functions grow (DESIGN.md, STYLE.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.layout import environment_reads, oversized

BACKEND = Path(__file__).resolve().parents[2] / "backend"
SOURCES = sorted(BACKEND.rglob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _imports_in_subprocess(modules: list[str]) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after importing `modules`."""
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(' '.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=BACKEND.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {name.split(".")[0] for name in out.split()}


def test_backend_imports_nothing_of_the_gateway() -> None:
    for path in SOURCES:
        for module in _imported_modules(path):
            top = module.split(".")[0]
            assert top not in ("gateway", "plugins", "policies"), f"{path} imports {module}"


@pytest.mark.parametrize("module", ["backend.scheduler", "backend.blocks", "backend.sequence"])
def test_scheduling_modules_import_no_torch(module: str) -> None:
    loaded = _imports_in_subprocess([module])
    assert module.split(".")[0] in loaded
    assert "torch" not in loaded and "numpy" not in loaded


def test_light_packages_stay_light() -> None:
    """gateway/cli.py reads backend.speculative at start-up, and `llm-gateway models`
    needs only backend.loading.model_store: neither may pull in torch."""
    loaded = _imports_in_subprocess(["backend.speculative", "backend.loading.model_store"])
    assert "torch" not in loaded


def test_only_environment_py_reads_the_environment() -> None:
    others = [p for p in SOURCES if p != BACKEND / "environment.py"]
    assert [found for path in others for found in environment_reads(path)] == []


def test_files_and_functions_stay_small() -> None:
    assert [found for path in SOURCES for found in oversized(path)] == []
