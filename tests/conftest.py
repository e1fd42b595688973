from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.testing.redis_server import RedisProcess


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
