"""Shape and hyper-parameters of a Llama-family decoder, read from GGUF or HF config.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """How rotary frequencies are stretched for long context.

    kind: "linear" (positions / factor) or "llama3" (Llama 3.1's band-wise frequency
    scaling). GGUF files from llama.cpp's converter carry Llama 3 scaling as a
    precomputed `rope_freqs` tensor instead; the loader passes that as `freq_factors`.
    """

    kind: str
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass(frozen=True, slots=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope_scaling: RopeScaling | None = None

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

    @classmethod
    def from_gguf_metadata(cls, md: dict[str, Any], vocab_size: int, tied: bool) -> ModelConfig:
        arch = md.get("general.architecture", "llama")
        if arch not in ("llama", "mistral", "granite"):
            raise ValueError(f"GGUF architecture {arch!r} is not supported (Llama family only)")

        def get(key: str, default: Any = None) -> Any:
            value = md.get(f"{arch}.{key}", default)
            if value is None:
                raise ValueError(f"GGUF metadata lacks {arch}.{key}")
            return value

        hidden = int(get("embedding_length"))
        heads = int(get("attention.head_count"))
        head_dim = int(
            md.get(f"{arch}.attention.key_length")
            or md.get(f"{arch}.rope.dimension_count")
            or hidden // heads
        )
        scaling = None
        kind = md.get(f"{arch}.rope.scaling.type")
        if kind == "linear":
            scaling = RopeScaling("linear", float(get("rope.scaling.factor")))
        elif kind not in (None, "none"):
            raise ValueError(f"GGUF rope scaling type {kind!r} is not supported")
        return cls(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=int(get("feed_forward_length")),
            num_layers=int(get("block_count")),
            num_heads=heads,
            num_kv_heads=int(md.get(f"{arch}.attention.head_count_kv") or heads),
            head_dim=head_dim,
            rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
            rope_theta=float(md.get(f"{arch}.rope.freq_base", 10000.0)),
            max_position_embeddings=int(get("context_length")),
            tie_word_embeddings=tied,
            rope_scaling=scaling,
        )

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ModelConfig:
        model_type = cfg.get("model_type", "llama")
        if model_type not in ("llama", "mistral"):
            raise ValueError(f"model_type {model_type!r} is not supported (Llama family only)")
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        scaling = None
        rs = cfg.get("rope_scaling") or None
        if rs:
            kind = rs.get("rope_type") or rs.get("type")
            if kind == "llama3":
                scaling = RopeScaling(
                    "llama3",
                    float(rs["factor"]),
                    float(rs.get("low_freq_factor", 1.0)),
                    float(rs.get("high_freq_factor", 4.0)),
                    int(rs.get("original_max_position_embeddings", 8192)),
                )
            elif kind == "linear":
                scaling = RopeScaling("linear", float(rs["factor"]))
            elif kind != "default":
                raise ValueError(f"rope_scaling type {kind!r} is not supported")
        rope_params = cfg.get("rope_parameters") or {}
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(cfg.get("rope_theta") or rope_params.get("rope_theta") or 10000.0),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            rope_scaling=scaling,
        )
