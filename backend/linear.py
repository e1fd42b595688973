"""The one place the model multiplies by a weight matrix: picks the fastest exact path.

- a packed layer (backend/quantized/: GGUF blocks kept quantized) multiplies itself;
- int8 copies (int8_decode.py, opt-in) for steps of at most int8_decode.MAX_ROWS tokens;
- our few-row float32 kernel (kernels/skinny_linear.cpp) for steps of a few tokens:
  decode and speculative verify steps are bound by streaming the weights, and MKL's
  GEMM on some CPUs costs twice as much for 2 rows as for 1, which would eat the gain
  of verifying guesses in one pass; the kernel reads each weight once whatever the rows
  (~1.7x faster than MKL at 1 row, ~3x at 4 to 9 rows, on the 2-core EPYC we test on).
  A row's result does not depend on the rows beside it;
- PyTorch's F.linear otherwise (prefill chunks, big batches: compute-bound, MKL wins).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from backend import int8_decode
from backend.quantized import PackedLinear

# (out [M, N], x [M, K], w [N, K]) -> None; float32, contiguous (kernels/skinny_linear.cpp)
SkinnyLinear = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]

# Rows up to which the kernel beats MKL on the layers' matrices (576 to 3072 wide); the
# LM head (49152 x 576) stays ahead up to ~64 rows, so compute_logits passes a larger bound.
SKINNY_MAX_ROWS = 16


def attach_skinny(linear: nn.Linear, op: SkinnyLinear) -> bool:
    """Lets `project` use the few-row kernel for this layer, if its weight suits it
    (float32, contiguous, on CPU). Returns whether it does."""
    w = linear.weight
    if w.dtype != torch.float32 or w.device.type != "cpu" or not w.is_contiguous():
        return False
    setattr(linear, "skinny_op", op)  # noqa: B010 (not a tensor: nn.Module's setattr types)
    return True


def project(
    x: torch.Tensor, linear: nn.Linear | PackedLinear, max_rows: int = SKINNY_MAX_ROWS
) -> torch.Tensor:
    """x [T, K] @ weight.T -> [T, N]."""
    if isinstance(linear, PackedLinear):
        return linear.matmul(x, max_rows)
    rows = x.shape[0]
    q = getattr(linear, "weight_int8", None)
    if q is not None and rows <= int8_decode.MAX_ROWS:
        scale: torch.Tensor = linear.weight_scale  # type: ignore[assignment]
        return torch._weight_int8pack_mm(x.to(torch.bfloat16), q, scale).to(x.dtype)
    op: SkinnyLinear | None = getattr(linear, "skinny_op", None)
    if op is not None and rows <= max_rows and x.dtype == torch.float32:
        out = x.new_empty(rows, linear.weight.shape[0])
        op(out, x.contiguous(), linear.weight)
        return out
    return F.linear(x, linear.weight)
