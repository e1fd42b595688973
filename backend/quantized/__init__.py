"""Weights kept in GGUF's packed quantized blocks and multiplied without expanding them.

packed_linear.py  PackedLinear: a [out, in] weight held as Q8_0 / Q4_0 / Q4_1 blocks, its
                  matmul (our C++ kernel for few rows, a dense copy for many) and row
                  lookup (a tied embedding)
quantize.py       float weights -> packed blocks at load (--quantization int8 | int4)
"""

from __future__ import annotations

from backend.quantized.packed_linear import PACKED_TYPES, PackedKernels, PackedLinear
from backend.quantized.quantize import QUANTIZATIONS, pack_dense

__all__ = ["PACKED_TYPES", "QUANTIZATIONS", "PackedKernels", "PackedLinear", "pack_dense"]
