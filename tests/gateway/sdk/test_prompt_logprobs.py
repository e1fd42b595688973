"""Prompt log-probabilities through the official OpenAI SDK against the real model:
legacy completions' `echo` with `logprobs` (what scoring tools such as
lm-evaluation-harness send), `max_tokens: 0`, and vLLM's `prompt_logprobs`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from backend.loading.gguf_file import GGUFFile
from backend.tokenizer import Tokenizer
from tests.serving import MODEL_ID

TEXT = "The capital of France is Paris. The capital of Italy is Rome."


@pytest.fixture(scope="module")
def ids(smollm2_gguf: Path) -> list[int]:
    """TEXT's token ids as the server makes them (the served model's own tokenizer)."""
    return Tokenizer.from_gguf_metadata(GGUFFile(smollm2_gguf).metadata).encode(
        TEXT, add_special_tokens=True
    )


def _score(client: openai.OpenAI, prompt: Any, **kwargs: Any) -> Any:
    return client.completions.create(
        model=MODEL_ID, prompt=prompt, echo=True, logprobs=1,
        **{"max_tokens": 0, "temperature": 0, **kwargs},
    )  # fmt: skip


def test_echo_scores_every_prompt_token(client: openai.OpenAI) -> None:
    r = _score(client, TEXT)
    choice = r.choices[0]
    lp = choice.logprobs
    assert choice.text == TEXT and choice.finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 0
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == r.usage.prompt_tokens
    assert "".join(lp.tokens) == TEXT
    assert lp.text_offset == [
        TEXT.index(t, o) for t, o in zip(lp.tokens, lp.text_offset, strict=True)
    ]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    scores = lp.token_logprobs[1:]
    assert all(s is not None and s <= 0 for s in scores)
    for token, score, top in zip(lp.tokens[1:], scores, lp.top_logprobs[1:], strict=True):
        assert top[token] == score  # the token itself, and the best one
        assert 1 <= len(top) <= 2 and max(top.values()) >= score
    # The second "capital of" is far likelier than the first: the model read the first.
    capitals = [i for i, t in enumerate(lp.tokens) if t.strip() == "capital"]
    assert len(capitals) == 2
    after = [sum(scores[i : i + 2]) for i in capitals]  # " capital" " of", 1-based shift
    assert after[1] > after[0]


def test_token_prompt_scores_match_the_text_prompt(client: openai.OpenAI, ids: list[int]) -> None:
    """lm-evaluation-harness sends token ids and reads one score per id it sent."""
    text = _score(client, TEXT).choices[0].logprobs
    by_id = _score(client, ids, max_tokens=1).choices[0]
    assert by_id.logprobs is not None and text is not None
    assert len(by_id.logprobs.token_logprobs or []) == len(ids) + 1  # + the generated one
    assert by_id.logprobs.token_logprobs[: len(ids)] == pytest.approx(  # type: ignore[index]
        text.token_logprobs, abs=1e-5
    )
    assert by_id.text.startswith(TEXT) and by_id.finish_reason == "length"


def test_streamed_echo_and_n_choices(client: openai.OpenAI, ids: list[int]) -> None:
    plain = _score(client, TEXT, max_tokens=3).choices[0]
    chunks = list(_score(client, TEXT, max_tokens=3, stream=True))
    first = chunks[0].choices[0]  # the echo (chunks that wait to be sent may be merged)
    assert first.text.startswith(TEXT) and first.logprobs is not None
    streamed = []
    for c in chunks:
        if c.choices and c.choices[0].logprobs is not None:
            streamed += c.choices[0].logprobs.token_logprobs or []
    assert plain.logprobs is not None
    assert streamed == pytest.approx(plain.logprobs.token_logprobs)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.text
    two = _score(client, TEXT, max_tokens=2, n=2, temperature=1.0, seed=7)
    echoed = [c.logprobs.token_logprobs[: len(ids)] for c in two.choices]  # type: ignore[union-attr]
    assert echoed[0] == echoed[1] and echoed[0][1:] == pytest.approx(
        plain.logprobs.token_logprobs[1 : len(echoed[0])]  # type: ignore[index]
    )


def test_vllm_prompt_logprobs(client: openai.OpenAI, ids: list[int]) -> None:
    echo = _score(client, TEXT).choices[0].logprobs
    r = client.completions.create(
        model=MODEL_ID, prompt=TEXT, max_tokens=1, temperature=0,
        extra_body={"prompt_logprobs": 2},
    )  # fmt: skip
    entries = r.choices[0].model_extra["prompt_logprobs"]  # type: ignore[index]
    assert echo is not None and entries[0] is None
    assert len(entries) == len(ids)
    for tid, entry, score in zip(ids[1:], entries[1:], echo.token_logprobs[1:], strict=True):  # type: ignore[index]
        mine = entry[str(tid)]
        assert mine["logprob"] == pytest.approx(score, abs=1e-5) and mine["rank"] >= 1
        ranked = sorted(e["rank"] for e in entry.values())
        assert 2 <= len(entry) <= 3 and ranked[:2] == [1, 2]
    chat = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=1,
        extra_body={"prompt_logprobs": 0},
    )  # fmt: skip
    scored = chat.model_extra["prompt_logprobs"]  # type: ignore[index]
    assert scored[0] is None and len(scored) == chat.usage.prompt_tokens  # type: ignore[union-attr]
    assert all(len(e) == 1 for e in scored[1:])


def test_prompt_logprobs_refused_when_streaming(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(
            model=MODEL_ID, prompt=TEXT, max_tokens=1, stream=True,
            extra_body={"prompt_logprobs": 1},
        )  # fmt: skip
    assert err.value.body["param"] == "prompt_logprobs"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=0
        )
