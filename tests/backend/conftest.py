"""What the engine's tests share: one dequantized SmolLM2 (quantization "none": the float32
reference; tests/backend/quantized/ covers the packed blocks) for the whole session that
the engines run (an engine attaches our few-row matmul kernel to it; the int8 test loads
a copy of its own, which it changes further), a second copy no engine runs (for tests of
plain PyTorch paths), and engine configs with a KV cache the size the tests need instead
of a server's 2 GB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backend.engine import EngineConfig
from backend.kernels import CpuKernels, load_cpu_kernels
from backend.loading.weights import LoadedModel, load_model
from gateway.config import engine_environment
from tests.serving import TEST_KV_CACHE_GB


@pytest.fixture(scope="session")
def loaded(smollm2_gguf: Path) -> LoadedModel:
    return load_model(smollm2_gguf, quantization="none")


@pytest.fixture(scope="session")
def plain_loaded(smollm2_gguf: Path) -> LoadedModel:
    """A second copy that no Engine ever runs: an engine attaches our few-row matmul
    kernel to the model it is given (LlamaModel.enable_skinny_linear), and the runner
    and proposer tests compare plain PyTorch paths."""
    return load_model(smollm2_gguf, quantization="none")


def small_kv_config(**kwargs: Any) -> EngineConfig:
    """EngineConfig(**kwargs) with the tests' KV cache size unless it names its own."""
    if "num_kv_blocks" not in kwargs:
        kwargs.setdefault("kv_cache_gb", TEST_KV_CACHE_GB)
    return EngineConfig(**kwargs)


@pytest.fixture(scope="session")
def cpu_kernels() -> CpuKernels:
    """Our C++ kernels, built as the engine builds them; the test is skipped where the
    environment turns them off (LLM_GATEWAY_CPU_KERNELS=0)."""
    env = engine_environment()  # LLM_GATEWAY_CPU_KERNELS, CXX, LLM_GATEWAY_HOME
    if not env.cpu_kernels:
        pytest.skip("CPU kernels turned off by LLM_GATEWAY_CPU_KERNELS=0")
    built = load_cpu_kernels(env.compiler, env.home)
    assert built is not None, "the CPU kernels did not build (is g++ installed?)"
    return built
