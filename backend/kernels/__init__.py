"""Our C++ CPU kernels and their loader.

paged_decode_attention.cpp  fused one-query attention over the paged KV cache,
                            checked against attention.py's PyTorch path
skinny_linear.cpp           few-row float32 matmul that reads each weight once,
                            checked against F.linear (used by linear.py)
loader.py                   builds them with torch's JIT extension builder, once,
                            and hands out the ops (None where they cannot build)
"""

from __future__ import annotations

from backend.kernels.loader import (
    CpuKernels,
    load_cpu_kernels,
    paged_decode_kernel,
    skinny_linear_kernel,
)

__all__ = ["CpuKernels", "load_cpu_kernels", "paged_decode_kernel", "skinny_linear_kernel"]
