"""Paged attention for CUDA in Triton: one-query decode rows and causal prefill chunks.

Both read K/V in place through the block table (no gathered copy of the context) and keep
a running max and sum per query row (online softmax), accumulating in float32 whatever the
cache dtype (float32, bfloat16, float16). Token position p of a sequence lives at
k_cache[table[p // block_size], p % block_size], as in backend/attention.py; keys come
BLOCK_N at a time, each one's slot looked up through the table, so tiles need not match
block_size. The matmuls are tl.dot in the cache dtype (float32 without tf32).

triton_decode_attention   attention.py's DecodeKernel: out, q [B, H, D]; k_cache, v_cache
                          [num_blocks, block_size, Hkv, D]; block_tables [B, max_blocks]
                          int64; ctx_lens [B] int64. One program per (sequence, KV head)
                          holds the H / Hkv query heads that share it (GQA).
triton_prefill_attention  attention.py's PrefillKernel: q [q_len, H, D], the queries at
                          positions ctx_len - q_len .. ctx_len - 1, attending causally to
                          the sequence's first ctx_len tokens, all already in the cache at
                          blocks block_ids [ceil(ctx_len / block_size)] int64 -> [q_len, H, D].
                          One program per (BLOCK_M queries, query head).

Triton is optional: without it this module still imports and the launchers raise
ImportError. With TRITON_INTERPRET=1 in the environment from before triton is imported
until the kernels have run, they run on CPU tensors under triton's interpreter: that is how
tests check them without a GPU. (Triton picks interpreter or compiler when `triton.jit`
wraps a function, its own library's at `import triton` and these at this module's import,
and reads the variable again at launch.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # the engine runs without triton; the launchers say why
    _missing: ImportError | None = exc
else:
    _missing = None

__all__ = ["triton_available", "triton_decode_attention", "triton_prefill_attention"]

LOG2E = 1.4426950408889634  # scores are scaled into log2 units so the kernels use exp2


def triton_available() -> bool:
    """Whether the kernels can run here: triton imports, and there is a CUDA device or
    triton's interpreter is on (TRITON_INTERPRET=1)."""
    if _missing is not None:
        return False
    return torch.cuda.is_available() or bool(triton.knobs.runtime.interpret)


def _jit(fn: Callable[..., None]) -> Any:
    """triton.jit where triton is installed; else the plain function, never launched."""
    return fn if _missing is not None else triton.jit(fn)


@_jit
def _paged_offsets(  # type: ignore[no-untyped-def]
    table_row, offs_n, n_valid, offs_d, kh, BLOCK_SIZE, s_blk, s_tok, s_head
):
    # offs_n [N] token positions -> [N, D] element offsets into the cache through the table
    blk = tl.load(table_row + offs_n // BLOCK_SIZE, mask=n_valid, other=0)
    slot = blk * s_blk + (offs_n % BLOCK_SIZE) * s_tok + kh * s_head
    return slot[:, None] + offs_d[None, :]


@_jit
def _kv_tile(  # type: ignore[no-untyped-def]
    k_cache, v_cache, table_row, start, ctx, offs_d, kh,
    HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    s_blk, s_tok, s_head,
):  # fmt: skip
    # Keys start .. start + BLOCK_N of KV head kh: (positions [N], in context [N], k, v [N, D])
    offs_n = start + tl.arange(0, BLOCK_N)
    n_valid = offs_n < ctx
    kv_ok = n_valid[:, None] & (offs_d < HEAD_DIM)[None, :]
    offs = _paged_offsets(table_row, offs_n, n_valid, offs_d, kh, BLOCK_SIZE, s_blk, s_tok, s_head)
    k = tl.load(k_cache + offs, mask=kv_ok, other=0.0)
    v = tl.load(v_cache + offs, mask=kv_ok, other=0.0)
    return offs_n, n_valid, k, v


@_jit
def _dot(a, b, UPCAST: tl.constexpr):  # type: ignore[no-untyped-def]
    if UPCAST:  # triton's interpreter multiplies bfloat16 bit patterns as integers
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision="ieee")  # ieee: float32 inputs skip tf32


@_jit
def _softmax_step(  # type: ignore[no-untyped-def]
    q, k, v, valid, m_i, l_i, acc, qk_scale, UPCAST: tl.constexpr
):
    # q [M, D], k, v [N, D], valid [M, N]; m_i, l_i [M], acc [M, D] float32
    qk = _dot(q, tl.trans(k), UPCAST) * qk_scale  # [M, N], log2 units
    qk = tl.where(valid, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))  # finite: every tile loop starts at key 0
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST)
    return m_new, l_i, acc


