"""Weight-only int8 copies of the linear layers, used for steps with few tokens.

Decoding a handful of sequences on a CPU is bound by memory bandwidth: every step streams
all weights once (538 MB in fp32 for SmolLM2-135M). Per-row symmetric int8 copies cut
that to a quarter and run through PyTorch's int8 weight-only matmul
(`torch._weight_int8pack_mm`, bf16 activations). Steps of more than MAX_ROWS tokens
(prefill chunks, big decode batches) are compute-bound and keep the exact weights; small
steps see int8 rounding (relative error ~1% per matmul), so outputs may differ from the
exact path: an opt-in trade, off by default.
"""

from __future__ import annotations

import torch
from torch import nn

# Steps with at most this many tokens use the int8 copies.
MAX_ROWS = 8


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (int8 [N, K], bf16 scales [N]) with weight ≈ q * scale per row."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)  # [N]
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.to(torch.bfloat16)


def attach_int8(linear: nn.Linear) -> None:
    q, scale = quantize_rows(linear.weight)
    linear.register_buffer("weight_int8", q, persistent=False)
    linear.register_buffer("weight_scale", scale, persistent=False)
