"""The Triton paged-attention kernels against attention.py's PyTorch path (on CPU under
triton's interpreter; on the GPU where there is one): shuffled block tables, GQA (SmolLM2's
9 query heads on 3 KV heads) and plain multi-head, contexts that end mid-block, prefill
chunks with and without cached context, float32, bfloat16 and float16 caches. Sizes stay
small: the interpreter runs each program in Python. The half-precision tolerances allow for
the kernels rounding the softmax weights to the cache dtype before they meet V (as flash
attention does); float32 has to agree to 1e-5."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import sys
from collections.abc import Iterator

import pytest
import torch

from backend.attention import (
    AttentionMetadata,
    DecodeKernel,
    PrefillKernel,
    PrefillSegment,
    paged_attention,
)

# Triton picks interpreter or compiler when `triton.jit` wraps a function: its own library
# (tl.zeros, tl.sum, ...) when triton is imported, our kernels when their module is; and it
# reads TRITON_INTERPRET again at launch. So without CUDA both are imported here, at
# collection, with TRITON_INTERPRET=1, the variable is put back at once, and the
# `interpreter` fixture sets it again while these tests run. With CUDA the kernels are
# compiled and run on the GPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
with pytest.MonkeyPatch.context() as mp:
    if DEVICE == "cpu":
        mp.setenv("TRITON_INTERPRET", "1")
    triton = pytest.importorskip("triton")
    if DEVICE == "cpu" and not triton.knobs.runtime.interpret:  # an older triton
        pytest.skip("this triton has no interpreter knob", allow_module_level=True)
    from triton.runtime.interpreter import InterpretedFunction

    if DEVICE == "cpu" and not isinstance(triton.language.zeros, InterpretedFunction):
        pytest.skip(
            "triton was imported before this module could turn its interpreter on: run "
            "this file on its own, or the session with TRITON_INTERPRET=1",
            allow_module_level=True,
        )
    name = "backend.kernels.triton_attention"
    ta = (
        importlib.reload(sys.modules[name])
        if name in sys.modules
        else importlib.import_module(name)
    )

BLOCK = 16
HEAD_DIM = 64
TOLERANCES = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)]
HEADS = [(9, 3), (4, 4)]


@pytest.fixture(scope="module", autouse=True)
def interpreter() -> Iterator[None]:
    """TRITON_INTERPRET=1 while this module's tests launch kernels (without CUDA)."""
    with pytest.MonkeyPatch.context() as mp:
        if DEVICE == "cpu":
            mp.setenv("TRITON_INTERPRET", "1")
        yield


@dataclasses.dataclass
class Case:
    q: torch.Tensor  # [T, H, D]: decode rows, then the prefill chunks' rows
    k: torch.Tensor  # [T, Hkv, D]: this step's K/V
    v: torch.Tensor
    cache: torch.Tensor  # [2, num_blocks, BLOCK, Hkv, D]
    meta: AttentionMetadata  # no kernels: the reference path
    owned: torch.Tensor  # the slots inside some sequence's context


