"""Rotary position embeddings (HF "rotate_half" layout), with Llama 3 / linear scaling."""

from __future__ import annotations

import math

import torch

from backend.loading.model_config import RopeScaling


def inverse_frequencies(
    head_dim: int,
    theta: float,
    scaling: RopeScaling | None = None,
    freq_factors: torch.Tensor | None = None,
) -> torch.Tensor:
    """inv_freq: [head_dim // 2], float32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if freq_factors is not None:
        # GGUF's rope_freqs tensor: llama.cpp divides each frequency by its factor.
        inv_freq = inv_freq / freq_factors.to(torch.float64)
    elif scaling is not None and scaling.kind == "llama3":
        inv_freq = _llama3_scale(inv_freq, scaling)
    return inv_freq.to(torch.float32)


def _llama3_scale(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    # Long wavelengths (low frequencies) are slowed by `factor`, short ones kept, and the
    # band between is interpolated smoothly (Llama 3.1's scheme).
    low_freq_wavelen = s.original_max_position / s.low_freq_factor
    high_freq_wavelen = s.original_max_position / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def cos_sin_cache(
    inv_freq: torch.Tensor, max_positions: int, scaling: RopeScaling | None = None
) -> torch.Tensor:
    """[max_positions, head_dim] holding cos in the first half and sin in the second."""
    positions = torch.arange(max_positions, dtype=torch.float32)
    if scaling is not None and scaling.kind == "linear":
        positions = positions / scaling.factor
    freqs = torch.outer(positions, inv_freq)  # [P, D/2]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, H, D]; cos, sin: [T, 1, D/2]. Rotates pairs (i, i + D/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
