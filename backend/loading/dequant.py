"""Vectorized PyTorch dequantization of GGUF (ggml) tensor data.

:func:`dequantize` turns the raw bytes of one GGUF tensor (as handed out by
``gguf.GGUFReader(...).tensors[i].data``) into a dense torch tensor of the requested
logical shape and dtype.

Every supported format is decoded for the whole tensor at once: the bytes are viewed
as a ``(n_blocks, type_size)`` uint8 matrix, each field of the block is a column
slice of it, and quantized values are unpacked with broadcast shifts and masks on
uint8 tensors (one byte per element) before being scaled in float32. There are no
Python loops over blocks, and no intermediate wider than the float32 output is
materialized. The arithmetic mirrors ggml's (and ``gguf.quants``') float32 order of
operations, so results match the reference bit for bit.

All block layouts are ggml's, little endian; ``f16`` is an IEEE half, ``QK_K = 256``.
"""

from __future__ import annotations

import math

import gguf
import numpy as np
import torch

__all__ = ["SUPPORTED_TYPES", "UnsupportedQuantization", "dequantize"]

_T = gguf.GGMLQuantizationType
QK_K = 256


class UnsupportedQuantization(ValueError):
    """The GGUF tensor type has no dequantizer here."""


# Shift tables, built once: broadcasting `x.unsqueeze(-2) >> _SHIFTS_n` against a
# (..., k) uint8 tensor yields (..., len(shifts), k) with one field per row.
_NIBBLE_SHIFTS = torch.tensor([0, 4], dtype=torch.uint8).view(2, 1)
_CRUMB_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(4, 1)
_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8).view(8, 1)


def _split_bits(x: torch.Tensor, shifts: torch.Tensor, mask: int) -> torch.Tensor:
    """(..., k) uint8 -> (..., len(shifts), k) uint8: row i is ``(x >> shifts[i]) & mask``."""
    out = x.unsqueeze(-2) >> shifts
    return out.bitwise_and_(mask)


