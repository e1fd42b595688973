"""EmbeddingModel with the real all-MiniLM-L6-v2: its vectors agree with
sentence-transformers' own, token counts are what the model saw, and a pipeline the
packed path does not match falls back to encode()."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from gateway.embeddings import DEFAULT_MODEL, EmbeddingModel, default_model_path
from tests.gateway.embeddings.conftest import TEXTS, _close


def _reference(model: EmbeddingModel, texts: list[str]) -> np.ndarray:
    """sentence-transformers' own encode, on the model's thread."""
    out = model.run(model.st.encode, texts, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(out, dtype=np.float32)


def test_vectors_equal_sentence_transformers_encode(model: EmbeddingModel) -> None:
    assert (model.name, model.dim, model.max_seq_length) == (DEFAULT_MODEL, 384, 256)
    vectors = model.encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    _close(vectors, _reference(model, TEXTS))
    _close(np.concatenate([model.encode([t]) for t in TEXTS]), vectors)  # batch = solo


def test_token_counts_are_what_the_model_saw(model: EmbeddingModel) -> None:
    counts = model.count_tokens(["a", "hello world", "embeddings " * 300])
    assert counts == [3, 4, 256]  # [CLS] ... [SEP]; the long one truncated
    assert model.encode_counted(["a", "hello world"]).tokens == [3, 4]
    assert model.encode([]).shape == (0, 384)


def test_other_pooling_falls_back_to_sentence_transformers(tmp_path: Path) -> None:
    """A folder whose pipeline the packed path does not match (CLS pooling here) still
    gives sentence-transformers' vectors, normalized."""
    folder = tmp_path / "cls-model"
    shutil.copytree(default_model_path(), folder)
    pooling = folder / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pooling.write_text(json.dumps(config))
    cls_model = EmbeddingModel(folder)
    try:
        assert cls_model.name == "cls-model"
        got = cls_model.encode(TEXTS[:3])
        ref = _reference(cls_model, TEXTS[:3])
        _close(got, ref / np.linalg.norm(ref, axis=1, keepdims=True))
    finally:
        cls_model.close()


def test_a_huge_text_is_cut_before_it_is_tokenized(model: EmbeddingModel) -> None:
    """The same vector and count as the text cut at any length past the model's window:
    what the tokenizer would have kept, without tokenizing megabytes first."""
    word = "embedding "
    huge, cut = word * 1_000_000, word * 2_000  # 10 MB, and well past 256 tokens
    encoded = model.encode_counted([huge, cut])
    assert encoded.tokens[0] == encoded.tokens[1] == model.max_seq_length
    np.testing.assert_allclose(encoded.vectors[0], encoded.vectors[1], atol=1e-6)
