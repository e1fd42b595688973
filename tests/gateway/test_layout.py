"""The shape of gateway/, plugins/ and policies/: the process environment is read in one
module (gateway/config/environment.py), and files and functions stay small (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    p for top in ("gateway", "plugins", "policies") for p in (ROOT / top).rglob("*.py")
)
ENVIRONMENT = ROOT / "gateway" / "config" / "environment.py"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def test_only_the_config_reads_the_environment() -> None:
    for path in SOURCES:
        if path == ENVIRONMENT:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv"):
                pytest.fail(f"{path}:{node.lineno} reads the environment (os.{node.attr})")
            if isinstance(node, ast.Attribute) and node.attr in ("getproxies", "proxy_bypass"):
                pytest.fail(f"{path}:{node.lineno} reads the proxy variables")
            if isinstance(node, ast.ImportFrom) and node.module == "os":
                names = {alias.name for alias in node.names}
                assert not names & {"environ", "getenv"}, f"{path} imports os.environ/getenv"


def test_files_and_functions_stay_small() -> None:
    for path in SOURCES:
        text = path.read_text()
        assert len(text.splitlines()) <= MAX_FILE_LINES, f"{path} is over {MAX_FILE_LINES} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = (node.end_lineno or node.lineno) - first + 1
                assert length <= MAX_FUNCTION_LINES, f"{path}:{node.lineno} {node.name}: {length}"