def _case(
    decode_ctx: list[int],
    chunks: list[tuple[int, int]],  # (q_len, tokens cached before this step)
    heads: int,
    kv_heads: int,
    dtype: torch.dtype,
    seed: int = 0,
) -> Case:
    """A random cache, each sequence's blocks scattered over it among spare ones."""
    g = torch.Generator().manual_seed(seed)
    lens = decode_ctx + [past + n for n, past in chunks]
    widths = [-(-n // BLOCK) for n in lens]
    num_blocks = sum(widths) + 3
    order = torch.randperm(num_blocks, generator=g).tolist()
    tables = [order[sum(widths[:i]) : sum(widths[: i + 1])] for i in range(len(lens))]
    slot = [
        [t[p // BLOCK] * BLOCK + p % BLOCK for p in range(n)]
        for t, n in zip(tables, lens, strict=True)
    ]
    b = len(decode_ctx)
    slots = [s[-1] for s in slot[:b]]  # a decode writes its last token
    prefills = []
    for (q_len, past), s, table in zip(chunks, slot[b:], tables[b:], strict=True):
        ids = torch.tensor(table, device=DEVICE)
        prefills.append(PrefillSegment(len(slots), q_len, past + q_len, ids))
        slots += s[past:]  # a chunk writes its q_len tokens
    width = max(widths[:b], default=1)
    padded = [t + [0] * (width - len(t)) for t in tables[:b]]
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, device=DEVICE),
        num_decodes=b,
        decode_block_tables=torch.tensor(padded, device=DEVICE) if b else None,
        decode_ctx_lens=torch.tensor(decode_ctx, device=DEVICE) if b else None,
        decode_max_ctx=max(decode_ctx, default=0),
        prefills=prefills,
    )

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(DEVICE, dtype)

    cache = randn(2, num_blocks, BLOCK, kv_heads, HEAD_DIM)
    t = len(slots)
    q, k, v = randn(t, heads, HEAD_DIM), randn(t, kv_heads, HEAD_DIM), randn(t, kv_heads, HEAD_DIM)
    owned = torch.tensor([p for s in slot for p in s], device=DEVICE)
    return Case(q, k, v, cache, meta, owned)


def _check(
    case: Case,
    tol: float,
    decode: DecodeKernel | None = None,
    prefill: PrefillKernel | None = None,
) -> None:
    """The kernels given take the reference's place and give its output; the cache both
    paths leave behind is the same."""
    ref_cache = case.cache.clone()
    ref = paged_attention(case.q, case.k, case.v, ref_cache[0], ref_cache[1], case.meta)
    meta = dataclasses.replace(case.meta, decode_kernel=decode, prefill_kernel=prefill)
    out = paged_attention(case.q, case.k, case.v, case.cache[0], case.cache[1], meta)
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
    assert torch.equal(case.cache, ref_cache)


@pytest.mark.parametrize(("dtype", "tol"), TOLERANCES)
@pytest.mark.parametrize(("heads", "kv_heads"), HEADS)
def test_decode_matches_reference(
    dtype: torch.dtype, tol: float, heads: int, kv_heads: int
) -> None:
    # 1 token; one block less one; exactly one block; one past it; several 64-key tiles
    case = _case([1, 15, 16, 17, 100, 130], [], heads, kv_heads, dtype)
    _check(case, tol, decode=ta.triton_decode_attention)


@pytest.mark.parametrize(("heads", "kv_heads"), HEADS)
@pytest.mark.parametrize("past", [0, 5, 40])
@pytest.mark.parametrize("q_len", [1, 7, 33])
def test_prefill_matches_reference(q_len: int, past: int, heads: int, kv_heads: int) -> None:
    case = _case([], [(q_len, past)], heads, kv_heads, torch.float32)
    _check(case, 1e-5, prefill=ta.triton_prefill_attention)


@pytest.mark.parametrize(("dtype", "tol"), TOLERANCES[1:])
@pytest.mark.parametrize(("q_len", "past"), [(33, 0), (7, 40)])
def test_prefill_half_precision(dtype: torch.dtype, tol: float, q_len: int, past: int) -> None:
    case = _case([], [(q_len, past)], 9, 3, dtype)
    _check(case, tol, prefill=ta.triton_prefill_attention)


def test_prefill_small_tiles() -> None:
    """16 x 16 tiles: several query tiles, each stopping at its own causal bound."""
    case = _case([], [(33, 40), (33, 0)], 9, 3, torch.float32)
    small = functools.partial(ta.triton_prefill_attention, block_m=16, block_n=16)
    _check(case, 1e-5, prefill=small)


@pytest.mark.parametrize(("dtype", "tol"), TOLERANCES[:2])
def test_mixed_batch_matches_reference(dtype: torch.dtype, tol: float) -> None:
    case = _case([1, 17, 40], [(7, 5), (33, 0), (1, 40)], 9, 3, dtype, seed=1)
    _check(case, tol, ta.triton_decode_attention, ta.triton_prefill_attention)


def test_kernels_read_only_their_context() -> None:
    """NaN in every slot outside the sequences' contexts (spare blocks, the padding of the
    block tables, the tail of each last block) never reaches an output."""
    case = _case([3, 20], [(7, 5), (9, 0)], 9, 3, torch.float32, seed=2)
    clean = case.cache.clone()
    meta = dataclasses.replace(
        case.meta,
        decode_kernel=ta.triton_decode_attention,
        prefill_kernel=ta.triton_prefill_attention,
    )
    want = paged_attention(case.q, case.k, case.v, clean[0], clean[1], meta)
    flat = case.cache.view(2, -1, *case.cache.shape[3:])  # [2, slots, Hkv, D]
    poisoned = torch.full_like(flat, math.nan)
    poisoned[:, case.owned] = flat[:, case.owned]
    flat.copy_(poisoned)
    got = paged_attention(case.q, case.k, case.v, case.cache[0], case.cache[1], meta)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
