from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.stores import Store
from gateway.stores.fail_open import FailOpenStore
from gateway.stores.memory import MemoryStore
from gateway.stores.redis import RedisStore
from gateway.testing.redis_server import RedisProcess

MODEL_ID = "SmolLM2-135M-Instruct"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(
    proc: subprocess.Popen[bytes], url: str, seconds: float, what: str, log: Path | None = None
) -> None:
    """Polls GET `url` until it answers 200; fails the test (with the log) if the process
    exits first or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            output = log.read_text() if log else (proc.stderr.read() if proc.stderr else b"")
            pytest.fail(f"{what} exited with {proc.returncode}:\n{output!r}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not start:\n{log.read_text() if log else ''}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], seconds: float) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def server_url(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `llm-gateway serve` process on a loopback port."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        str(smollm2_gguf),
        "--served-model-name",
        MODEL_ID,
        "--log-level",
        "warning",
        # Prompt lookup for requests that ask for it ("speculative": true) only.
        "--speculative",
        "ngram",
        "--speculative-opt-in",
        "--no-adaptive-speculation",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, url + "/health", 120, "server", log)
        yield url
    finally:
        stop(proc, 20)


@pytest.fixture
def mock_upstream() -> Iterator[Callable[..., str]]:
    """Starts real mock OpenAI servers (gateway/testing/mock_upstream.py) in their own
    processes: mock_upstream(chunks=3, status=500, ...) -> base URL ending in /v1."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(**flags: object) -> str:
        port = _free_port()
        cmd = [sys.executable, "-m", "gateway.testing.mock_upstream", "--port", str(port)]
        for k, v in flags.items():
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}/v1"
        wait_until_up(proc, url + "/models", 20, "mock upstream")
        return url

    yield start
    for proc in procs:
        stop(proc, 5)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """gateway(config_toml) -> base URL of a running `llm-gateway serve --config`."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: str) -> str:
        proc, url = start_serve(config, tmp_path / f"gateway{len(procs)}")
        procs.append(proc)
        return url

    yield start
    for proc in procs:
        stop(proc, 10)


def start_serve(
    config: str, stem: Path, env: dict[str, str] | None = None, wait_s: float = 120
) -> tuple[subprocess.Popen[bytes], str]:
    """`llm-gateway serve --config` on a free port, its config and log beside `stem`;
    (the process, its base URL) once /health answers. The caller stops it."""
    path, log = stem.with_suffix(".toml"), stem.with_suffix(".log")
    path.write_text(config)
    port = _free_port()
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)]
    cmd += ["--port", str(port), "--log-level", "warning"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env or os.environ.copy()
        )
    url = f"http://127.0.0.1:{port}"
    wait_until_up(proc, url + "/health", wait_s, "gateway", log)
    return proc, url


def _config(groups: dict[str, list[str]], models: str, extra: str = "") -> str:
    text = extra + "\n"
    for name, urls in groups.items():
        backends = ", ".join(f'{{url = "{u}"}}' for u in urls)
        text += f'[[groups]]\nname = "{name}"\nbackends = [{backends}]\n\n'
    return text + models


def _model(groups: list[str], routing: str = "prefix_affinity", name: str = "m") -> str:
    return f'[[models]]\nname = "{name}"\ngroups = {json.dumps(groups)}\nrouting = "{routing}"\n'


def _stats(upstream: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(upstream + "/stats").json()
    return data


@pytest.fixture(scope="session")
def embedding_model() -> Iterator[Any]:
    """The real all-MiniLM-L6-v2, loaded once for the whole session and shared by every
    test that embeds (they only read it; each starts its own Embedder over it)."""
    from gateway.embeddings import EmbeddingModel

    model = EmbeddingModel()
    yield model
    model.close()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[FailOpenStore]:
    """The gateway's store as plugins get it (fail-open), over memory and over a real
    Redis in turn; the Redis one under a key prefix of the test's own. (test_stores.py
    has its own `store`: the bare implementations.)"""
    if request.param == "memory":
        inner: Store = MemoryStore()
    else:
        server: RedisProcess = request.getfixturevalue("redis_server")
        inner = RedisStore(server.url, prefix=f"test-{uuid.uuid4().hex}:", timeout_s=1.0)
    s = FailOpenStore(inner, timeout_s=1.0)
    yield s
    await s.close()
