from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF (pulled by `make install`)."""
    from backend.model_store import default_model_path

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
