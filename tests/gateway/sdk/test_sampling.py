"""Sampling controls through the official OpenAI SDK against the real model: chat and
legacy logprobs, logit_bias, frequency and presence penalties."""

from __future__ import annotations

import openai
import pytest

from tests.gateway.sdk.prompts import CAPITAL
from tests.serving import MODEL_ID


def test_chat_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL_ID, messages=CAPITAL, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == r.usage.completion_tokens  # type: ignore[union-attr]
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
    text = "".join(e.token for e in content if e.bytes)
    assert (r.choices[0].message.content or "") in text
    streamed = client.chat.completions.create(
        model=MODEL_ID, messages=CAPITAL, temperature=0, max_tokens=6, logprobs=True, stream=True
    )
    tokens = [e.token for c in streamed if c.choices and c.choices[0].logprobs
              for e in (c.choices[0].logprobs.content or [])]  # fmt: skip
    assert tokens == [e.token for e in content]


def test_completion_logprobs(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=MODEL_ID, prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=2
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]


def test_logit_bias_forces_a_token(client: openai.OpenAI) -> None:
    plain = client.completions.create(
        model=MODEL_ID, prompt="Hello", max_tokens=4, temperature=0, logprobs=0
    )
    forced = client.completions.create(
        model=MODEL_ID, prompt="Hello", max_tokens=4, temperature=0, logit_bias={"42": 100},
        logprobs=0,
    )  # fmt: skip
    assert forced.choices[0].text != plain.choices[0].text
    assert forced.choices[0].logprobs is not None
    tokens = forced.choices[0].logprobs.tokens or []
    assert len(tokens) == 4 and len(set(tokens)) == 1  # token 42, four times


def test_penalties_change_a_repetitive_answer(client: openai.OpenAI) -> None:
    prompt = [{"role": "user", "content": "Repeat the word 'apple' twenty times."}]
    plain = client.chat.completions.create(
        model=MODEL_ID, messages=prompt, temperature=0, max_tokens=40
    )
    penalised = client.chat.completions.create(
        model=MODEL_ID, messages=prompt, temperature=0, max_tokens=40, frequency_penalty=2.0
    )
    text, other = plain.choices[0].message.content or "", penalised.choices[0].message.content or ""
    assert text.lower().count("apple") > other.lower().count("apple")
