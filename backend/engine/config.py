"""The engine's settings: one dataclass, checked on construction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from backend.speculative.config import SpeculativeConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(slots=True)
class EngineConfig:
    model: str | Path | None = None  # for from_config; Engine() takes a loaded model
    # The name clients use: the `model_name` label of every metric (default: the model's).
    served_model_name: str | None = None
    dtype: str = "auto"  # "auto": bfloat16 on CUDA, float32 on CPU
    device: str = "auto"  # "auto": cuda when available, else cpu
    max_model_len: int | None = None  # default: the model's own context length
    block_size: int = 16  # tokens per KV block
    num_kv_blocks: int | None = None  # default: what kv_cache_gb holds
    kv_cache_gb: float | None = None  # default: 2 on CPU, 90% of free memory on CUDA
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 1024
    prefix_caching: bool = True
    # "auto": a GGUF's Q8_0/Q4_0/Q4_1 weights stay packed (CPU); "none": expanded to
    # dtype; "int8" / "int4": projections quantized at load (backend/quantized/).
    quantization: str = "auto"
    int8_decode: bool = False  # int8 weight copies for small steps (CPU; see int8_decode.py)
    # "auto": our kernels where they run (CPU: the C++ ones in backend/kernels/, built on
    # first use; CUDA: the Triton attention kernels), else pure PyTorch; "torch": pure
    # PyTorch throughout.
    kernels: str = "auto"
    compiler: str | None = None  # C++ compiler for the kernels; None: g++, else c++, on PATH
    # llm-gateway's own folder: the kernels are built in home/kernels/; None: the user
    # cache folder (backend/environment.py: home_dir).
    home: Path | None = None
    speculative: SpeculativeConfig | None = None  # None: no speculative decoding

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError("max_model_len must be at least 2")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a power of two")
        if self.quantization not in ("auto", "none", "int8", "int4"):
            raise ValueError(
                f"quantization must be auto, none, int8 or int4, got {self.quantization!r}"
            )
        if self.kernels not in ("auto", "torch"):
            raise ValueError(f"kernels must be auto or torch, got {self.kernels!r}")

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolve_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return DTYPES[self.dtype]
