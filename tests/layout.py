"""The checks both layout tests (tests/backend/test_layout.py, tests/gateway/test_layout.py)
run over their packages' sources: where the environment is read, and how big files and
functions grow (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80
_ENVIRONMENT = ("environ", "getenv", "putenv")
_PROXIES = ("getproxies", "proxy_bypass")  # urllib's readers of the *_PROXY variables


def environment_reads(path: Path) -> list[str]:
    """Each place `path` reads the process environment (os.environ/getenv/putenv, an
    import of them, urllib's proxy readers)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in _ENVIRONMENT:
            found.append(f"{path}:{node.lineno} reads the environment (os.{node.attr})")
        if isinstance(node, ast.Attribute) and node.attr in _PROXIES:
            found.append(f"{path}:{node.lineno} reads the proxy variables")
        imported = node.names if isinstance(node, ast.ImportFrom) and node.module == "os" else []
        if {alias.name for alias in imported} & {"environ", "getenv"}:
            found.append(f"{path}:{node.lineno} imports os.environ/getenv")
    return found


def oversized(path: Path) -> list[str]:
    """`path` if it is over MAX_FILE_LINES, and each function in it over MAX_FUNCTION_LINES
    (decorators included)."""
    text = path.read_text()
    found = []
    if len(text.splitlines()) > MAX_FILE_LINES:
        found.append(f"{path} is over {MAX_FILE_LINES} lines")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - first + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{path}:{node.lineno} {node.name} is {length} lines")
    return found
