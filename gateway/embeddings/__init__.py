"""Text embeddings: all-MiniLM-L6-v2 (or any local sentence-transformers folder), an
async front that merges concurrent requests into batched model calls, and the
POST /v1/embeddings route that serves them.

    EmbeddingModel    model.py    loads the model with sentence-transformers, offline,
                                  on a torch thread of its own; encode() runs it there
    PackedBert        packed.py   BERT's forward over a batch's real tokens only
    Embedder          batcher.py  `await embed(texts)`: queues the texts, batches them
                                  and hands each caller its rows
    Encoded, ...      types.py    what passes between them; TextEncoder, the seam
    EmbedderClosed..  errors.py   the 503s
    serve_embeddings  route.py    one request in OpenAI's shape

Importing this package costs what the route needs (msgspec), nothing more: the HTTP
runtime imports serve_embeddings at start-up, and numpy, torch and sentence-transformers
take seconds to import, so the names from types.py, batcher.py and model.py load on
first use (PEP 562 __getattr__), as they did when gateway.embeddings was imported
only where the model loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gateway.embeddings.errors import EmbedderClosed, EmbeddingQueueFull, EmbeddingUnavailable
from gateway.embeddings.route import MAX_INPUTS, EmbeddingHost, serve_embeddings

if TYPE_CHECKING:
    from gateway.embeddings.batcher import Embedder
    from gateway.embeddings.model import DEFAULT_MODEL, EmbeddingModel, default_model_path
    from gateway.embeddings.types import Embedded, Encoded, TextEncoder, Vectors

__all__ = [
    "DEFAULT_MODEL",
    "MAX_INPUTS",
    "Embedded",
    "Embedder",
    "EmbedderClosed",
    "EmbeddingHost",
    "EmbeddingModel",
    "EmbeddingQueueFull",
    "EmbeddingUnavailable",
    "Encoded",
    "TextEncoder",
    "Vectors",
    "default_model_path",
    "serve_embeddings",
]

# name -> the submodule that defines it, imported when the name is first asked for
_LAZY = {
    "Embedder": "batcher",
    "DEFAULT_MODEL": "model",
    "EmbeddingModel": "model",
    "default_model_path": "model",
    "Embedded": "types",
    "Encoded": "types",
    "TextEncoder": "types",
    "Vectors": "types",
}

# Hidden from mypy, which reads the TYPE_CHECKING imports above instead: a misspelt name
# stays an error there rather than typing as object.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
