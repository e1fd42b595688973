"""The values passed between the model and the batcher, and the seam between them:
`TextEncoder` is what Embedder runs (EmbeddingModel, or a stand-in in tests)."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Encoded:
    vectors: Vectors  # (n, dim), L2-normalized
    tokens: list[int]  # per text: tokens the model saw ([CLS]/[SEP] in, after truncation)


@dataclass(frozen=True, slots=True)
class Embedded:
    vectors: Vectors  # (n, dim), in the request's order
    tokens: int  # total over the request's texts (usage)


class TextEncoder(Protocol):
    """What Embedder runs: EmbeddingModel, or any stand-in with the same members."""

    @property
    def name(self) -> str: ...
    @property
    def dim(self) -> int: ...
    def submit(self, texts: list[str]) -> Future[Encoded]:
        """Starts encoding `texts` off the caller's thread; must not block."""
        ...

    def count(self, texts: list[str]) -> Future[list[int]]:
        """Starts counting the tokens of `texts` off the caller's thread."""
        ...
