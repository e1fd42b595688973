"""The few-row matmul kernel (kernels/skinny_linear.cpp) and the dispatch in linear.py:
results match PyTorch's, a row's result does not depend on the rows beside it, and
`project` uses the kernel only where it should."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backend.kernels import CpuKernels
from backend.linear import SKINNY_MAX_ROWS, SkinnyLinear, attach_skinny, project


@pytest.fixture(scope="module")
def kernel(cpu_kernels: CpuKernels) -> SkinnyLinear:
    return cpu_kernels.skinny_linear


# N not a multiple of the 4-row weight tile, K not a multiple of the 8-float vector.
@pytest.mark.parametrize(("n", "k"), [(960, 576), (67, 37), (5, 8), (1, 3)])
@pytest.mark.parametrize("m", [1, 2, 3, 9, 16])
def test_matches_float64_reference(kernel: SkinnyLinear, m: int, n: int, k: int) -> None:
    g = torch.Generator().manual_seed(m * 1000 + n)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    out = torch.full((m, n), float("nan"))
    kernel(out, x, w)
    expected = (x.double() @ w.double().T).float()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * k**0.5)


def test_a_rows_result_does_not_depend_on_its_neighbours(kernel: SkinnyLinear) -> None:
    """What makes a speculative verify step (1 + k rows) reproduce plain decoding (1 row)
    bit for bit."""
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(9, 576, generator=g), torch.randn(1000, 576, generator=g)
    together = torch.empty(9, 1000)
    kernel(together, x, w)
    for i in (0, 4, 8):
        alone = torch.empty(1, 1000)
        kernel(alone, x[i : i + 1].contiguous(), w)
        assert torch.equal(alone[0], together[i])


def test_bad_inputs_raise(kernel: SkinnyLinear) -> None:
    with pytest.raises(RuntimeError, match="disagree on K"):
        kernel(torch.empty(2, 4), torch.randn(2, 5), torch.randn(4, 6))
    with pytest.raises(RuntimeError, match="float32"):
        kernel(torch.empty(2, 4), torch.randn(2, 5).double(), torch.randn(4, 5).double())


def test_project_uses_the_kernel_for_few_rows_only(kernel: SkinnyLinear) -> None:
    calls: list[int] = []

    def counting(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
        calls.append(x.shape[0])
        kernel(out, x, w)

    lin = nn.Linear(64, 32, bias=False)
    assert attach_skinny(lin, counting)
    with torch.no_grad():
        for rows in (1, SKINNY_MAX_ROWS, SKINNY_MAX_ROWS + 1):
            x = torch.randn(rows, 64)
            torch.testing.assert_close(project(x, lin), F.linear(x, lin.weight))
        assert calls == [1, SKINNY_MAX_ROWS]
        project(torch.randn(40, 64), lin, max_rows=64)
        assert calls[-1] == 40


def test_unsuitable_weights_keep_pytorchs_path(kernel: SkinnyLinear) -> None:
    assert not attach_skinny(nn.Linear(8, 4, bias=False).to(torch.bfloat16), kernel)
    transposed = nn.Linear(8, 4, bias=False)
    transposed.weight = nn.Parameter(torch.randn(8, 4).T)  # a non-contiguous view
    assert not attach_skinny(transposed, kernel)