@_jit
def _decode_kernel(  # type: ignore[no-untyped-def]
    out, q, k_cache, v_cache, block_tables, ctx_lens, qk_scale,
    s_qb, s_qh, s_ob, s_oh, s_tb, s_blk, s_tok, s_head,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    kh = tl.program_id(1)
    ctx = tl.load(ctx_lens + b)
    table_row = block_tables + b * s_tb
    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, D_PAD)
    heads = kh * GROUP + offs_g
    row_ok = (offs_g < GROUP)[:, None] & (offs_d < HEAD_DIM)[None, :]
    qv = tl.load(q + b * s_qb + heads[:, None] * s_qh + offs_d[None, :], mask=row_ok, other=0.0)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, D_PAD], tl.float32)
    for start in range(0, ctx, BLOCK_N):
        _, n_valid, k, v = _kv_tile(
            k_cache, v_cache, table_row, start, ctx, offs_d, kh,
            HEAD_DIM, BLOCK_SIZE, BLOCK_N, s_blk, s_tok, s_head,
        )  # fmt: skip
        valid = n_valid[None, :]  # [1, N]: every query head sees the whole context
        m_i, l_i, acc = _softmax_step(qv, k, v, valid, m_i, l_i, acc, qk_scale, UPCAST)

    o = acc / l_i[:, None]
    tl.store(
        out + b * s_ob + heads[:, None] * s_oh + offs_d[None, :],
        o.to(out.dtype.element_ty),
        mask=row_ok,
    )


@_jit
def _prefill_kernel(  # type: ignore[no-untyped-def]
    out, q, k_cache, v_cache, block_ids, q_len, ctx_len, qk_scale,
    s_qt, s_qh, s_ot, s_oh, s_blk, s_tok, s_head,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    kh = h // GROUP
    past = ctx_len - q_len
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows; query i sits at past + i
    offs_d = tl.arange(0, D_PAD)
    q_pos = past + offs_m
    row_ok = (offs_m < q_len)[:, None] & (offs_d < HEAD_DIM)[None, :]
    qv = tl.load(q + offs_m[:, None] * s_qt + h * s_qh + offs_d[None, :], mask=row_ok, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    end = tl.minimum(ctx_len, past + (pid_m + 1) * BLOCK_M)  # causal: no key past the last row
    for start in range(0, end, BLOCK_N):
        offs_n, n_valid, k, v = _kv_tile(
            k_cache, v_cache, block_ids, start, ctx_len, offs_d, kh,
            HEAD_DIM, BLOCK_SIZE, BLOCK_N, s_blk, s_tok, s_head,
        )  # fmt: skip
        valid = (offs_n[None, :] <= q_pos[:, None]) & n_valid[None, :]  # [M, N]
        m_i, l_i, acc = _softmax_step(qv, k, v, valid, m_i, l_i, acc, qk_scale, UPCAST)

    o = acc / l_i[:, None]
    tl.store(
        out + offs_m[:, None] * s_ot + h * s_oh + offs_d[None, :],
        o.to(out.dtype.element_ty),
        mask=row_ok,
    )


def triton_decode_attention(
    out: torch.Tensor,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    ctx_lens: torch.Tensor,
    scale: float,
    *,
    block_n: int = 64,
) -> None:
    """Writes out [B, H, D]: each query row attends to its first ctx_lens[b] tokens."""
    _check_inputs(q, k_cache, v_cache)
    if out.shape != q.shape or out.stride(2) != 1:
        raise ValueError("out must be [B, H, D] like q, head_dim contiguous")
    batch, heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    group = heads // kv_heads
    tables = block_tables.contiguous()
    _decode_kernel[(batch, kv_heads)](
        out, q, k_cache, v_cache, tables, ctx_lens.contiguous(), scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), tables.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        GROUP=group, GROUP_PAD=_pad(group), HEAD_DIM=head_dim, D_PAD=_pad(head_dim),
        BLOCK_SIZE=block_size, BLOCK_N=block_n, UPCAST=q.device.type == "cpu",
    )  # fmt: skip


def triton_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_ids: torch.Tensor,
    ctx_len: int,
    scale: float,
    *,
    block_m: int = 64,
    block_n: int = 64,
) -> torch.Tensor:
    """q [q_len, H, D] at positions ctx_len - q_len .. ctx_len - 1 -> [q_len, H, D]."""
    _check_inputs(q, k_cache, v_cache)
    q_len, heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    _prefill_kernel[(triton.cdiv(q_len, block_m), heads)](
        out, q, k_cache, v_cache, block_ids.contiguous(), q_len, ctx_len, scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        GROUP=heads // kv_heads, HEAD_DIM=head_dim, D_PAD=_pad(head_dim),
        BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_N=block_n,
        UPCAST=q.device.type == "cpu",
    )  # fmt: skip
    return out


def _check_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if _missing is not None:
        raise ImportError("the Triton attention kernels need triton (pip install triton)")
    if k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
        raise ValueError("k_cache and v_cache must have the same shape and layout")
    if q.shape[2] != k_cache.shape[3] or q.shape[1] % k_cache.shape[2]:
        raise ValueError("q must be [.., H, D] with the cache's D and H a multiple of Hkv")
    if q.stride(2) != 1 or k_cache.stride(3) != 1:
        raise ValueError("head_dim must be the innermost, contiguous dimension")


def _pad(n: int) -> int:
    """A tile side for n: a power of two, at least 16 (tl.dot's smallest side)."""
    return max(16, 1 << math.ceil(math.log2(n)))
