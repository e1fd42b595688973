"""The fused C++ decode-attention kernel against the pure-PyTorch reference path, on
shuffled block tables, GQA, lengths that end mid-block, and every supported dtype."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from backend.attention import AttentionMetadata, DecodeKernel, paged_attention
from backend.kernels import CpuKernels

BLOCK = 16


@pytest.fixture(scope="module")
def kernel(cpu_kernels: CpuKernels) -> DecodeKernel:
    return cpu_kernels.paged_decode


def _decode_case(
    ctx_lens: list[int], heads: int, kv_heads: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata]:
    """Random cache with each sequence's blocks scattered; the last token is this step's."""
    g = torch.Generator().manual_seed(seed)
    d = 64
    widths = [-(-n // BLOCK) for n in ctx_lens]
    num_blocks = sum(widths) + 5
    cache = torch.randn(2, num_blocks, BLOCK, kv_heads, d, generator=g).to(dtype)
    order = torch.randperm(num_blocks, generator=g).tolist()
    tables, slots = [], []
    for n, w in zip(ctx_lens, widths, strict=True):
        table, order = order[:w], order[w:]
        tables.append(table + [0] * (max(widths) - w))
        slots.append(table[(n - 1) // BLOCK] * BLOCK + (n - 1) % BLOCK)
    b = len(ctx_lens)
    q = torch.randn(b, heads, d, generator=g).to(dtype)
    k = torch.randn(b, kv_heads, d, generator=g).to(dtype)
    v = torch.randn(b, kv_heads, d, generator=g).to(dtype)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots),
        num_decodes=b,
        decode_block_tables=torch.tensor(tables),
        decode_ctx_lens=torch.tensor(ctx_lens),
        decode_max_ctx=max(ctx_lens),
    )
    return q, k, v, cache, meta


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)]
)
@pytest.mark.parametrize(("heads", "kv_heads"), [(9, 3), (4, 4)])
def test_kernel_matches_reference(
    kernel: DecodeKernel, dtype: torch.dtype, tol: float, heads: int, kv_heads: int
) -> None:
    ctx_lens = [1, 15, 16, 17, 100, 333, 48]
    q, k, v, cache, meta = _decode_case(ctx_lens, heads, kv_heads, dtype)
    ref_cache = cache.clone()
    ref = paged_attention(q, k, v, ref_cache[0], ref_cache[1], meta)
    out = paged_attention(q, k, v, cache[0], cache[1], _with(meta, kernel))
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
    assert torch.equal(cache, ref_cache)  # both paths wrote this step's K/V the same way


def test_kernel_attends_only_to_its_own_context(kernel: DecodeKernel) -> None:
    # Changing K/V beyond a sequence's length, or in other sequences' blocks, must not
    # change its output.
    q, k, v, cache, meta = _decode_case([20, 40], 9, 3, torch.float32, seed=1)
    first = paged_attention(q, k, v, cache[0], cache[1], _with(meta, kernel))
    table = meta.decode_block_tables
    assert table is not None
    cache[:, table[0, 1], 4:] = 1e3  # seq 0 ends at position 19 = block 1, offset 3
    cache[:, table[1, 0]] = -1e3  # seq 1's first block...
    second = paged_attention(q, k, v, cache[0], cache[1], _with(meta, kernel))
    torch.testing.assert_close(second[0], first[0])
    assert not torch.allclose(second[1], first[1])  # ...does change seq 1


def _with(meta: AttentionMetadata, kernel: DecodeKernel) -> AttentionMetadata:
    return dataclasses.replace(meta, decode_kernel=kernel)
