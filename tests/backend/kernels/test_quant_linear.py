"""The packed-block kernels (kernels/quant_linear.cpp): the expansion equals the reference
dequantizer bit for bit; the few-row matmul equals the int8-activation arithmetic it
implements (x rounded to int8 per 32-value block, as llama.cpp does) and stays within
that rounding of the float32 product; a row's result does not depend on its neighbours."""

from __future__ import annotations

import gguf
import gguf.quants
import pytest
import torch

from backend.kernels import CpuKernels
from backend.loading.dequant import dequantize
from backend.quantized import PackedKernels

TYPES = [
    gguf.GGMLQuantizationType.Q8_0,
    gguf.GGMLQuantizationType.Q4_0,
    gguf.GGMLQuantizationType.Q4_1,
]


@pytest.fixture(scope="module")
def kernels(cpu_kernels: CpuKernels) -> PackedKernels:
    return cpu_kernels.packed


def packed(
    qtype: gguf.GGMLQuantizationType, n: int, k: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(blocks uint8 [n, row_bytes], their float32 expansion by the reference dequantizer)."""
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    blocks = torch.from_numpy(gguf.quants.quantize(w.numpy(), qtype))
    return blocks, dequantize(blocks.numpy(), qtype, (n, k), torch.float32)


def int8_blocks(x: torch.Tensor) -> torch.Tensor:
    """x rounded as the kernel rounds it: per 32 values, to multiples of max|x| / 127."""
    blocks = x.view(x.shape[0], -1, 32)
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    return (torch.round(blocks / scale) * scale).view_as(x)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_expansion_equals_the_reference_dequantizer(
    kernels: PackedKernels, qtype: gguf.GGMLQuantizationType
) -> None:
    blocks, reference = packed(qtype, 67, 96, seed=1)
    out = torch.full((67, 96), float("nan"))
    kernels.dequantize(out, blocks, int(qtype))
    assert torch.equal(out, reference)


def multiply(
    kernels: PackedKernels, qtype: gguf.GGMLQuantizationType, m: int, exact: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x [m, 576], the expanded weight [203, 576], the kernel's x @ W^T [m, 203])."""
    blocks, w = packed(qtype, 203, 576, seed=m)
    x = torch.randn(m, 576, generator=torch.Generator().manual_seed((200 if exact else 100) + m))
    out = torch.full((m, 203), float("nan"))
    kernels.quant_linear(out, x, blocks, int(qtype), exact)
    return x, w, out


# N not a multiple of the 4-row weight tile; M odd and even (2-row x tiles), up to 16.
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("m", [1, 2, 5, 16])
def test_matmul_is_the_int8_activation_product(
    kernels: PackedKernels, qtype: gguf.GGMLQuantizationType, m: int
) -> None:
    x, w, out = multiply(kernels, qtype, m, exact=False)
    expected = (int8_blocks(x).double() @ w.double().T).float()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)
    exact = x @ w.T
    assert 0 < (out - exact).norm() / exact.norm() < 0.01  # x's rounding, and only that


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("m", [1, 3, 16])
def test_exact_matmul_is_the_float_product(
    kernels: PackedKernels, qtype: gguf.GGMLQuantizationType, m: int
) -> None:
    """exact=True (the LM head): float32 x times the expanded blocks, no rounding of x."""
    x, w, out = multiply(kernels, qtype, m, exact=True)
    expected = (x.double() @ w.double().T).float()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("exact", [False, True])
def test_a_rows_result_does_not_depend_on_its_neighbours(
    kernels: PackedKernels, exact: bool
) -> None:
    """As skinny_linear: a speculative verify step (1 + k rows) must reproduce plain
    decoding (1 row) bit for bit."""
    qtype = gguf.GGMLQuantizationType.Q4_1
    blocks, _ = packed(qtype, 64, 128, seed=7)
    x = torch.randn(9, 128, generator=torch.Generator().manual_seed(8))
    together = torch.empty(9, 64)
    kernels.quant_linear(together, x, blocks, int(qtype), exact)
    for i in range(9):
        alone = torch.empty(1, 64)
        kernels.quant_linear(alone, x[i : i + 1].clone(), blocks, int(qtype), exact)
        assert torch.equal(alone[0], together[i])


def test_zero_rows_of_x_give_zero(kernels: PackedKernels) -> None:
    qtype = gguf.GGMLQuantizationType.Q8_0
    blocks, _ = packed(qtype, 8, 64, seed=3)
    out = torch.full((2, 8), float("nan"))
    kernels.quant_linear(out, torch.zeros(2, 64), blocks, int(qtype), False)
    assert torch.equal(out, torch.zeros(2, 8))


def test_bad_shapes_and_types_are_refused(kernels: PackedKernels) -> None:
    q41 = int(gguf.GGMLQuantizationType.Q4_1)
    blocks, _ = packed(gguf.GGMLQuantizationType.Q4_1, 8, 64, seed=4)
    with pytest.raises(RuntimeError, match="do not hold"):
        kernels.quant_linear(torch.empty(1, 8), torch.randn(1, 96), blocks, q41, False)
    with pytest.raises(RuntimeError, match="unsupported ggml type"):
        kernels.quant_linear(
            torch.empty(1, 8),
            torch.randn(1, 64),
            blocks,
            int(gguf.GGMLQuantizationType.Q5_0),
            False,
        )
    with pytest.raises(RuntimeError, match="out must be"):
        kernels.quant_linear(torch.empty(2, 8), torch.randn(1, 64), blocks, q41, False)
