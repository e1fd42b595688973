"""Our GGUF parser reads exactly what the `gguf` package's reference reader reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from backend.loading.gguf_file import GGUFError, GGUFFile


def test_matches_reference_reader(smollm2_gguf: Path) -> None:
    ours = GGUFFile(smollm2_gguf)
    ref = GGUFReader(smollm2_gguf)
    ref_md = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata == ref_md
    assert len(ours.tensors) == len(ref.tensors) == 272
    for t in ref.tensors:
        mine = ours.tensors[t.name]
        assert mine.shape == tuple(reversed(t.shape.tolist()))
        assert mine.ggml_type == t.tensor_type
        assert np.array_equal(mine.data.ravel(), np.asarray(t.data).view(np.uint8).ravel())


def test_rejects_non_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(GGUFError, match="not a GGUF file"):
        GGUFFile(bad)


def test_rejects_truncated_file(smollm2_gguf: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_gguf.read_bytes()[:50_000_000])
    with pytest.raises(GGUFError, match="truncated"):
        GGUFFile(cut)
