"""Load a Llama-family model from a GGUF file or a Hugging Face safetensors folder.

Both paths end in the same state dict (HF layout, fused QKV and gate/up), so one model
class serves both. The model is built on the meta device and the loaded tensors are
assigned in place, so no memory is spent on throw-away random initialisation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import gguf
import numpy as np
import torch

from backend.loading.dequant import dequantize
from backend.loading.gguf_file import GGUFFile
from backend.loading.model_config import ModelConfig
from backend.model import LlamaModel
from backend.quantized import PACKED_TYPES, QUANTIZATIONS, PackedLinear, pack_dense
from backend.tokenizer import Tokenizer

# "auto": a GGUF's Q8_0 / Q4_0 / Q4_1 weights stay packed (CPU, float32 models);
# "none": everything expanded to the model dtype; "int8" / "int4": every projection
# quantized at load to Q8_0 / Q4_1 (backend/quantized/).
QUANTIZATION_CHOICES = ("auto", "none", *QUANTIZATIONS)


@dataclass(slots=True)
class LoadedModel:
    model: LlamaModel
    tokenizer: Tokenizer
    config: ModelConfig
    name: str


@dataclass(frozen=True, slots=True)
class RawBlocks:
    """A GGUF weight as its packed rows, not yet expanded or copied: uint8 [out,
    row_bytes] numpy arrays over the memory-mapped file, stacked along out (a fused QKV
    or gate/up). `packed()` copies them once, into the layer's own tensor: no temporary
    copies, whose freed memory the allocator would keep (~80 MB for SmolLM2)."""

    parts: tuple[np.ndarray, ...]
    qtype: gguf.GGMLQuantizationType
    in_features: int

    @property
    def shape(self) -> tuple[int, int]:
        return (sum(p.shape[0] for p in self.parts), self.in_features)

    def packed(self) -> torch.Tensor:
        out = np.empty((self.shape[0], self.parts[0].shape[1]), dtype=np.uint8)
        row = 0
        for part in self.parts:
            out[row : row + part.shape[0]] = part
            row += part.shape[0]
        return torch.from_numpy(out)

    def expand(self) -> torch.Tensor:
        return dequantize(self.packed().numpy(), self.qtype, self.shape, torch.float32)


# A weight as the loader passes it along: expanded, or (GGUF, kept packed) as blocks.
Weight = torch.Tensor | RawBlocks


def load_model(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    quantization: str = "auto",
) -> LoadedModel:
    path = Path(path).expanduser()
    device = torch.device(device)
    if quantization not in QUANTIZATION_CHOICES:
        raise ValueError(
            f"quantization must be one of {QUANTIZATION_CHOICES}, got {quantization!r}"
        )
    packs = device.type == "cpu" and dtype == torch.float32
    if quantization in QUANTIZATIONS and not packs:
        raise ValueError(
            f"quantization {quantization} runs on CPU with float32 activations "
            f"(got {device.type}, {dtype}); use quantization none or auto"
        )
    keep = quantization if packs else "none"
    if path.is_dir():
        return _load_safetensors_folder(path, dtype, device, keep)
    if path.suffix == ".gguf" or _has_gguf_magic(path):
        return _load_gguf(path, dtype, device, keep)
    raise ValueError(f"{path}: expected a .gguf file or a folder with config.json + *.safetensors")


def _has_gguf_magic(path: Path) -> bool:
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def _unpermute_rope(w: Weight, n_heads: int) -> Weight:
    # llama.cpp's converter reorders Q/K rows so each head's rotary pairs are adjacent
    # (i, i+1); undo it to get HF's rotate-half order (i, i + D/2). Whole rows move, so
    # packed rows move the same way.
    if isinstance(w, RawBlocks):  # the file's rows, moved as a numpy view
        (rows,) = w.parts
        return replace(w, parts=(_unpermute_rows(rows, n_heads),))
    return _unpermute_rows(w, n_heads)


Rows = TypeVar("Rows", torch.Tensor, np.ndarray)


def _unpermute_rows(w: Rows, n_heads: int) -> Rows:
    out_features = w.shape[0]
    return (
        w.reshape(n_heads, out_features // n_heads // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _cat_rows(parts: list[Weight]) -> Weight:
    """Weights stacked along out_features (fused QKV, gate/up): packed when every part is
    packed alike, else expanded."""
    first = parts[0]
    if isinstance(first, RawBlocks) and all(
        isinstance(p, RawBlocks) and p.qtype == first.qtype for p in parts
    ):
        return replace(
            first, parts=tuple(q for p in parts if isinstance(p, RawBlocks) for q in p.parts)
        )
    return torch.cat([p.expand() if isinstance(p, RawBlocks) else p for p in parts])


def _load_gguf(path: Path, dtype: torch.dtype, device: torch.device, keep: str) -> LoadedModel:
    gf = GGUFFile(path)
    tensors = gf.tensors

    def expanded(name: str) -> torch.Tensor:
        t = tensors[name]
        return dequantize(t.data, t.ggml_type, t.shape, torch.float32)

    def get(name: str) -> Weight:
        t = tensors[name]
        if keep == "auto" and t.ggml_type in PACKED_TYPES and len(t.shape) == 2:
            return RawBlocks((t.data.reshape(t.shape[0], -1),), t.ggml_type, t.shape[1])
        return expanded(name)

    tied = "output.weight" not in tensors
    vocab = tensors["token_embd.weight"].shape[0]
    cfg = ModelConfig.from_gguf_metadata(gf.metadata, vocab_size=vocab, tied=tied)
    freq_factors = expanded("rope_freqs.weight") if "rope_freqs.weight" in tensors else None

    def get_rope(name: str, heads: int) -> Weight:
        return _unpermute_rope(get(name), heads)

    state = _llama_state(cfg, GGUF_NAMES, get, get_rope)
    model = _build(cfg, state, dtype, device, freq_factors, keep)
    name = str(gf.metadata.get("general.name") or path.stem)
    return LoadedModel(model, Tokenizer.from_gguf_metadata(gf.metadata), cfg, name)


def _load_safetensors_folder(
    folder: Path, dtype: torch.dtype, device: torch.device, keep: str
) -> LoadedModel:
    from safetensors import safe_open

    config_path = folder / "config.json"
    if not config_path.exists():
        raise ValueError(f"{folder}: no config.json")
    cfg = ModelConfig.from_hf_config(json.loads(config_path.read_text()))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder}: no *.safetensors files")
    # Tensor name -> the open file holding it; tensors are read lazily, one at a time.
    owner: dict[str, Any] = {}
    for f in files:
        handle = safe_open(str(f), framework="pt")
        owner.update(dict.fromkeys(handle.keys(), handle))

    def get(name: str) -> torch.Tensor:
        if name not in owner:
            raise ValueError(f"{folder}: tensor {name} is missing")
        tensor: torch.Tensor = owner[name].get_tensor(name)
        return tensor.float()

    state = _llama_state(cfg, HF_NAMES, get, lambda name, _heads: get(name))
    model = _build(cfg, state, dtype, device, None, keep)
    return LoadedModel(model, Tokenizer.from_hf_folder(folder), cfg, folder.name)


# Where each tensor of our layout comes from, per format ("{i}" is the layer index).
GGUF_NAMES = {
    "embed": "token_embd.weight", "norm": "output_norm.weight", "lm_head": "output.weight",
    "q": "blk.{i}.attn_q.weight", "k": "blk.{i}.attn_k.weight", "v": "blk.{i}.attn_v.weight",
    "o": "blk.{i}.attn_output.weight", "gate": "blk.{i}.ffn_gate.weight",
    "up": "blk.{i}.ffn_up.weight", "down": "blk.{i}.ffn_down.weight",
    "attn_norm": "blk.{i}.attn_norm.weight", "ffn_norm": "blk.{i}.ffn_norm.weight",
}  # fmt: skip
_HF_LAYER = "model.layers.{i}."
HF_NAMES = {
    "embed": "model.embed_tokens.weight", "norm": "model.norm.weight", "lm_head": "lm_head.weight",
    "q": _HF_LAYER + "self_attn.q_proj.weight", "k": _HF_LAYER + "self_attn.k_proj.weight",
    "v": _HF_LAYER + "self_attn.v_proj.weight", "o": _HF_LAYER + "self_attn.o_proj.weight",
    "gate": _HF_LAYER + "mlp.gate_proj.weight", "up": _HF_LAYER + "mlp.up_proj.weight",
    "down": _HF_LAYER + "mlp.down_proj.weight", "attn_norm": _HF_LAYER + "input_layernorm.weight",
    "ffn_norm": _HF_LAYER + "post_attention_layernorm.weight",
}  # fmt: skip


def _llama_state(
    cfg: ModelConfig,
    names: dict[str, str],
    get: Callable[[str], Weight],
    get_rope: Callable[[str, int], Weight],
) -> Iterator[tuple[str, Weight]]:
    """Our state dict, one tensor at a time (so peak memory stays near one tensor).

    `get_rope(name, num_heads)` reads Q or K in rotate-half order.
    """
    yield "embed_tokens.weight", get(names["embed"])
    yield "norm.weight", get(names["norm"])
    if not cfg.tie_word_embeddings:
        yield "lm_head.weight", get(names["lm_head"])
    for i in range(cfg.num_layers):
        n = {key: name.format(i=i) for key, name in names.items()}
        p = f"layers.{i}."
        q = get_rope(n["q"], cfg.num_heads)
        k = get_rope(n["k"], cfg.num_kv_heads)
        yield p + "self_attn.qkv_proj.weight", _cat_rows([q, k, get(n["v"])])
        yield p + "self_attn.o_proj.weight", get(n["o"])
        yield p + "mlp.gate_up_proj.weight", _cat_rows([get(n["gate"]), get(n["up"])])
        yield p + "mlp.down_proj.weight", get(n["down"])
        yield p + "input_layernorm.weight", get(n["attn_norm"])
        yield p + "post_attention_layernorm.weight", get(n["ffn_norm"])


def _build(
    cfg: ModelConfig,
    tensors: Iterator[tuple[str, Weight]],
    dtype: torch.dtype,
    device: torch.device,
    freq_factors: torch.Tensor | None,
    keep: str,
) -> LlamaModel:
    with torch.device("meta"):
        model = LlamaModel(cfg)
    expected = set(model.state_dict().keys())
    if cfg.tie_word_embeddings:
        expected.discard("lm_head.weight")
    loaded: dict[str, torch.Tensor] = {}
    packed: dict[str, PackedLinear] = {}  # module name -> its packed replacement
    for name, t in tensors:
        want = model.get_parameter(name).shape
        if tuple(t.shape) != tuple(want):
            raise ValueError(f"tensor {name}: shape {tuple(t.shape)} does not match {tuple(want)}")
        module = name.removesuffix(".weight")
        if isinstance(t, RawBlocks):
            packed[module] = PackedLinear(t.packed(), t.qtype, t.in_features)
        elif keep in QUANTIZATIONS and t.dim() == 2:
            packed[module] = pack_dense(t, QUANTIZATIONS[keep])
        else:
            loaded[name] = t.to(device=device, dtype=dtype)
    missing = expected - loaded.keys() - {f"{m}.weight" for m in packed}
    if missing:
        raise ValueError(f"weights missing: {sorted(missing)[:5]}")
    model.load_state_dict(loaded, strict=False, assign=True)
    for module, layer in packed.items():
        model.set_submodule(module, layer)
    if cfg.tie_word_embeddings:
        model.tie_lm_head()
    model.init_rope(device, freq_factors)
    return model.eval().requires_grad_(False)
