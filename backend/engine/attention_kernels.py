"""Which fused attention kernels the engine runs, by device and what is installed."""

from __future__ import annotations

import logging

import torch

from backend.attention import DecodeKernel, PrefillKernel
from backend.kernels import CpuKernels

log = logging.getLogger(__name__)


def attention_kernels(
    device: torch.device, setting: str, cpu: CpuKernels | None
) -> tuple[DecodeKernel | None, PrefillKernel | None]:
    """Fused attention: our C++ decode kernel on CPU; on CUDA the Triton decode and
    prefill kernels (backend/kernels/triton_attention.py) where triton is installed
    (CUDA builds of torch bring it) and `setting` (EngineConfig.kernels) is auto; else
    PyTorch's SDPA."""
    if cpu is not None:
        return cpu.paged_decode, None
    if device.type != "cuda" or setting != "auto":
        return None, None
    from backend.kernels.triton_attention import (
        triton_available,
        triton_decode_attention,
        triton_prefill_attention,
    )

    if not triton_available():
        log.warning("triton is not installed: CUDA attention runs PyTorch's SDPA")
        return None, None
    return triton_decode_attention, triton_prefill_attention
