"""Float weights -> packed blocks at load: `--quantization int8` (Q8_0) or `int4` (Q4_1).

A safetensors (or float GGUF) model quantized this way runs the same kernels as a GGUF
file that ships quantized. The blocks are ggml's own, computed by the `gguf` package's
reference quantizer, so a model quantized here matches llama.cpp's quantize tool.
Q4_1 (a scale and a minimum per 32 weights) rather than Q4_0: measurably closer to the
float model for the same kernel cost.
"""

from __future__ import annotations

import gguf
import gguf.quants
import torch

from backend.quantized.packed_linear import PackedLinear

_T = gguf.GGMLQuantizationType
# --quantization values: "auto" keeps what the file holds (packed where our kernel
# multiplies it), "none" expands everything to the model dtype.
QUANTIZATIONS = {"int8": _T.Q8_0, "int4": _T.Q4_1}


def pack_dense(weight: torch.Tensor, qtype: gguf.GGMLQuantizationType) -> PackedLinear:
    """weight [N, K] (K a multiple of 32) -> a PackedLinear of it in `qtype` blocks."""
    blocks = gguf.quants.quantize(weight.detach().float().contiguous().numpy(), qtype)
    return PackedLinear(torch.from_numpy(blocks), qtype, weight.shape[1])
