"""Read a GGUF file: metadata as plain Python values, tensors as raw (quantized) bytes.

Our own parser of the GGUF v2/v3 layout, because the `gguf` package's reader builds an
object per array element and spends seconds on a tokenizer's 100k-entry arrays; this
one reads the same file in tens of milliseconds. The tensor bytes stay memory-mapped
and un-dequantized, so the weight loader decides when and to which dtype each one is
expanded. The `gguf` package still supplies the quantization type table.

Layout (little endian): "GGUF", u32 version, u64 tensor_count, u64 kv_count, then
kv_count (key, u32 type, value) entries, then tensor_count (name, u32 n_dims,
u64 dims[n_dims] innermost first, u32 ggml_type, u64 offset) infos, then the tensor
data, aligned to `general.alignment` (default 32).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


@dataclass(frozen=True, slots=True)
class GGUFTensor:
    name: str
    ggml_type: GGMLQuantizationType
    # Logical shape in PyTorch order (outermost first), e.g. [out_features, in_features].
    shape: tuple[int, ...]
    # Raw bytes exactly as stored (memory-mapped, read-only): uint8 [rows, bytes_per_row].
    data: np.ndarray


class GGUFError(ValueError):
    pass


# Value type id -> struct format of a scalar (8 STRING and 9 ARRAY are handled apart).
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_NUMPY = {"B": np.uint8, "b": np.int8, "H": np.uint16, "h": np.int16, "I": np.uint32,
          "i": np.int32, "f": np.float32, "?": np.bool_, "Q": np.uint64, "q": np.int64,
          "d": np.float64}  # fmt: skip
_STRING, _ARRAY = 8, 9


class _Cursor:
    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("Q")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.unpack("I"), self.unpack("Q")
            if item_type in _SCALARS:
                fmt = _SCALARS[item_type]
                nbytes = count * struct.calcsize(fmt)
                arr: np.ndarray = np.frombuffer(self.buf, _NUMPY[fmt], count, self.pos)
                self.pos += nbytes
                return arr.astype(arr.dtype.newbyteorder("=")).tolist()
            return [self.value(item_type) for _ in range(count)]
        if vtype not in _SCALARS:
            raise GGUFError(f"unknown GGUF value type {vtype} at byte {self.pos}")
        return self.unpack(_SCALARS[vtype])


class GGUFFile:
    """A parsed GGUF file. `metadata` maps keys such as `llama.block_count` to values."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        cur = _Cursor(memoryview(self._map))  # type: ignore[arg-type]  # memmap is a buffer
        if bytes(cur.buf[:4]) != b"GGUF":
            raise GGUFError(f"{self.path} is not a GGUF file (bad magic)")
        cur.pos = 4
        version = cur.unpack("I")
        if version not in (2, 3):
            raise GGUFError(f"{self.path}: GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = cur.unpack("Q"), cur.unpack("Q")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            self.metadata[key] = cur.value(cur.unpack("I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            dims = [cur.unpack("Q") for _ in range(cur.unpack("I"))]
            infos.append((name, dims, cur.unpack("I"), cur.unpack("Q")))
        align = int(self.metadata.get("general.alignment", 32))
        data_start = -(-cur.pos // align) * align
        self.tensors: dict[str, GGUFTensor] = {}
        for name, dims, type_id, offset in infos:
            self.tensors[name] = self._tensor(name, dims, type_id, data_start + offset)

    def _tensor(self, name: str, dims: list[int], type_id: int, start: int) -> GGUFTensor:
        try:
            qtype = GGMLQuantizationType(type_id)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError) as exc:
            raise GGUFError(f"tensor {name}: unknown GGML type id {type_id}") from exc
        inner, rows = dims[0], math.prod(dims[1:])
        if inner % block:
            raise GGUFError(f"tensor {name}: row of {inner} is not a multiple of block {block}")
        row_bytes = inner // block * type_size
        end = start + rows * row_bytes
        if end > self._map.size:
            raise GGUFError(f"{self.path} is truncated: tensor {name} ends past the file")
        data = self._map[start:end].reshape(rows, row_bytes)
        # GGUF lists dims innermost first (ggml's ne[]); PyTorch wants outermost first.
        return GGUFTensor(name, qtype, tuple(reversed(dims)), data)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "llama"))
