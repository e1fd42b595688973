"""backend.dequant against the numpy reference in gguf.quants."""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf.quants import dequantize as ref_dequantize
from gguf.quants import quantize as ref_quantize

from backend.loading.dequant import SUPPORTED_TYPES, UnsupportedQuantization, dequantize

T = gguf.GGMLQuantizationType

# Types gguf.quants can quantize, so test data can be produced from real floats.
QUANTIZABLE = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]
SHAPES = [(7, 64), (3, 256), (256,), (2, 3, 96)]

# K-quants: byte offsets of the f16 scale fields inside one 256-element super-block.
K_QUANT_F16_FIELDS = {
    T.Q2_K: (80, 82),  # scales[16] | qs[64] | d | dmin
    T.Q3_K: (108,),  # hmask[32] | qs[64] | scales[12] | d
    T.Q4_K: (0, 2),  # d | dmin | scales[12] | qs[128]
    T.Q5_K: (0, 2),  # d | dmin | scales[12] | qh[32] | qs[128]
    T.Q6_K: (208,),  # ql[128] | qh[64] | scales[16] | d
}


def _random_floats(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * rng.uniform(0.01, 2.0)).astype(np.float32)


def _random_k_blocks(qtype: T, rows: int, cols: int, seed: int) -> np.ndarray:
    """Valid random super-blocks, shaped as GGUFReader would give them: (rows, bytes_per_row)."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block_size
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for offset in K_QUANT_F16_FIELDS[qtype]:
        scale = rng.uniform(0.001, 0.1, size=n_blocks).astype(np.float16)
        blocks[:, offset : offset + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(rows, cols // block_size * type_size)


def _assert_matches(ours: torch.Tensor, reference: np.ndarray, shape: tuple[int, ...]) -> None:
    assert tuple(ours.shape) == shape
    assert ours.dtype == torch.float32
    expected = torch.from_numpy(np.array(reference, dtype=np.float32)).reshape(shape)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda t: t.name)
def test_matches_reference_for_quantizable_types(qtype: T, shape: tuple[int, ...]) -> None:
    data = ref_quantize(_random_floats(shape, seed=len(shape) * 1000 + shape[-1]), qtype)
    _assert_matches(dequantize(data, qtype, shape), ref_dequantize(data, qtype), shape)


@pytest.mark.parametrize("shape", [(3, 512), (1, 256), (2, 2, 256)], ids=str)
@pytest.mark.parametrize("qtype", list(K_QUANT_F16_FIELDS), ids=lambda t: t.name)
def test_matches_reference_for_k_quants(qtype: T, shape: tuple[int, ...]) -> None:
    rows, cols = math.prod(shape[:-1]), shape[-1]
    data = _random_k_blocks(qtype, rows, cols, seed=int(qtype) * 100 + rows)
    _assert_matches(dequantize(data, qtype, shape), ref_dequantize(data, qtype), shape)


def test_bf16_given_as_uint16() -> None:
    x = _random_floats((4, 64), seed=3)
    data = ref_quantize(x, T.BF16)  # uint8 bytes
    as_u16 = data.view(np.uint16)
    _assert_matches(dequantize(as_u16, T.BF16, (4, 64)), ref_dequantize(data, T.BF16), (4, 64))


def test_read_only_input_is_accepted_without_warning() -> None:
    data = ref_quantize(_random_floats((5, 64), seed=4), T.Q4_1)
    data.setflags(write=False)
    out = dequantize(data, T.Q4_1, (5, 64))  # filterwarnings=error catches torch's warning
    _assert_matches(out, ref_dequantize(data, T.Q4_1), (5, 64))


def test_result_does_not_alias_input() -> None:
    data = _random_floats((3, 8), seed=5)
    out = dequantize(data, T.F32, (3, 8))
    out.zero_()
    assert np.any(data != 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("qtype", [T.F32, T.BF16, T.Q8_0, T.Q4_1, T.Q6_K], ids=lambda t: t.name)
def test_dtype_is_float32_result_cast(qtype: T, dtype: torch.dtype) -> None:
    shape = (2, 256)
    if qtype in K_QUANT_F16_FIELDS:
        data = _random_k_blocks(qtype, 2, 256, seed=6)
    else:
        data = ref_quantize(_random_floats(shape, seed=6), qtype)
    full = dequantize(data, qtype, shape)
    out = dequantize(data, qtype, shape, dtype=dtype)
    assert out.dtype == dtype
    assert tuple(out.shape) == shape
    assert torch.equal(out, full.to(dtype))


@pytest.mark.parametrize("qtype", [T.IQ2_XS, T.Q8_1, T.TQ1_0], ids=lambda t: t.name)
def test_unsupported_type_names_it(qtype: T) -> None:
    with pytest.raises(UnsupportedQuantization, match=qtype.name) as info:
        dequantize(np.zeros((1, 256), dtype=np.uint8), qtype, (1, 256))
    assert isinstance(info.value, ValueError)
    assert "Q4_K" in str(info.value)  # lists what is supported
    assert qtype not in SUPPORTED_TYPES


def test_unknown_type_id_is_unsupported() -> None:
    with pytest.raises(UnsupportedQuantization, match="9999"):
        dequantize(np.zeros(4, dtype=np.uint8), 9999, (1,))  # type: ignore[arg-type]


def test_byte_count_mismatch_raises() -> None:
    data = ref_quantize(_random_floats((2, 64), seed=7), T.Q8_0)
    with pytest.raises(ValueError, match="bytes"):
        dequantize(data, T.Q8_0, (3, 64))
    with pytest.raises(ValueError, match="block size"):
        dequantize(data, T.Q8_0, (4, 48))


def test_real_file_tensors_match_reference(smollm2_gguf: Path) -> None:
    reader = gguf.GGUFReader(smollm2_gguf)
    tensors = {t.name: t for t in reader.tensors}
    wanted = [
        "token_embd.weight",  # Q8_0, 49152 x 576
        "blk.0.ffn_down.weight",  # Q4_1
        "blk.0.attn_q.weight",  # Q4_1
        "blk.29.ffn_up.weight",  # Q4_1
        "blk.0.attn_norm.weight",  # F32
        "output_norm.weight",  # F32
    ]
    seen = set()
    for name in wanted:
        tensor = tensors[name]
        seen.add(tensor.tensor_type)
        shape = tuple(int(d) for d in reversed(tensor.shape))
        ours = dequantize(tensor.data, tensor.tensor_type, shape)
        _assert_matches(ours, ref_dequantize(tensor.data, tensor.tensor_type), shape)
    assert seen == {T.Q8_0, T.Q4_1, T.F32}
