"""What the embeddings tests share: the real all-MiniLM-L6-v2, loaded once per session
(tests only read it; each starts its own Embedder over it), texts of every kind, and the
comparison every test makes against sentence-transformers' vectors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway.embeddings import Embedder, EmbeddingModel

TEXTS = [
    "How do I reset my password?",
    "What is the capital of France?",
    "a",
    "  leading and trailing spaces  ",
    "Ünïcödé, 日本語 and emoji 🙂 in one line",
    "embeddings " * 300,  # past max_seq_length (256 tokens): truncated
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="session")
def model(embedding_model: EmbeddingModel) -> EmbeddingModel:
    """The session's one loaded model (tests/gateway/conftest.py)."""
    return embedding_model


def _close(a: np.ndarray, b: np.ndarray) -> None:
    """Row by row: cosine >= 0.9999 and equal to 1e-5."""
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= 0.9999
    np.testing.assert_allclose(a, b, atol=1e-5)


async def _started(model: Any, **kwargs: Any) -> Embedder:
    embedder = Embedder(model, **kwargs)
    await embedder.start(warmup=False)
    return embedder
