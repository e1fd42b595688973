"""Attention over the paged KV cache: the pure-PyTorch reference path.

The flat batch of T tokens holds single-token decodes first, then prefill chunks.
Decodes are batched into one SDPA call over their gathered context; each prefill chunk
gets its own call with a causal mask offset by the tokens already cached. A fused kernel
may take over the decodes (`AttentionMetadata.decode_kernel`: today the C++ CPU one in
backend/kernels/, built by backend/kernels/loader.py), and one may take over each prefill
chunk (`prefill_kernel`: the Triton one in backend/kernels/triton_attention.py, which
reads the chunk's K/V back from the cache); tests check both against this path.

KV cache per layer: k_cache, v_cache [num_blocks, block_size, Hkv, D]; token position p
of a sequence lives at slot block_table[p // block_size] * block_size + p % block_size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# (out [B,H,D], q [B,H,D], k_cache, v_cache, block_tables [B,M], ctx_lens [B], scale) -> None
DecodeKernel = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float],
    None,
]
# (q [q_len,H,D], k_cache, v_cache, block_ids [n] long, ctx_len, scale) -> [q_len, H, D]
PrefillKernel = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, float], torch.Tensor
]


@dataclass(frozen=True, slots=True)
class PrefillSegment:
    q_start: int  # first row of this chunk in the flat batch
    q_len: int  # tokens fed this step
    ctx_len: int  # tokens attended to: cached before this step + q_len
    block_ids: torch.Tensor  # [ceil(ctx_len / block_size)] long


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] long: where each token's K/V is written
    num_decodes: int = 0  # rows 0..num_decodes-1 are one-query rows (decodes, verify rows)
    decode_block_tables: torch.Tensor | None = None  # [num_decodes, max_blocks] long, 0-padded
    decode_ctx_lens: torch.Tensor | None = None  # [num_decodes] long
    decode_max_ctx: int = 0
    prefills: list[PrefillSegment] = field(default_factory=list)
    decode_kernel: DecodeKernel | None = None  # fused decode attention; None: the torch path
    prefill_kernel: PrefillKernel | None = None  # fused prefill attention; None: the torch path

    @classmethod
    def single_decode(
        cls,
        position: int,
        block_size: int,
        decode_kernel: DecodeKernel | None = None,
        device: torch.device | str = "cpu",
    ) -> AttentionMetadata:
        """One one-query row at `position` of a sequence laid out in blocks 0, 1, 2, ...
        (scoring text one decode step at a time: tests and bench/quantized.py)."""
        blocks = position // block_size + 1
        return cls(
            slot_mapping=torch.tensor([position], device=device),
            num_decodes=1,
            decode_block_tables=torch.arange(blocks, device=device)[None],  # [1, blocks]
            decode_ctx_lens=torch.tensor([position + 1], device=device),
            decode_max_ctx=position + 1,
            decode_kernel=decode_kernel,
        )

    @classmethod
    def single_prefill(
        cls, num_tokens: int, block_size: int, device: torch.device | str = "cpu"
    ) -> AttentionMetadata:
        """One fresh sequence laid out in blocks 0, 1, 2, ... (tests and warm-up)."""
        num_blocks = -(-num_tokens // block_size)
        return cls(
            slot_mapping=torch.arange(num_tokens, device=device),
            prefills=[
                PrefillSegment(0, num_tokens, num_tokens, torch.arange(num_blocks, device=device))
            ],
        )


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
) -> torch.Tensor:
    """q: [T, H, D]; k, v: [T, Hkv, D] (this step's) -> [T, H, D]. Writes k, v to the cache."""
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    gqa = q.shape[1] != num_kv_heads
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)
    out = torch.empty_like(q)

    b = meta.num_decodes
    if b and meta.decode_kernel is not None:
        assert meta.decode_block_tables is not None and meta.decode_ctx_lens is not None
        meta.decode_kernel(
            out[:b],
            q[:b].contiguous(),
            k_cache,
            v_cache,
            meta.decode_block_tables,
            meta.decode_ctx_lens,
            head_dim**-0.5,
        )
    elif b:
        assert meta.decode_block_tables is not None and meta.decode_ctx_lens is not None
        s = meta.decode_max_ctx
        kc = k_cache[meta.decode_block_tables].flatten(1, 2)[:, :s]  # [B, S, Hkv, D]
        vc = v_cache[meta.decode_block_tables].flatten(1, 2)[:, :s]
        valid = torch.arange(s, device=q.device) < meta.decode_ctx_lens[:, None]  # [B, S]
        o = F.scaled_dot_product_attention(
            q[:b].unsqueeze(2),  # [B, H, 1, D]
            kc.transpose(1, 2),  # [B, Hkv, S, D]
            vc.transpose(1, 2),
            attn_mask=valid[:, None, None, :],
            enable_gqa=gqa,
        )  # [B, H, 1, D]
        out[:b] = o.squeeze(2)

    for seg in meta.prefills:
        rows = slice(seg.q_start, seg.q_start + seg.q_len)
        if meta.prefill_kernel is not None:  # the chunk's K/V were written to the cache above
            scale = head_dim**-0.5
            out[rows] = meta.prefill_kernel(
                q[rows], k_cache, v_cache, seg.block_ids, seg.ctx_len, scale
            )
            continue
        past = seg.ctx_len - seg.q_len
        if past == 0:  # nothing cached before: attend to this step's own K/V
            ks, vs = k[rows], v[rows]
            mask = None
        else:  # [ctx, Hkv, D] gathered from the blocks; query i sits at position past + i
            ks = k_cache[seg.block_ids].flatten(0, 1)[: seg.ctx_len]
            vs = v_cache[seg.block_ids].flatten(0, 1)[: seg.ctx_len]
            q_pos = torch.arange(past, seg.ctx_len, device=q.device)[:, None]
            mask = torch.arange(seg.ctx_len, device=q.device)[None, :] <= q_pos  # [q, ctx]
        # 4-D inputs: with 3-D ones PyTorch's CPU SDPA falls back to its math path (~5x slower).
        o = F.scaled_dot_product_attention(
            q[rows].transpose(0, 1)[None],  # [1, H, q, D]
            ks.transpose(0, 1)[None],  # [1, Hkv, ctx, D]
            vs.transpose(0, 1)[None],
            attn_mask=mask,
            is_causal=mask is None and seg.q_len > 1,
            enable_gqa=gqa,
        )
        out[rows] = o[0].transpose(0, 1)
    return out
