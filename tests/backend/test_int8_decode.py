"""int8 weight copies for small decode steps: accurate projections, exact large steps,
and a real model that still answers correctly with them on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from backend.engine import Engine
from backend.int8_decode import MAX_ROWS, attach_int8, quantize_rows
from backend.linear import project
from backend.loading.weights import load_model
from backend.sampling_params import SamplingParams
from tests.backend.conftest import small_kv_config


def test_rows_quantize_within_half_a_step() -> None:
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(0))
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (64,)
    back = q.float() * scale.float()[:, None]
    # Rounding error is at most half a quantization step (plus bf16 rounding of the scale).
    assert torch.all((back - w).abs() <= scale.float()[:, None] * 0.51 + w.abs() * 2**-8)


def test_small_steps_use_int8_and_large_steps_stay_exact() -> None:
    gen = torch.Generator().manual_seed(1)
    lin = nn.Linear(256, 512, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(512, 256, generator=gen))
    attach_int8(lin)
    small = torch.randn(MAX_ROWS, 256, generator=gen)
    ref = F.linear(small, lin.weight)
    got = project(small, lin)
    rel = (got - ref).norm() / ref.norm()
    assert 0 < rel < 0.02  # int8 path taken (not bit-exact) and accurate
    large = torch.randn(MAX_ROWS + 1, 256, generator=gen)
    assert torch.equal(project(large, lin), F.linear(large, lin.weight))


def test_engine_with_int8_decode_answers_correctly(smollm2_gguf: Path) -> None:
    # Its own float copy: int8 copies are attached in place (to dense layers only).
    loaded = load_model(smollm2_gguf, quantization="none")
    eng = Engine(loaded, small_kv_config(int8_decode=True))
    tok = loaded.tokenizer
    ids = tok.encode(
        tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    )

    async def go() -> str:
        params = SamplingParams(max_tokens=24, temperature=0.0)
        return "".join([d.text async for d in eng.add_request(ids, params)])

    try:
        assert "Paris" in asyncio.run(go())
    finally:
        eng.shutdown()
