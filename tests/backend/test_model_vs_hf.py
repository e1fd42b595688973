"""Greedy decoding matches Hugging Face transformers token for token (fp32, CPU).

Both load the same GGUF file; transformers dequantizes it with the `gguf` package's
reference code and runs its own Llama implementation, so this checks our loader (GGUF
layout, Q/K permutation, dequantization) and our model math end to end.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from backend.engine import Engine
from backend.loading.weights import LoadedModel, load_model
from backend.sampling_params import SamplingParams
from tests.backend.conftest import small_kv_config

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "List three primary colours."},
    ],
    [{"role": "user", "content": "Explain recursion to a child in two sentences."}],
    [{"role": "user", "content": "Translate 'good morning' into Spanish and German."}],
    [{"role": "user", "content": "def fibonacci(n):"}],
]
NEW_TOKENS = 48


@pytest.fixture(scope="module")
def ours(loaded: LoadedModel) -> LoadedModel:
    return loaded  # float32 on the CPU


@pytest.fixture(scope="module")
def hf_model(smollm2_gguf: Path) -> Any:
    os.environ["HF_HUB_OFFLINE"] = "1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' own deprecation chatter
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32
        )
    return model.eval()


async def _engine_greedy(engine: Engine, ids: list[int]) -> list[int]:
    out: list[int] = []
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)
    async for delta in engine.add_request(ids, params):
        out.extend(delta.token_ids)
    return out


def test_greedy_matches_transformers(ours: LoadedModel, hf_model: Any) -> None:
    engine = Engine(ours, small_kv_config())
    compared = 0
    try:
        for messages in PROMPTS:
            ids = ours.tokenizer.encode(ours.tokenizer.apply_chat_template(messages))
            got = asyncio.run(_engine_greedy(engine, ids))
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = hf_model.generate(
                    torch.tensor([ids]),
                    max_new_tokens=NEW_TOKENS,
                    do_sample=False,
                    eos_token_id=sorted(ours.tokenizer.eos_token_ids),
                    pad_token_id=0,
                )[0, len(ids) :].tolist()
            # Both stop at the same end-of-turn token (included) or run to NEW_TOKENS.
            assert got == ref, f"diverged for {messages[-1]['content']!r}"
            compared += len(got)
        assert compared >= 5 * 8
    finally:
        engine.shutdown()


def test_prefill_logits_match_transformers(ours: LoadedModel, hf_model: Any) -> None:
    from backend.attention import AttentionMetadata

    ids = ours.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 8)
    with torch.inference_mode():
        kv = ours.model.allocate_kv_cache(
            -(-len(ids) // 16), 16, torch.float32, torch.device("cpu")
        )
        meta = AttentionMetadata.single_prefill(len(ids), 16)
        hidden = ours.model(torch.tensor(ids), torch.arange(len(ids)), meta, kv)
        logits = ours.model.compute_logits(hidden)
        ref = hf_model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(logits, ref, atol=2e-4, rtol=1e-4)


def test_safetensors_folder_loads_like_the_gguf(
    ours: LoadedModel, hf_model: Any, smollm2_gguf: Path, tmp_path: Path
) -> None:
    """A Hugging Face folder (config.json, *.safetensors, tokenizer files) loads to the
    same model and tokenizer as the GGUF it came from."""
    from safetensors.torch import save_file

    # transformers refuses save_pretrained on a GGUF-loaded model, so write the folder's
    # parts the way it would: HF tensor names (tied head omitted), its config, its tokenizer.
    tied = hf_model.config.tie_word_embeddings
    tensors = {
        name: t.contiguous()
        for name, t in hf_model.state_dict().items()
        if not (tied and name == "lm_head.weight")
    }
    save_file(tensors, tmp_path / "model.safetensors")
    hf_model.config.to_json_file(tmp_path / "config.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(
            str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name
        ).save_pretrained(tmp_path)
    folder = load_model(tmp_path, torch.float32, "cpu")
    assert folder.config == ours.config
    messages = PROMPTS[0]
    ids = ours.tokenizer.encode(ours.tokenizer.apply_chat_template(messages))
    assert folder.tokenizer.encode(folder.tokenizer.apply_chat_template(messages)) == ids
    for name, tensor in ours.model.state_dict().items():
        torch.testing.assert_close(folder.model.state_dict()[name], tensor, msg=name)


async def _prompt_scores(
    engine: Engine, ids: list[int], max_tokens: int = 1, k: int = 2
) -> tuple[list[Any], list[Any]]:
    """(the prompt's scores, every delta) of one request scoring its prompt."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, prompt_logprobs=k)
    deltas = [d async for d in engine.add_request(ids, params)]
    assert deltas[0].prompt_logprobs is not None
    assert all(d.prompt_logprobs is None for d in deltas[1:])  # sent once, first
    return deltas[0].prompt_logprobs, deltas


def test_prompt_logprobs_match_transformers(ours: LoadedModel, hf_model: Any) -> None:
    """Each prompt token's log-probability given the ones before it equals transformers'
    log_softmax of the same prompt's logits: in one prefill, in chunks of 16 tokens, and
    when the prompt's blocks sit in the prefix cache (they are recomputed, not skipped)."""
    text = "Scoring a prompt: every token is judged by the tokens before it. " * 3
    ids = ours.tokenizer.encode(text)
    with torch.inference_mode():
        ref = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), dim=-1)
    want = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    want_top = torch.topk(ref[:-1], 2, dim=-1)
    for config in (small_kv_config(), small_kv_config(max_num_batched_tokens=16, max_num_seqs=4)):
        engine = Engine(ours, config)
        try:
            cold, _ = asyncio.run(_prompt_scores(engine, ids))
            # The same prompt again, now cached: an ordinary request hits the cache...
            asyncio.run(_engine_greedy(engine, ids))
            warm, deltas = asyncio.run(_prompt_scores(engine, ids))
            assert deltas[-1].cached_tokens == 0  # ...a scoring one recomputes
        finally:
            engine.shutdown()
        for scores in (cold, warm):
            assert len(scores) == len(ids) - 1
            got = torch.tensor([s.logprob for s in scores])
            torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
            assert [[t for t, _ in s.top] for s in scores] == want_top.indices.tolist()
            ranks = (ref[:-1] > want.unsqueeze(1)).sum(dim=1) + 1
            assert [s.rank for s in scores] == ranks.tolist()


def test_max_tokens_zero_scores_the_prompt_only(ours: LoadedModel) -> None:
    engine = Engine(ours, small_kv_config())
    try:
        ids = ours.tokenizer.encode("Only the prompt is scored here.")
        scores, deltas = asyncio.run(_prompt_scores(engine, ids, max_tokens=0, k=0))
    finally:
        engine.shutdown()
    assert [(d.token_ids, d.finish_reason, d.completion_tokens) for d in deltas] == [
        ([], "length", 0)
    ]
    assert len(scores) == len(ids) - 1 and all(s.top == [] for s in scores)
