"""What the engine's tests share: one dequantized SmolLM2 for the whole session (tests
read it and never change it; the int8 test loads its own copy, which it changes), and
engine configs with a KV cache the size the tests need instead of a server's 2 GB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backend.engine import EngineConfig
from backend.loading.weights import LoadedModel, load_model
from tests.serving import TEST_KV_CACHE_GB


@pytest.fixture(scope="session")
def loaded(smollm2_gguf: Path) -> LoadedModel:
    return load_model(smollm2_gguf)


def small_kv_config(**kwargs: Any) -> EngineConfig:
    """EngineConfig(**kwargs) with the tests' KV cache size unless it names its own."""
    if "num_kv_blocks" not in kwargs:
        kwargs.setdefault("kv_cache_gb", TEST_KV_CACHE_GB)
    return EngineConfig(**kwargs)
