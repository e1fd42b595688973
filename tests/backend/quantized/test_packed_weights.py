"""GGUF weights kept packed (backend/quantized/): what is loaded, what the engine runs, and
how close it stays to the float32 reference (quantization "none": the same dequantized
weights, float32 activations) on the real SmolLM2 GGUF."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest
import torch
from torch import nn

from backend.attention import AttentionMetadata
from backend.engine import Engine, EngineConfig
from backend.kernels import CpuKernels, attach_cpu_kernels
from backend.loading.weights import LoadedModel, load_model
from backend.quantized import PackedLinear
from backend.sampling_params import SamplingParams
from backend.speculative import SpeculativeConfig
from tests.serving import TEST_KV_CACHE_GB

# Original prose for teacher-forced scoring (not from any benchmark set).
TEXT = (
    "The ferry left the harbour an hour late, because the fog had settled over the water "
    "like wet wool. Mara stood at the rail with her grandfather's compass in her pocket, "
    "counting the buoys as they slid past. On the far shore the lighthouse blinked twice, "
    "paused, and blinked again, the same rhythm it had kept for a hundred years. To bake a "
    "simple loaf, mix flour, water, salt and a little yeast, knead the dough until it is "
    "smooth, and let it rise somewhere warm until it has doubled in size."
)


@pytest.fixture(scope="module")
def kernels(cpu_kernels: CpuKernels) -> CpuKernels:
    return cpu_kernels


@pytest.fixture(scope="module")
def packed(smollm2_gguf: Path) -> LoadedModel:
    return load_model(smollm2_gguf)


@pytest.fixture(scope="module")
def reference(smollm2_gguf: Path) -> LoadedModel:
    return load_model(smollm2_gguf, quantization="none")


def attach(loaded: LoadedModel, kernels: CpuKernels) -> LoadedModel:
    assert attach_cpu_kernels(loaded.model, kernels)  # decode steps run fused
    return loaded


def teacher_forced(loaded: LoadedModel, ids: list[int], kernels: CpuKernels) -> torch.Tensor:
    """Logits [len(ids) - 1, vocab] for each next token, one decode step per position (the
    few-row path the engine decodes with, not a prefill)."""
    model = loaded.model
    blocks = -(-len(ids) // 16)
    kv = model.allocate_kv_cache(blocks, 16, torch.float32, torch.device("cpu"))
    rows = []
    with torch.inference_mode():
        for p in range(len(ids) - 1):
            meta = AttentionMetadata.single_decode(p, 16, kernels.paged_decode)
            hidden = model.forward(torch.tensor([ids[p]]), torch.tensor([p]), meta, kv)
            rows.append(model.compute_logits(hidden)[0])
    return torch.stack(rows)


def test_quantized_weights_stay_packed_and_small(
    packed: LoadedModel, reference: LoadedModel, smollm2_gguf: Path
) -> None:
    model = packed.model
    layer = model.layers[0]
    for proj in (
        layer.self_attn.qkv_proj,
        layer.self_attn.o_proj,
        layer.mlp.gate_up_proj,
        layer.mlp.down_proj,
    ):
        assert isinstance(proj, PackedLinear) and proj.qtype == gguf.GGMLQuantizationType.Q4_1
    assert isinstance(model.embed_tokens, PackedLinear)
    assert model.lm_head is model.embed_tokens  # tied: one copy of the Q8_0 blocks
    file_size = smollm2_gguf.stat().st_size
    assert model.weight_bytes() <= file_size  # the blocks, norms: no expanded copy
    assert reference.model.weight_bytes() > 5 * file_size  # float32 is ~5.5x the Q4_1 file


def test_packed_rows_and_matmul_agree_with_the_expanded_weight(
    packed: LoadedModel, reference: LoadedModel
) -> None:
    """Row lookup (the embedding) and the many-row path expand exactly as the reference
    loader does, including Q/K's RoPE row order."""
    ids = torch.tensor([0, 17, 49151])
    embed = packed.model.embed_tokens
    assert isinstance(embed, PackedLinear) and isinstance(
        reference.model.embed_tokens, nn.Embedding
    )
    assert torch.equal(embed.rows(ids), reference.model.embed_tokens.weight[ids])
    qkv = packed.model.layers[3].self_attn.qkv_proj
    assert isinstance(qkv, PackedLinear)
    assert torch.equal(qkv.dense(), reference.model.layers[3].self_attn.qkv_proj.weight)


def test_fused_decode_layer_matches_the_pytorch_layers(
    reference: LoadedModel, smollm2_gguf: Path, kernels: CpuKernels
) -> None:
    """On float32 weights the fused layer (kernels/decode_layer.cpp) computes model.py's
    layers to float32 rounding: same next-token logits, same K/V written."""
    fused = attach(load_model(smollm2_gguf, quantization="none"), kernels)
    plain = reference  # no kernels attached: PyTorch's own ops
    ids = plain.tokenizer.encode(TEXT)[:40]
    got, want = teacher_forced(fused, ids, kernels), teacher_forced(plain, ids, kernels)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-3)


def test_packed_decoding_tracks_the_float_reference(
    packed: LoadedModel, reference: LoadedModel, smollm2_gguf: Path, kernels: CpuKernels
) -> None:
    """int8 activations over packed Q4_1 weights: the next token the reference would pick
    is picked at nearly every position of text it has not seen, and the text's perplexity
    moves by a few percent at most."""
    model = attach(load_model(smollm2_gguf), kernels)
    ref = attach(load_model(smollm2_gguf, quantization="none"), kernels)
    ids = model.tokenizer.encode(TEXT)
    got, want = teacher_forced(model, ids, kernels), teacher_forced(ref, ids, kernels)
    agreement = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    targets = torch.tensor(ids[1:])

    def perplexity(logits: torch.Tensor) -> float:
        return torch.nn.functional.cross_entropy(logits, targets).exp().item()

    assert agreement >= 0.9, agreement
    assert abs(perplexity(got) / perplexity(want) - 1) < 0.05, (perplexity(got), perplexity(want))


