"""The bundled engine's settings, written once: the config file's [engine] section. The
command line's engine flags are made from it (gateway/cli_flags.py: a field's name,
type, bounds and description become the flag, its choices and its help), and the
engine's own config takes the same names (backend EngineConfig and SpeculativeConfig
fields), so `prefix_caching = false`, `--no-prefix-caching` and
`EngineConfig.prefix_caching` are one setting. The one field with another name there is
`speculative`: the proposer, SpeculativeConfig.method.

No torch here: the config loads without the engine; `engine_config` imports it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta

from gateway.config.environment import EngineEnvironment
from gateway.config.section import Section

if TYPE_CHECKING:
    from backend.engine import EngineConfig

SPECULATIVE_GROUP = {"group": "speculative decoding"}
# Fields the gateway resolves itself (what to load: the bundled model when None) or that
# choose the proposer; every other field has the same name in EngineConfig or
# SpeculativeConfig.
GATEWAY_FIELDS = frozenset({"model", "speculative"})


class EngineSection(Section, frozen=True):
    model: Annotated[
        str | None,
        Meta(
            description="a local GGUF file or Hugging Face safetensors folder (default: the "
            "bundled SmolLM2-135M-Instruct, pulled on first use)"
        ),
    ] = None
    served_model_name: Annotated[
        str | None,
        Meta(description="the model id clients send (default: the model's file or folder name)"),
    ] = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Annotated[str, Meta(description="auto, cpu, cuda, cuda:1, ...")] = "auto"
    max_model_len: Annotated[
        Annotated[int, Meta(gt=0)] | None,
        Meta(description="longest sequence (default: the model's context length)"),
    ] = None
    kv_cache_gb: Annotated[
        Annotated[float, Meta(gt=0)] | None,
        Meta(description="KV cache size (default: 2 on CPU, 90% of free GPU memory)"),
    ] = None
    max_num_seqs: Annotated[int, Meta(gt=0, description="sequences per batch")] = 64
    max_num_batched_tokens: Annotated[
        int, Meta(gt=0, description="tokens per step (long prompts are prefilled in chunks)")
    ] = 1024
    block_size: Annotated[int, Meta(gt=0, description="tokens per KV block")] = 16
    prefix_caching: Annotated[
        bool, Meta(description="reuse the KV blocks of prompts' common prefixes")
    ] = True
    quantization: Annotated[
        Literal["auto", "none", "int8", "int4"],
        Meta(
            description="auto = a GGUF's Q8_0/Q4_0/Q4_1 weights stay packed and decode with "
            "int8 activations as llama.cpp does (CPU, float32); none = every weight expanded "
            "to dtype (the exact reference); int8/int4 = quantize at load (Q8_0/Q4_1)"
        ),
    ] = "auto"
    int8_decode: Annotated[
        bool, Meta(description="CPU: int8 weight copies for small decode steps (not bit-exact)")
    ] = False
    kernels: Annotated[
        Literal["auto", "torch"],
        Meta(
            description="auto = our C++ CPU kernels (decode attention, few-row matmul; "
            "compiled on first use) where they build, torch = pure PyTorch throughout"
        ),
    ] = "auto"
    speculative: Annotated[
        Literal["ngram", "self-draft"] | None,
        Meta(
            description="guess tokens and verify them in one step: ngram = prompt lookup, "
            "self-draft = the model's first layers with its own head. Default: off",
            extra=SPECULATIVE_GROUP,
        ),
    ] = None
    num_speculative_tokens: Annotated[
        int, Meta(ge=1, le=32, description="most guesses per step", extra=SPECULATIVE_GROUP)
    ] = 8
    speculative_opt_in: Annotated[
        bool,
        Meta(
            description='speculate only for requests that send "speculative": true '
            "(default: all requests except those that send false)",
            extra=SPECULATIVE_GROUP,
        ),
    ] = False
    adaptive_speculation: Annotated[
        bool,
        Meta(
            description="choose k from acceptance and load (off: feed every guess, fixed k)",
            extra=SPECULATIVE_GROUP,
        ),
    ] = True
    self_draft_layers: Annotated[
        int, Meta(ge=1, description="self-draft: layers the guesser runs", extra=SPECULATIVE_GROUP)
    ] = 8


def engine_config(
    section: EngineSection, model_path: Path, environment: EngineEnvironment
) -> EngineConfig:
    """The engine's config for `section`: fields copied by name, then what the
    environment says (LLM_GATEWAY_CPU_KERNELS, CXX, LLM_GATEWAY_HOME)."""
    from backend.engine import EngineConfig
    from backend.speculative import SpeculativeConfig

    values = msgspec.structs.asdict(section)
    speculative = None
    if section.speculative is not None:
        speculative = SpeculativeConfig(
            method=section.speculative, **_named_in(SpeculativeConfig, values)
        )
    config = EngineConfig(
        model=model_path, speculative=speculative, **_named_in(EngineConfig, values)
    )
    return environment.apply(config)


def _named_in(target: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The values whose names are fields of the dataclass `target` (gateway's own aside)."""
    names = {f.name for f in dataclasses.fields(target)}
    return {k: v for k, v in values.items() if k in names and k not in GATEWAY_FIELDS}
