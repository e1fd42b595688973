"""Getting a model into memory: files, weights, shapes, and the bundled default model.

    load_model, LoadedModel   weights.py       a GGUF file or safetensors folder -> the
                                               model, its tokenizer and config
    GGUFFile                  gguf_file.py     GGUF metadata and raw tensor bytes, mmapped
    dequantize                dequant.py       GGUF quantized blocks -> dense tensors
    ModelConfig, RopeScaling  model_config.py  a Llama-family decoder's shape
    pull, DEFAULT_MODEL, ...  model_store.py   fetch, verify and keep the bundled model

Importing this package costs no torch (`llm-gateway models` only needs model_store):
the names from weights.py, gguf_file.py and dequant.py load on first use (PEP 562
__getattr__).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.lazy import lazy_getattr
from backend.loading.model_config import ModelConfig, RopeScaling
from backend.loading.model_store import (
    DEFAULT_MODEL,
    BundledModel,
    ModelFetchError,
    default_model_path,
    models_dir,
    pull,
)

if TYPE_CHECKING:
    from backend.loading.dequant import dequantize
    from backend.loading.gguf_file import GGUFError, GGUFFile
    from backend.loading.weights import LoadedModel, load_model

__all__ = [
    "DEFAULT_MODEL",
    "BundledModel",
    "GGUFError",
    "GGUFFile",
    "LoadedModel",
    "ModelConfig",
    "ModelFetchError",
    "RopeScaling",
    "default_model_path",
    "dequantize",
    "load_model",
    "models_dir",
    "pull",
]

# name -> the submodule that defines it, imported when the name is first asked for
_LAZY = {
    "dequantize": "dequant",
    "GGUFError": "gguf_file",
    "GGUFFile": "gguf_file",
    "LoadedModel": "weights",
    "load_model": "weights",
}

# Hidden from mypy, which reads the TYPE_CHECKING imports above instead.
if not TYPE_CHECKING:
    __getattr__ = lazy_getattr(__name__, _LAZY)
