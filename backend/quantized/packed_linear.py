"""A linear layer whose weight stays in GGUF's packed blocks (Q8_0, Q4_0, Q4_1).

Decoding is bound by streaming the weights: 4-bit blocks are 0.625 bytes a weight (Q4_1)
where float32 is 4, so a packed model reads ~6x less per step and holds ~6x less in
memory. Steps of few rows run our C++ kernel (kernels/quant_linear.cpp), which decodes
each block in registers exactly as ggml's float32 dequantization does and multiplies it
by every row; steps of many rows (prefill chunks) are compute-bound, so the layer
expands its weight into a float32 scratch copy for that one matmul and lets MKL's GEMM
run. Without the kernels (no compiler) the engine expands packed layers at start-up
(LlamaModel.unpack), so the pure-PyTorch path never pays a per-step expansion.

blocks: uint8 [out_features, in_features / 32 * block_bytes], row n's blocks in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gguf
import torch
import torch.nn.functional as F
from torch import nn

from backend.loading.dequant import dequantize

_T = gguf.GGMLQuantizationType
# The ggml types our kernel multiplies; others are expanded at load.
PACKED_TYPES = frozenset({_T.Q8_0, _T.Q4_0, _T.Q4_1})

# (out [M, N] f32, x [M, K] f32, blocks, ggml type, exact) -> None (kernels/quant_linear.cpp)
QuantLinearOp = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, bool], None]
# (out [N, K] f32, blocks, ggml type) -> None
DequantizeOp = Callable[[torch.Tensor, torch.Tensor, int], None]


@dataclass(frozen=True, slots=True)
class PackedKernels:
    quant_linear: QuantLinearOp
    dequantize: DequantizeOp


class PackedLinear(nn.Module):
    """y = x @ W^T with W [out_features, in_features] kept as packed blocks."""

    blocks: torch.Tensor  # a buffer: moves with the module, not a parameter

    def __init__(self, blocks: torch.Tensor, qtype: gguf.GGMLQuantizationType, in_features: int):
        super().__init__()
        if qtype not in PACKED_TYPES:
            raise ValueError(f"PackedLinear holds {sorted(t.name for t in PACKED_TYPES)}")
        block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        if in_features % block or blocks.shape[1] != in_features // block * block_bytes:
            raise ValueError(
                f"{qtype.name} blocks {tuple(blocks.shape)} do not hold rows of {in_features}"
            )
        self.register_buffer("blocks", blocks.contiguous())
        self.qtype = qtype
        self.in_features = in_features
        self.out_features = blocks.shape[0]
        self.kernels: PackedKernels | None = None
        # False: few-row steps round x to int8 per 32 values, as llama.cpp does (~2x less
        # arithmetic; ~96% top-1 agreement with the float reference on held-out text).
        # True: float32 x, the reference's arithmetic: the LM head (LlamaModel sets it),
        # where on a borderline token the rounding picks another word.
        self.exact_activations = False

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight expanded: [out_features, in_features]."""
        return self._expand(self.blocks).to(dtype)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` [T] of the weight, expanded: [T, in_features] float32 (an embedding
        lookup of a tied embedding / LM head)."""
        return self._expand(self.blocks.index_select(0, ids))

    def matmul(self, x: torch.Tensor, max_rows: int) -> torch.Tensor:
        """x [T, in_features] -> [T, out_features] in x's dtype."""
        rows = x.shape[0]
        if self.kernels is not None and rows <= max_rows and x.dtype == torch.float32:
            out = x.new_empty(rows, self.out_features)
            self.kernels.quant_linear(
                out, x.contiguous(), self.blocks, int(self.qtype), self.exact_activations
            )
            return out
        return F.linear(x, self.dense(x.dtype))

    def _expand(self, blocks: torch.Tensor) -> torch.Tensor:
        n = blocks.shape[0]
        if self.kernels is not None:
            out = torch.empty(n, self.in_features, device=blocks.device)
            self.kernels.dequantize(out, blocks.contiguous(), int(self.qtype))
            return out
        return dequantize(blocks.numpy(), self.qtype, (n, self.in_features), torch.float32)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self.qtype.name}"
