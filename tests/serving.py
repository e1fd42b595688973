"""Real processes for tests: `llm-gateway serve` on a free loopback port, waiting for a
server to answer, stopping it, and the config text tests start gateways with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.testing import processes
from gateway.testing.redis_server import free_port

MODEL_ID = "SmolLM2-135M-Instruct"
# A KV cache the size the tests need (~5,600 tokens of SmolLM2), not a server's 2 GB.
TEST_KV_CACHE_GB = 0.25


def wait_until_up(
    proc: subprocess.Popen[bytes], url: str, seconds: float, what: str, log: Path | None = None
) -> None:
    """Polls GET `url` until it answers 200; fails the test (with the log) if the process
    exits first or `seconds` pass."""
    try:
        processes.wait_until_up(proc, url, seconds, what, log)
    except processes.NotUp as exc:
        pytest.fail(str(exc))


def stop(proc: subprocess.Popen[bytes], seconds: float) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_serve(
    config: str,
    stem: Path,
    env: dict[str, str] | None = None,
    wait_s: float = 120,
    launcher: Sequence[str] = ("-m", "gateway.cli"),
) -> tuple[subprocess.Popen[bytes], str]:
    """`llm-gateway serve --config` on a free port, its config and log beside `stem`;
    (the process, its base URL) once /health answers. The caller stops it. `launcher`:
    the Python arguments that run the command line."""
    path, log = stem.with_suffix(".toml"), stem.with_suffix(".log")
    path.write_text(config)
    port = free_port()
    cmd = [sys.executable, *launcher, "serve", "--config", str(path)]
    cmd += ["--port", str(port), "--log-level", "warning"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env or os.environ.copy()
        )
    url = f"http://127.0.0.1:{port}"
    wait_until_up(proc, url + "/health", wait_s, "gateway", log)
    return proc, url


def gateway_config(groups: dict[str, list[str]], models: str, extra: str = "") -> str:
    text = extra + "\n"
    for name, urls in groups.items():
        backends = ", ".join(f'{{url = "{u}"}}' for u in urls)
        text += f'[[groups]]\nname = "{name}"\nbackends = [{backends}]\n\n'
    return text + models


def model_route(groups: list[str], routing: str = "prefix_affinity", name: str = "m") -> str:
    return f'[[models]]\nname = "{name}"\ngroups = {json.dumps(groups)}\nrouting = "{routing}"\n'


def upstream_stats(upstream: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(upstream + "/stats").json()
    return data
