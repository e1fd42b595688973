"""Llama-family decoder in plain PyTorch: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Weights use the Hugging Face layout ([out_features, in_features], rotate-half RoPE);
the loader converts GGUF tensors to it. Q/K/V and gate/up projections are fused into
one matmul each, which matters at batch 1 where every kernel launch counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from backend.attention import AttentionMetadata, paged_attention
from backend.int8_decode import attach_int8
from backend.linear import SkinnyLinear, attach_skinny, project
from backend.loading.model_config import ModelConfig
from backend.rope import apply_rotary, cos_sin_cache, inverse_frequencies


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 whatever the model dtype, as the reference does.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=False)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        meta: AttentionMetadata,
        kv: torch.Tensor,
    ) -> torch.Tensor:
        """x: [T, hidden]; kv: this layer's cache [2, num_blocks, block_size, Hkv, D]."""
        t = x.shape[0]
        q, k, v = project(x, self.qkv_proj).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = apply_rotary(q.view(t, self.num_heads, self.head_dim), cos, sin)  # [T, H, D]
        k = apply_rotary(k.view(t, self.num_kv_heads, self.head_dim), cos, sin)  # [T, Hkv, D]
        v = v.view(t, self.num_kv_heads, self.head_dim)
        out = paged_attention(q, k, v, kv[0], kv[1], meta)  # [T, H, D]
        return project(out.view(t, self.q_size), self.o_proj)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.intermediate = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = project(x, self.gate_up_proj).split(self.intermediate, dim=-1)
        return project(F.silu(gate) * up, self.down_proj)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        meta: AttentionMetadata,
        kv: torch.Tensor,
    ) -> torch.Tensor:
        # Direct .forward calls: nn.Module.__call__ costs microseconds a call, which adds up
        # over ~150 calls per decode step at batch 1.
        x = x + self.self_attn.forward(self.input_layernorm.forward(x), cos, sin, meta, kv)
        return x + self.mlp.forward(self.post_attention_layernorm.forward(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rope_cache = torch.empty(0)  # [max_positions, head_dim]: cos | sin; see init_rope

    def init_rope(self, device: torch.device, freq_factors: torch.Tensor | None = None) -> None:
        cfg = self.config
        inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, freq_factors)
        self.rope_cache = cos_sin_cache(inv_freq, cfg.max_position_embeddings, cfg.rope_scaling).to(
            device
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: torch.Tensor,
        num_layers: int | None = None,
    ) -> torch.Tensor:
        """input_ids, positions: [T]; kv_cache: [L, 2, num_blocks, block_size, Hkv, D].

        Returns hidden states [T, hidden] and writes the T tokens' K/V into the cache.
        num_layers: run only the first layers, then the final norm (early exit: the
        self-draft guesser); their K/V equal what the full model writes there.
        """
        x = F.embedding(input_ids, self.embed_tokens.weight)
        cos, sin = self.rope_cache[positions].to(x.dtype).unsqueeze(1).chunk(2, dim=-1)  # [T,1,D/2]
        for i, layer in enumerate(self.layers[:num_layers]):
            x = layer.forward(x, cos, sin, meta, kv_cache[i])
        return self.norm.forward(x)

    def enable_int8_decode(self) -> None:
        """Adds int8 copies of every projection and the LM head for small decode steps."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                attach_int8(module)

    def enable_skinny_linear(self, op: SkinnyLinear) -> None:
        """Few-token steps use our few-row matmul kernel (backend/linear.py)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                attach_skinny(module, op)

    def allocate_kv_cache(
        self, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        cfg = self.config
        shape = (cfg.num_layers, 2, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        return torch.zeros(shape, dtype=dtype, device=device)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] -> float32 logits [N, vocab]."""
        return project(hidden, self.lm_head, max_rows=64).float()
