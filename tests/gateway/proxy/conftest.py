"""A recording mock upstream and gateway processes in front of it, shared (package scope)
by the fidelity and SDK-through-the-proxy tests in this folder.

Two gateways share one mock: `plain` (no plugins; custom header rules; an Azure-style
group) and `chained` (the default chain: context, exact_cache, routing). The mock is
reset before every test; requests carry a fresh tag so the exact cache never answers
one test with another's answer.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving import free_port, stop, wait_until_up

ALIAS = "real-model"
EMBEDDER = "text-embedding-3-small"  # what the gateway's "emb" is called upstream


# ---- processes and mock helpers (test_proxy_sdk.py uses them too) ----------------------------


@contextmanager
def running_mock() -> Iterator[str]:
    """A mock upstream process; yields its base URL (ending in /v1)."""
    port = free_port()
    cmd = [sys.executable, "-m", "gateway.testing.mock_upstream", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_up(proc, url + "/models", 20, "mock upstream")
        yield url
    finally:
        stop(proc, 5)
        if proc.stderr is not None:
            proc.stderr.close()


@contextmanager
def running_gateways(configs: dict[str, str], folder: Path) -> Iterator[dict[str, str]]:
    """`llm-gateway serve --config` processes, started together; yields name -> URL."""
    procs: dict[str, tuple[subprocess.Popen[bytes], str, Path]] = {}
    try:
        for name, config in configs.items():
            path, log = folder / f"{name}.toml", folder / f"{name}.log"
            path.write_text(config)
            port = free_port()
            cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)]
            cmd += ["--port", str(port), "--log-level", "warning"]
            with log.open("wb") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            procs[name] = (proc, f"http://127.0.0.1:{port}", log)
        for name, (proc, url, log) in procs.items():
            wait_until_up(proc, url + "/health", 30, f"gateway {name}", log)
        yield {name: url for name, (_, url, _) in procs.items()}
    finally:
        for proc, _, _ in procs.values():
            stop(proc, 10)


def control(upstream: str, **fields: Any) -> None:
    """Scripts the mock: bytes values are sent base64-encoded (answer_b64, events_b64)."""
    encoded = {
        k: base64.b64encode(v).decode()
        if isinstance(v, bytes)
        else [base64.b64encode(e).decode() for e in v]
        if k == "events_b64"
        else v
        for k, v in fields.items()
    }
    httpx.post(upstream + "/control", json=encoded).raise_for_status()


def seen(upstream: str) -> dict[str, Any]:
    """What the mock recorded of the last request, its raw body decoded as `raw`."""
    data: dict[str, Any] = httpx.get(upstream + "/stats").json()
    data["raw"] = base64.b64decode(data["last_raw_b64"])
    return data


# ---- fixtures ---------------------------------------------------------------------------------


def models_config(upstream: str) -> str:
    return (
        f'[[groups]]\nname = "g"\nbackends = [{{url = "{upstream}"}}]\n'
        '[[models]]\nname = "m"\ngroups = ["g"]\n'
        f'[[models]]\nname = "alias"\ngroups = ["g"]\nupstream_model = "{ALIAS}"\n'
        f'[[models]]\nname = "emb"\ngroups = ["g"]\nupstream_model = "{EMBEDDER}"\n'
    )


@pytest.fixture(scope="package")
def upstream() -> Iterator[str]:
    with running_mock() as url:
        yield url


@pytest.fixture(scope="package")
def gateways(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    plain = (
        'plugins = []\n[headers]\nforward = ["x-tenant-tag"]\n'
        + models_config(upstream)
        + f'[[groups]]\nname = "azure"\nbackends = [{{url = "{upstream}"}}]\n'
        'headers = {"api-key" = "k"}\nquery = {"api-version" = "2024-10-21"}\n'
        '[[models]]\nname = "azure"\ngroups = ["azure"]\n'
    )
    configs = {"plain": plain, "chained": models_config(upstream)}
    with running_gateways(configs, tmp_path_factory.mktemp("fidelity")) as urls:
        yield urls


@pytest.fixture(autouse=True)
def fresh(upstream: str) -> None:
    control(upstream, reset=True)


@pytest.fixture(params=["plain", "chained"])
def url(request: pytest.FixtureRequest, gateways: dict[str, str]) -> str:
    """Each gateway in turn."""
    return gateways[request.param]


def tag() -> str:
    return uuid.uuid4().hex[:12]


def post(base: str, path: str, body: bytes, **headers: str) -> httpx.Response:
    headers.setdefault("content-type", "application/json")
    return httpx.post(base + path, content=body, headers=headers, timeout=10)
