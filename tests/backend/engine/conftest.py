"""What the engine's end-to-end tests share: a module's engine (and one with a 64-token
context), a first greedy run to compare against, and small helpers that drive requests
with `asyncio.run` (each request's stream binds to the loop running when it is added)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

from backend.attention import AttentionMetadata
from backend.engine import Engine, RequestRejected
from backend.loading.weights import LoadedModel
from backend.request import Delta, RequestStream
from backend.sampling_params import SamplingParams
from tests.backend.conftest import small_kv_config

PROMPT = "The capital of France is"
REF_TOKENS = 20
LONG = 500  # max_tokens of requests that are aborted long before they could finish


@dataclass(frozen=True)
class Reference:
    prompt_ids: list[int]
    deltas: list[Delta]
    tokens: list[int]
    text: str
    offsets: list[int]  # offsets[i]: len(decode(tokens[:i]))


@pytest.fixture(scope="module")
def engine(loaded: LoadedModel) -> Iterator[Engine]:
    eng = Engine(loaded, small_kv_config())
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def small_engine(loaded: LoadedModel) -> Iterator[Engine]:
    eng = Engine(loaded, small_kv_config(max_model_len=64))
    yield eng
    eng.shutdown()


async def consume(stream: RequestStream) -> list[Delta]:
    return [d async for d in stream]


def generate(engine: Engine, prompt: str | list[int], params: SamplingParams) -> list[Delta]:
    async def go() -> list[Delta]:
        return await consume(engine.add_request(prompt, params))

    return asyncio.run(go())


def tokens_of(deltas: list[Delta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def text_of(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def greedy(max_tokens: int, **kwargs: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kwargs)  # type: ignore[arg-type]


def reject(engine: Engine, prompt: str | list[int], params: SamplingParams) -> RequestRejected:
    async def go() -> RequestRejected:
        with pytest.raises(RequestRejected) as info:
            engine.add_request(prompt, params).abort()  # abort: only reached on a failure
        return info.value

    return asyncio.run(go())


def manual_greedy(loaded: LoadedModel, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy decoding written out by hand: the whole sequence is recomputed from scratch
    each step in a fresh cache, so neither paging nor KV reuse is involved (no EOS check)."""
    model = loaded.model
    device, dtype = model.device, model.dtype
    ids = list(prompt_ids)
    with torch.inference_mode():
        for _ in range(n):
            kv = model.allocate_kv_cache(-(-len(ids) // 16), 16, dtype, device)
            meta = AttentionMetadata.single_prefill(len(ids), 16, device)
            hidden = model(torch.tensor(ids, device=device), torch.arange(len(ids)), meta, kv)
            ids.append(int(torch.argmax(model.compute_logits(hidden[-1:])[0])))
    return ids[len(prompt_ids) :]


@pytest.fixture(scope="module")
def base(engine: Engine, loaded: LoadedModel) -> Reference:
    """A first greedy run through the engine: PROMPT, REF_TOKENS tokens, EOS ignored."""
    tok = loaded.tokenizer
    prompt_ids = tok.encode(PROMPT, add_special_tokens=True)
    deltas = generate(engine, prompt_ids, greedy(REF_TOKENS, ignore_eos=True))
    tokens = tokens_of(deltas)
    offsets = [len(tok.decode(tokens[:i])) for i in range(len(tokens) + 1)]
    text = text_of(deltas)
    assert text == tok.decode(tokens)
    # The tests below cut the text at token boundaries: make sure decoding is additive.
    assert all(text.startswith(tok.decode(tokens[:i])) for i in range(len(tokens)))
    return Reference(prompt_ids, deltas, tokens, text, offsets)
