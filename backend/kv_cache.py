"""Per-sequence contiguous KV cache.

One sequence's keys and values for every layer, preallocated to the length the request
may reach. The paged, shared block pool (issue 2/5) replaces this behind the same two
calls the model makes: `write` and `read`.
"""

from __future__ import annotations

import torch

from backend.model_config import ModelConfig


class SequenceKVCache:
    def __init__(
        self, cfg: ModelConfig, capacity: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        shape = (cfg.num_layers, capacity, cfg.num_kv_heads, cfg.head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)  # [L, S_max, Hkv, D]
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.capacity = capacity
        self.length = 0  # tokens whose K/V are stored (same for every layer between steps)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [T, Hkv, D] for positions length .. length+T-1."""
        end = self.length + k.shape[0]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} > capacity {self.capacity}")
        self.k[layer, self.length : end] = k
        self.v[layer, self.length : end] = v

    def read(self, layer: int, num_new: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All keys/values up to and including the `num_new` just written: [S, Hkv, D]."""
        end = self.length + num_new
        return self.k[layer, :end], self.v[layer, :end]

    def advance(self, num_new: int) -> None:
        self.length += num_new