def generate(engine: Engine, prompt: list[int], n: int) -> list[int]:
    async def go() -> list[int]:
        params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
        return [t async for d in engine.add_request(prompt, params) for t in d.token_ids]

    return asyncio.run(go())


@pytest.fixture(scope="module")
def packed_engine(smollm2_gguf: Path, kernels: CpuKernels) -> Iterator[Engine]:
    eng = Engine(load_model(smollm2_gguf), EngineConfig(kv_cache_gb=TEST_KV_CACHE_GB))
    yield eng
    eng.shutdown()


def test_packed_engine_answers(packed_engine: Engine) -> None:
    """Through the engine: a prefill over the expanded weights (many rows), then decode
    steps over the blocks. On this prompt the float model's first token "The" leads "L'"
    by a margin that int8 activations in the LM head erase (llama.cpp, rounding so on the
    same file, answers "L'Étoile, ..."): the head keeps float32 activations."""
    tok = packed_engine.tokenizer
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    answer = tok.decode(generate(packed_engine, tok.encode(tok.apply_chat_template(chat)), 16))
    assert "Paris" in answer, answer


def test_speculation_over_packed_weights_reproduces_plain_decoding(
    packed_engine: Engine, smollm2_gguf: Path
) -> None:
    """Verify rows go through the same row-independent kernels as plain decode rows, so
    accepted guesses change nothing (fixed k: every guess is fed)."""
    spec = SpeculativeConfig(method="ngram", num_speculative_tokens=6, adaptive_speculation=False)
    eng = Engine(
        load_model(smollm2_gguf), EngineConfig(kv_cache_gb=TEST_KV_CACHE_GB, speculative=spec)
    )
    tok = eng.tokenizer
    ids = tok.encode("Copy exactly: the quick brown fox jumps over the lazy dog. " * 3 + "Copy:")
    try:
        assert generate(eng, ids, 40) == generate(packed_engine, ids, 40)
        assert eng.metrics.spec_accepted_tokens._value.get() > 0
    finally:
        eng.shutdown()


def test_without_kernels_the_engine_expands_packed_weights(smollm2_gguf: Path) -> None:
    loaded = load_model(smollm2_gguf)
    eng = Engine(loaded, EngineConfig(kv_cache_gb=TEST_KV_CACHE_GB, kernels="torch"))
    try:
        assert not loaded.model.packed_layers()
        assert loaded.model.lm_head.weight is loaded.model.embed_tokens.weight
        tok = eng.tokenizer
        ids = tok.encode(
            tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
        )
        assert "Paris" in tok.decode(generate(eng, ids, 24))
    finally:
        eng.shutdown()


@pytest.mark.parametrize(
    ("quantization", "qtype"),
    [("int8", gguf.GGMLQuantizationType.Q8_0), ("int4", gguf.GGMLQuantizationType.Q4_1)],
)
def test_quantization_at_load(
    smollm2_gguf: Path,
    reference: LoadedModel,
    kernels: CpuKernels,
    quantization: str,
    qtype: gguf.GGMLQuantizationType,
) -> None:
    """A float model quantized at load runs the same kernels; int8 (Q8_0) stays close to
    the reference, int4 requantizes already-4-bit weights and drifts more."""
    loaded = attach(load_model(smollm2_gguf, quantization=quantization), kernels)
    assert all(p.qtype == qtype for p in loaded.model.packed_layers())
    assert len(loaded.model.packed_layers()) == 4 * loaded.config.num_layers + 1
    ids = loaded.tokenizer.encode(TEXT)[:48]
    got = teacher_forced(loaded, ids, kernels)
    want = teacher_forced(
        attach(load_model(smollm2_gguf, quantization="none"), kernels), ids, kernels
    )
    agreement = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    assert agreement >= (0.9 if quantization == "int8" else 0.6), agreement


def test_bad_quantization_settings_are_refused(smollm2_gguf: Path) -> None:
    with pytest.raises(ValueError, match="quantization must be"):
        EngineConfig(quantization="q3")
    with pytest.raises(ValueError, match="quantization must be"):
        load_model(smollm2_gguf, quantization="q3")
    with pytest.raises(ValueError, match="float32 activations"):
        load_model(smollm2_gguf, torch.bfloat16, quantization="int8")


def test_prompt_scores_on_packed_weights_use_float_arithmetic(
    packed_engine: Engine, reference: LoadedModel
) -> None:
    """A scored prompt is computed as the float reference computes it, however few its
    tokens: steps of up to 16 rows otherwise round activations to int8 (scores then
    differed by up to 0.33 on such prompts), and a prompt's scores would depend on what
    shared its step."""
    ids = packed_engine.tokenizer.encode("Which animal says moo? A cow.")
    assert len(ids) <= 16
    params = SamplingParams(max_tokens=0, prompt_logprobs=0)

    async def scores() -> list[float]:
        deltas = [d async for d in packed_engine.add_request(ids, params)]
        return [s.logprob for s in deltas[0].prompt_logprobs or []]

    got = torch.tensor(asyncio.run(scores()))
    with torch.inference_mode():
        model = reference.model
        kv = model.allocate_kv_cache(1, 16, torch.float32, torch.device("cpu"))
        meta = AttentionMetadata.single_prefill(len(ids), 16)
        hidden = model(torch.tensor(ids), torch.arange(len(ids)), meta, kv)
        ref = torch.log_softmax(model.compute_logits(hidden)[:-1], dim=-1)
    want = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
