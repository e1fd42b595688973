"""Our C++ CPU kernels and their loader.

paged_decode_attention.cpp  fused one-query attention over the paged KV cache,
                            checked against attention.py's PyTorch path
skinny_linear.cpp           few-row float32 matmul that reads each weight once,
                            checked against F.linear (used by linear.py)
quant_linear.cpp            the same for weights kept in GGUF's Q8_0/Q4_0/Q4_1 blocks,
                            and their expansion (used by quantized/packed_linear.py)
decode_layer.cpp            a whole decoder layer for decode rows in one call (the
                            three above plus the element-wise steps), model.py's
                            DecoderLayer for one-query rows
kernels.h                   the entry points the fused layer calls
triton_attention.py         CUDA paged attention in Triton (decode rows, prefill chunks
                            over cached context), tested on CPU under TRITON_INTERPRET=1
loader.py                   builds them with torch's JIT extension builder, once,
                            and hands out the ops (None where they cannot build)
"""

from __future__ import annotations

from backend.kernels.loader import CpuKernels, attach_cpu_kernels, load_cpu_kernels

__all__ = ["CpuKernels", "attach_cpu_kernels", "load_cpu_kernels"]