def _f16(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The f16 field at byte ``offset`` of every block, as a (n_blocks, 1) float32 column."""
    return blocks[:, offset : offset + 2].contiguous().view(torch.float16).to(torch.float32)


def _f32(q: torch.Tensor) -> torch.Tensor:
    """Small integers -> a new contiguous float32 tensor (exact), to be scaled in place.

    Scaling in place matters: on CPU, ``q * d`` with an integer ``q`` first materializes a
    float32 copy of ``q`` and then writes a second full-size float32 result.
    """
    return q.to(torch.float32, memory_format=torch.contiguous_format)


def _bits32(qh: torch.Tensor) -> torch.Tensor:
    """(n, 4) uint8 holding a little-endian uint32 -> (n, 32) uint8 of its bits 0..31."""
    # byte b, bit i is bit 8*b + i of the uint32
    return _split_bits(qh, _BIT_SHIFTS, 1).transpose(-1, -2).reshape(qh.shape[0], 32)


# --- legacy 32-element blocks --------------------------------------------------------------


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    # block (34 B): f16 d | int8 qs[32];  x = d * q
    d = _f16(blocks, 0)
    qs = blocks[:, 2:].view(torch.int8)
    return _f32(qs).mul_(d)


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    # block (18 B): f16 d | qs[16];  element j < 16 is qs[j] & 0xF, element 16 + j is qs[j] >> 4
    # x = d * (q - 8)
    d = _f16(blocks, 0).unsqueeze(-1)  # (n, 1, 1)
    q = _split_bits(blocks[:, 2:], _NIBBLE_SHIFTS, 0x0F).view(torch.int8).sub_(8)  # (n, 2, 16)
    return _f32(q).mul_(d).view(-1, 32)


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    # block (20 B): f16 d | f16 m | qs[16] (nibbles as Q4_0);  x = d * q + m
    d = _f16(blocks, 0).unsqueeze(-1)
    m = _f16(blocks, 2).unsqueeze(-1)
    q = _split_bits(blocks[:, 4:], _NIBBLE_SHIFTS, 0x0F)  # (n, 2, 16)
    return _f32(q).mul_(d).add_(m).view(-1, 32)


def _q5_low_high(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """5-bit values (n, 32) uint8: low nibbles from ``qs`` (as Q4_0), bit 4 from uint32 ``qh``."""
    q = _split_bits(qs, _NIBBLE_SHIFTS, 0x0F).view(-1, 32)
    return q.bitwise_or_(_bits32(qh).bitwise_left_shift_(4))


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    # block (22 B): f16 d | qh[4] (uint32, bit j = bit 4 of element j) | qs[16];  x = d * (q - 16)
    d = _f16(blocks, 0)
    q = _q5_low_high(blocks[:, 2:6], blocks[:, 6:]).view(torch.int8).sub_(16)
    return _f32(q).mul_(d)


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    # block (24 B): f16 d | f16 m | qh[4] | qs[16];  x = d * q + m
    d = _f16(blocks, 0)
    m = _f16(blocks, 2)
    q = _q5_low_high(blocks[:, 4:8], blocks[:, 8:])
    return _f32(q).mul_(d).add_(m)


# --- K-quants: 256-element super-blocks ----------------------------------------------------


def _q2_k(blocks: torch.Tensor) -> torch.Tensor:
    # super-block (84 B): scales[16] | qs[64] | f16 d | f16 dmin
    #   scales[i]: low nibble = scale, high nibble = min of 16-element sub-block i
    #   2-bit q: element 128*h + 32*s + j is (qs[32*h + j] >> 2*s) & 3   (h < 2, s < 4, j < 32)
    #   x = d * scale * q - dmin * min
    n = blocks.shape[0]
    scales = blocks[:, :16]
    d = _f16(blocks, 80)
    dmin = _f16(blocks, 82)
    dl = (d * (scales & 0x0F)).unsqueeze(-1)  # (n, 16, 1)
    ml = (dmin * (scales >> 4)).unsqueeze(-1)
    q = _split_bits(blocks[:, 16:80].reshape(n, 2, 32), _CRUMB_SHIFTS, 0x03)  # (n, 2, 4, 32)
    return _f32(q.view(n, 16, 16)).mul_(dl).sub_(ml).view(n, QK_K)


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:
    # super-block (110 B): hmask[32] | qs[64] | scales[12] | f16 d
    #   low 2 bits: as Q2_K's qs;  bit 2: element 32*b + j is set by (hmask[j] >> b) & 1,
    #   and q = low - 4 when that bit is CLEAR (q in -4..3)
    #   6-bit scales, 16 sub-blocks of 16: scale i = low4[i] | high2[i] << 4, minus 32, where
    #   low4[i] = scales[i % 8] nibble (i // 8) and high2[i] = (scales[8 + i % 4] >> 2*(i // 4)) & 3
    #   x = d * scale * q
    n = blocks.shape[0]
    raw_scales = blocks[:, 96:108]
    d = _f16(blocks, 108)
    low4 = _split_bits(raw_scales[:, :8], _NIBBLE_SHIFTS, 0x0F).view(n, 16)
    high2 = _split_bits(raw_scales[:, 8:], _CRUMB_SHIFTS, 0x03).view(n, 16)
    scales = low4.bitwise_or_(high2.bitwise_left_shift_(4)).view(torch.int8).sub_(32)
    dl = (d * scales).unsqueeze(-1)  # (n, 16, 1)

    q = _split_bits(blocks[:, 32:96].reshape(n, 2, 32), _CRUMB_SHIFTS, 0x03).view(n, 8, 32)
    hbit = _split_bits(blocks[:, :32], _BIT_SHIFTS, 0x01)  # (n, 8, 32)
    # q - 4 * (1 - hbit) == (q | 4 * hbit) - 4, all in int8
    q = q.bitwise_or_(hbit.bitwise_left_shift_(2)).view(torch.int8).sub_(4)
    return _f32(q.view(n, 16, 16)).mul_(dl).view(n, QK_K)


def _k_scale_min(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K 12-byte packed 6-bit (scale, min) pairs for 8 sub-blocks -> two (n, 8) uint8.

    bytes 0-3: scale[0..3] in bits 0-5, bits 6-7 are the high bits of scale[4..7]
    bytes 4-7: min[0..3]   in bits 0-5, bits 6-7 are the high bits of min[4..7]
    bytes 8-11: scale[4..7] low nibble | min[4..7] high nibble
    """
    a, b, c = raw[:, 0:4], raw[:, 4:8], raw[:, 8:12]
    sc = torch.cat((a & 0x3F, (c & 0x0F) | ((a >> 2) & 0x30)), dim=1)
    mn = torch.cat((b & 0x3F, (c >> 4) | ((b >> 2) & 0x30)), dim=1)
    return sc, mn


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    # super-block (144 B): f16 d | f16 dmin | scales[12] | qs[128]
    #   8 sub-blocks of 32; element 64*g + 32*h + j is (qs[32*g + j] >> 4*h) & 0xF
    #   x = d * scale * q - dmin * min
    n = blocks.shape[0]
    sc, mn = _k_scale_min(blocks[:, 4:16])
    dl = (_f16(blocks, 0) * sc).unsqueeze(-1)  # (n, 8, 1)
    ml = (_f16(blocks, 2) * mn).unsqueeze(-1)
    q = _split_bits(blocks[:, 16:].reshape(n, 4, 32), _NIBBLE_SHIFTS, 0x0F).view(n, 8, 32)
    return _f32(q).mul_(dl).sub_(ml).view(n, QK_K)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    # super-block (176 B): f16 d | f16 dmin | scales[12] | qh[32] | qs[128]
    #   low nibbles as Q4_K; bit 4 of element 32*b + j is (qh[j] >> b) & 1
    #   x = d * scale * q - dmin * min
    n = blocks.shape[0]
    sc, mn = _k_scale_min(blocks[:, 4:16])
    dl = (_f16(blocks, 0) * sc).unsqueeze(-1)  # (n, 8, 1)
    ml = (_f16(blocks, 2) * mn).unsqueeze(-1)
    q = _split_bits(blocks[:, 48:].reshape(n, 4, 32), _NIBBLE_SHIFTS, 0x0F).view(n, 8, 32)
    q.bitwise_or_(_split_bits(blocks[:, 16:48], _BIT_SHIFTS, 0x01).bitwise_left_shift_(4))
    return _f32(q).mul_(dl).sub_(ml).view(n, QK_K)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    # super-block (210 B): ql[128] | qh[64] | int8 scales[16] | f16 d
    #   halves h < 2 of 128 elements; within a half, element 64*k + j (k < 2, j < 64) has
    #   low 4 bits (ql[64*h + j] >> 4*k) & 0xF, and element 32*s + j (s < 4, j < 32) has
    #   high 2 bits (qh[32*h + j] >> 2*s) & 3;  q in -32..31 (minus 32)
    #   x = d * scale * q, 16 sub-blocks of 16
    n = blocks.shape[0]
    scales = blocks[:, 192:208].view(torch.int8)
    dl = (_f16(blocks, 208) * scales).unsqueeze(-1)  # (n, 16, 1)
    ql = _split_bits(blocks[:, :128].reshape(n, 2, 64), _NIBBLE_SHIFTS, 0x0F).view(n, 8, 32)
    qh = _split_bits(blocks[:, 128:192].reshape(n, 2, 32), _CRUMB_SHIFTS, 0x03).view(n, 8, 32)
    q = ql.bitwise_or_(qh.bitwise_left_shift_(4)).view(torch.int8).sub_(32)
    return _f32(q.view(n, 16, 16)).mul_(dl).view(n, QK_K)


_BLOCK_DECODERS = {
    _T.Q8_0: _q8_0,
    _T.Q4_0: _q4_0,
    _T.Q4_1: _q4_1,
    _T.Q5_0: _q5_0,
    _T.Q5_1: _q5_1,
    _T.Q2_K: _q2_k,
    _T.Q3_K: _q3_k,
    _T.Q4_K: _q4_k,
    _T.Q5_K: _q5_k,
    _T.Q6_K: _q6_k,
}

# Unquantized element types: torch dtype the little-endian bytes are reinterpreted as.
_PLAIN_TYPES = {
    _T.F32: torch.float32,
    _T.F16: torch.float16,
    _T.BF16: torch.bfloat16,
}

SUPPORTED_TYPES: tuple[gguf.GGMLQuantizationType, ...] = (*_PLAIN_TYPES, *_BLOCK_DECODERS)


def _unsupported(name: str) -> UnsupportedQuantization:
    supported = ", ".join(t.name for t in SUPPORTED_TYPES)
    return UnsupportedQuantization(
        f"GGUF tensor type {name} is not supported; supported: {supported}"
    )


def _raw_bytes(data: np.ndarray) -> tuple[torch.Tensor, bool]:
    """The bytes of ``data`` as a flat uint8 tensor, and whether they are a private copy.

    Zero-copy when ``data`` is a writable contiguous array. GGUFReader hands out read-only
    memory maps, which torch cannot wrap without a warning (and must never write into),
    so those bytes are copied; that copy is of the packed data, a fraction of the output.
    """
    arr = np.asarray(data)
    if arr.dtype.byteorder == ">":  # typed data from a big-endian view: make it native
        arr = arr.astype(arr.dtype.newbyteorder("="))
    copied = not arr.flags.c_contiguous or not arr.flags.writeable
    if copied:
        arr = np.array(arr, order="C", copy=True)
    flat = arr.reshape(-1).view(np.uint8)
    return torch.from_numpy(flat), copied


def dequantize(
    data: np.ndarray,
    ggml_type: gguf.GGMLQuantizationType,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Decode one GGUF tensor's raw data into a dense tensor.

    Args:
        data: the tensor's bytes as stored in the file, e.g. ``GGUFReader.tensors[i].data``
            (uint8 ``(rows, bytes_per_row)`` for quantized types, typed arrays for
            F32/F16/BF16); only the bytes matter, not the array's dtype or shape.
        ggml_type: the stored GGML type.
        shape: logical shape in PyTorch order (outermost first), i.e. the reverse of the
            GGUF ``ne`` order; the last dimension is the contiguous row.
        dtype: floating-point dtype of the result; decoding is done in float32, then cast.

    Returns:
        A new tensor of exactly ``shape`` and ``dtype`` that does not share memory with
        ``data``.

    Raises:
        UnsupportedQuantization: ``ggml_type`` is not one of :data:`SUPPORTED_TYPES`.
        ValueError: the byte count does not match ``shape``, or the row length is not a
            multiple of the type's block size.
    """
    try:
        qtype = _T(ggml_type)
    except ValueError:
        raise _unsupported(f"id {int(ggml_type)}") from None
    if qtype not in _PLAIN_TYPES and qtype not in _BLOCK_DECODERS:
        raise _unsupported(qtype.name)
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype, got {dtype}")

    shape = tuple(int(s) for s in shape)
    numel = math.prod(shape)
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    row = shape[-1] if shape else 1
    if row % block_size:
        raise ValueError(
            f"{qtype.name} tensor row length {row} is not a multiple of the block size "
            f"{block_size} (shape {shape})"
        )
    raw, private = _raw_bytes(data)
    expected = numel // block_size * type_size
    if raw.numel() != expected:
        raise ValueError(
            f"{qtype.name} tensor of shape {shape} needs {expected} bytes, got {raw.numel()}"
        )

    plain = _PLAIN_TYPES.get(qtype)
    if plain is not None:
        # Direct reinterpretation; widening F16/BF16 to float32 is exact.
        out = raw.view(plain).to(torch.float32).to(dtype)
        if not private and out.data_ptr() == raw.data_ptr():
            out = out.clone()  # never alias the caller's array
        return out.view(shape)

    blocks = raw.view(-1, type_size)  # (n_blocks, type_size) uint8
    out = _BLOCK_DECODERS[qtype](blocks)  # (n_blocks, block_size) float32
    return out.to(dtype).view(shape)
