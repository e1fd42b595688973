"""Fixtures for the whole suite: the model file, real Redis servers, a real
`llm-gateway serve`, mock upstream processes, gateways started from config text, the
embedding model, and the store as plugins get it. Helpers to start and stop processes
are in tests/serving.py."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.stores import Store
from gateway.stores.fail_open import FailOpenStore
from gateway.stores.memory import MemoryStore
from gateway.stores.redis import RedisStore
from gateway.testing.redis_server import RedisProcess
from tests.serving import (
    MODEL_ID,
    TEST_KV_CACHE_GB,
    free_port,
    start_serve,
    stop,
    wait_until_up,
)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF (pulled by `make install`)."""
    from backend.loading.model_store import default_model_path

    path = Path(os.environ.get("LLM_GATEWAY_TEST_MODEL") or default_model_path())
    if not path.exists():
        pytest.fail(
            f"model file {path} is missing: run `llm-gateway models pull` (make install does)"
        )
    return path


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (marked anyio) run on asyncio, what the gateway serves on."""
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """One real Redis (or Valkey) server for the session (tests/redis_server.py); tests
    keep apart by key prefix."""
    with RedisProcess() as server:
        yield server


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    """A server of the test's own, for tests that kill or restart it."""
    with RedisProcess() as server:
        yield server


@pytest.fixture(scope="session")
def server_url(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `llm-gateway serve` process on a loopback port."""
    port = free_port()
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
        "--kv-cache-gb",
        str(TEST_KV_CACHE_GB),
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
        port = free_port()
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
