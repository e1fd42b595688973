"""Llama-family decoder in plain PyTorch: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Weights use the Hugging Face layout ([out_features, in_features], rotate-half RoPE);
the loader converts GGUF tensors to it. Q/K/V and gate/up projections are fused into
one matmul each, which matters at batch 1 where every kernel launch counts.
"""

from __future__ import annotations

import contextlib
import math
import mmap
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backend.attention import AttentionMetadata, paged_attention
from backend.int8_decode import attach_int8
from backend.linear import SKINNY_MAX_ROWS, SkinnyLinear, attach_skinny, project
from backend.loading.model_config import ModelConfig
from backend.quantized import PackedKernels, PackedLinear
from backend.rope import apply_rotary, cos_sin_cache, inverse_frequencies

# Rows the LM head multiplies with the few-row kernels (packed weights stay packed);
# more rows expand the whole head first (49k x 576: ~110 MB of float32 a call).
LM_HEAD_MAX_ROWS = 64
# The fused decoder layer for one-query rows (kernels/decode_layer.cpp): (x [T, hidden],
# *DecoderLayer.fused_weights, cos [T, D/2], sin, k_cache, v_cache, slots [T],
# block_tables [T, M], ctx_lens [T], num_heads) -> None, x updated in place.
DecodeLayer = Callable[..., None]


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

    def fused_weights(self) -> tuple[Any, ...] | None:
        """This layer's weights as the fused decode kernel takes them: each projection
        packed (its blocks and ggml type) or float32 with our few-row kernel attached
        (the weight and -1); None when one is neither (int8 copies, another dtype)."""
        args: list[Any] = [
            self.input_layernorm.weight,
            self.post_attention_layernorm.weight,
            self.input_layernorm.eps,
        ]
        for proj in (
            self.self_attn.qkv_proj, self.self_attn.o_proj,
            self.mlp.gate_up_proj, self.mlp.down_proj,
        ):  # fmt: skip
            if isinstance(proj, PackedLinear) and proj.kernels is not None:
                args += [proj.blocks, int(proj.qtype)]
            elif (
                getattr(proj, "skinny_op", None) is not None
                and getattr(proj, "weight_int8", None) is None
            ):
                args += [proj.weight, -1]
            else:
                return None
        return tuple(args)


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        # Either may be a PackedLinear (backend/quantized/): a GGUF's quantized blocks.
        # _weight: skips Embedding's random init, which on the meta device imports
        # torch's symbolic-shape stack (sympy, mpmath: ~70 MB resident, for nothing).
        self.embed_tokens: nn.Embedding | PackedLinear = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, _weight=torch.empty(cfg.vocab_size, cfg.hidden_size)
        )
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head: nn.Linear | PackedLinear = nn.Linear(
            cfg.hidden_size, cfg.vocab_size, bias=False
        )
        if cfg.tie_word_embeddings:
            self.tie_lm_head()
        self.rope_cache = torch.empty(0)  # [max_positions, head_dim]: cos | sin; see init_rope
        self._decode_layer: DecodeLayer | None = None  # see enable_fused_decode
        self._fused: list[tuple[Any, ...]] = []  # per layer: DecoderLayer.fused_weights

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (packed weights are multiplied in float32)."""
        return self.norm.weight.dtype

    def tie_lm_head(self) -> None:
        if isinstance(self.embed_tokens, PackedLinear):
            self.lm_head = self.embed_tokens  # the same blocks serve both
        elif isinstance(self.lm_head, nn.Linear):
            self.lm_head.weight = self.embed_tokens.weight

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
        embed = self.embed_tokens
        if isinstance(embed, PackedLinear):
            x = embed.rows(input_ids).to(self.dtype)
        else:
            x = F.embedding(input_ids, embed.weight)
        if self._fused_step(meta, x.shape[0]):
            return self._fused_forward(x, positions, meta, kv_cache, num_layers)
        cos, sin = self.rope_cache[positions].to(x.dtype).unsqueeze(1).chunk(2, dim=-1)  # [T,1,D/2]
        for i, layer in enumerate(self.layers[:num_layers]):
            x = layer.forward(x, cos, sin, meta, kv_cache[i])
        return self.norm.forward(x)

    def decoder_layers(self) -> list[DecoderLayer]:
        return [layer for layer in self.layers if isinstance(layer, DecoderLayer)]

    def enable_fused_decode(self, op: DecodeLayer) -> bool:
        """Steps of few one-query rows run each layer as one call of our fused kernel
        (kernels/decode_layer.cpp), if every layer's weights suit it. Returns whether
        they do. Call after the other kernels are attached."""
        fused = [layer.fused_weights() for layer in self.decoder_layers()]
        if self.dtype != torch.float32 or any(f is None for f in fused):
            self._decode_layer, self._fused = None, []
            return False
        self._decode_layer, self._fused = op, [f for f in fused if f is not None]
        return True

    def _fused_step(self, meta: AttentionMetadata, rows: int) -> bool:
        return (
            self._decode_layer is not None
            and not meta.prefills
            and meta.num_decodes == rows
            and rows <= SKINNY_MAX_ROWS
            and meta.decode_kernel is not None
        )

    def _fused_forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: torch.Tensor,
        num_layers: int | None,
    ) -> torch.Tensor:
        assert self._decode_layer is not None
        cos, sin = self.rope_cache[positions].chunk(2, dim=-1)  # [T, D/2] each
        cos, sin = cos.contiguous(), sin.contiguous()
        x = x.contiguous()
        heads = self.config.num_heads
        for i, weights in enumerate(self._fused[:num_layers]):
            kv = kv_cache[i]
            self._decode_layer(
                x, *weights, cos, sin, kv[0], kv[1], meta.slot_mapping,
                meta.decode_block_tables, meta.decode_ctx_lens, heads,
            )  # fmt: skip
        return self.norm.forward(x)

    def enable_int8_decode(self) -> None:
        """Adds int8 copies of every projection and the LM head for small decode steps."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                attach_int8(module)

    def packed_layers(self) -> list[PackedLinear]:
        return [m for m in self.modules() if isinstance(m, PackedLinear)]

    @contextlib.contextmanager
    def exact_arithmetic(self) -> Iterator[None]:
        """Forward passes inside multiply packed weights with float32 activations, not
        int8-rounded ones, and skip the fused few-row layer: the arithmetic of the float
        reference whatever the step's size. For scoring a prompt, whose log-probabilities
        would otherwise depend on how many rows its step has (~0.3 apart below 17)."""
        packed = [(m, m.exact_activations) for m in self.packed_layers()]
        fused, self._decode_layer = self._decode_layer, None
        for m, _ in packed:
            m.exact_activations = True
        try:
            yield
        finally:
            for m, was in packed:
                m.exact_activations = was
            self._decode_layer = fused

    def enable_packed_kernels(self, kernels: PackedKernels) -> None:
        """Packed layers multiply with our quantized-block kernel (backend/quantized/);
        the LM head with float32 activations (PackedLinear.exact_activations)."""
        for layer in self.packed_layers():
            layer.kernels = kernels
        if isinstance(self.lm_head, PackedLinear):
            self.lm_head.exact_activations = True

    def unpack(self) -> None:
        """Expands every packed layer into a dense one of the model dtype (no kernel to
        multiply the blocks: the PyTorch path serves)."""
        tied = self.lm_head is self.embed_tokens
        for name, module in list(self.named_modules()):
            if isinstance(module, PackedLinear) and name not in ("embed_tokens", "lm_head"):
                self.set_submodule(name, self._dense_linear(module))
        if isinstance(self.embed_tokens, PackedLinear):
            weight = self.embed_tokens.dense(self.dtype)
            self.embed_tokens = nn.Embedding.from_pretrained(weight, freeze=True)
        if tied:
            with torch.device("meta"):
                self.lm_head = nn.Linear(
                    self.config.hidden_size, self.config.vocab_size, bias=False
                )
            self.tie_lm_head()
        elif isinstance(self.lm_head, PackedLinear):
            self.lm_head = self._dense_linear(self.lm_head)

    def _dense_linear(self, packed: PackedLinear) -> nn.Linear:
        with torch.device("meta"):  # no throw-away initialisation
            dense = nn.Linear(packed.in_features, packed.out_features, bias=False)
        dense.weight = nn.Parameter(packed.dense(self.dtype), requires_grad=False)
        return dense

    def weight_bytes(self) -> int:
        """Bytes the weights hold in memory (a tied matrix once; KV cache and RoPE table
        excluded)."""
        seen: set[int] = set()
        total = 0
        tensors: list[torch.Tensor] = [*self.parameters()]
        tensors += [m.blocks for m in self.packed_layers()]
        for tensor in tensors:
            if tensor.data_ptr() not in seen and not tensor.is_meta:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
        return total

    def enable_skinny_linear(self, op: SkinnyLinear) -> None:
        """Few-token steps use our few-row matmul kernel (backend/linear.py)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                attach_skinny(module, op)

    def allocate_kv_cache(
        self, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """[L, 2, num_blocks, block_size, Hkv, D], zeros. On CPU the zeros are an
        anonymous mapping's untouched pages: a page becomes resident when a block on it is
        first written, so the pool's size is a cap, not what the process holds (the block
        manager hands out the lowest free ids first). Small pages (no transparent huge
        pages, which numpy's allocator asks for): a 2 MB page per layer's first K/V write
        would hold 8 MB a layer for a one-token context."""
        cfg = self.config
        shape = (cfg.num_layers, 2, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        if device.type != "cpu":
            return torch.zeros(shape, dtype=dtype, device=device)
        pages = mmap.mmap(-1, math.prod(shape) * dtype.itemsize)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux
            pages.madvise(mmap.MADV_NOHUGEPAGE)
        return torch.frombuffer(pages, dtype=dtype).view(shape)  # keeps `pages` alive

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] -> float32 logits [N, vocab]."""
        return project(hidden, self.lm_head, max_rows=LM_HEAD_MAX_ROWS).float()
