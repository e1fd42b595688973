"""Read a GGUF file: metadata as plain Python values, tensors as raw quantized bytes.

The `gguf` package does the parsing (memory-mapped); this module turns its field
objects into str/int/float/list values and keeps tensor bytes un-dequantized, so the
weight loader decides when and to which dtype each tensor is expanded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader


@dataclass(frozen=True, slots=True)
class GGUFTensor:
    name: str
    ggml_type: GGMLQuantizationType
    # Logical shape in PyTorch order (outermost first), e.g. [out_features, in_features].
    shape: tuple[int, ...]
    # Raw bytes exactly as stored (memory-mapped, read-only): one row per outer index.
    data: np.ndarray


class GGUFFile:
    """A parsed GGUF file. `metadata` maps keys such as `llama.block_count` to values."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        reader = GGUFReader(self.path, "r")
        self.metadata: dict[str, Any] = {
            name: field.contents()
            for name, field in reader.fields.items()
            if not name.startswith("GGUF.")
        }
        self.tensors: dict[str, GGUFTensor] = {}
        for t in reader.tensors:
            # GGUF lists dims innermost first (ggml's ne[]); PyTorch wants outermost first.
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            self.tensors[t.name] = GGUFTensor(
                t.name, GGMLQuantizationType(t.tensor_type), shape, t.data
            )

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "llama"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """`key` under the architecture's own prefix, e.g. arch_value('block_count')."""
        return self.metadata.get(f"{self.architecture}.{key}", default)
