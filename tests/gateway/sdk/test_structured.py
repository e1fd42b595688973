"""Structured outputs through the official OpenAI SDK against the real model:
`chat.completions.parse` with pydantic models of increasing depth (streamed too), JSON
mode, vLLM's constraint extensions, and the 400s for constraints that cannot be used."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tests.gateway.sdk.prompts import NO_CACHE
from tests.gateway.sdk.structured_models import MODELS
from tests.serving import MODEL_ID

PER_MODEL = 4  # prompts per model here; bench/structured.py runs all 20 of each


def _parse(client: openai.OpenAI, model: type[BaseModel], prompt: str, seed: int) -> Any:
    return client.chat.completions.parse(
        model=MODEL_ID, messages=[{"role": "user", "content": prompt}], response_format=model,
        max_completion_tokens=600, seed=seed, temperature=0.8, extra_headers=NO_CACHE,
    )  # fmt: skip


@pytest.mark.parametrize(("model", "prompts"), MODELS, ids=[m.__name__ for m, _ in MODELS])
def test_parse_returns_objects_of_the_model(
    client: openai.OpenAI, model: type[BaseModel], prompts: list[str]
) -> None:
    """Each answer parses into the model; sent together, so they share steps."""
    with ThreadPoolExecutor(PER_MODEL) as pool:
        answers = list(pool.map(lambda i: _parse(client, model, prompts[i], i), range(PER_MODEL)))
    for r in answers:
        choice = r.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        assert isinstance(choice.message.parsed, model)


def test_parse_streamed(client: openai.OpenAI) -> None:
    model, prompts = MODELS[1]
    with client.chat.completions.stream(
        model=MODEL_ID, messages=[{"role": "user", "content": prompts[0]}],
        response_format=model, max_completion_tokens=600, seed=3, extra_headers=NO_CACHE,
    ) as stream:  # fmt: skip
        pieces = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(pieces) > 3 and isinstance(final.choices[0].message.parsed, model)
    assert "".join(pieces) == final.choices[0].message.content


def test_json_mode_answers_parse(client: openai.OpenAI) -> None:
    """Every answer parses: one the model ends ("stop"), and one cut by max_tokens
    ("length"), whose last tokens closed what was open. (Open-ended JSON from this 135M
    model can loop inside a string: 1 prompt in 4 greedy, 2 in 12 at temperature 0.7.)"""
    finishes = set()
    for prompt in ("Describe a cat in JSON.", "A JSON object for a book.", "List fruits as JSON."):
        r = client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": prompt}],
            response_format={"type": "json_object"}, max_tokens=60, n=3, temperature=1.0,
            seed=11, extra_headers=NO_CACHE,
        )  # fmt: skip
        for choice in r.choices:
            finishes.add(choice.finish_reason)
            assert isinstance(json.loads(choice.message.content or ""), dict)
    assert finishes == {"stop", "length"}


def test_vllm_extensions(client: openai.OpenAI) -> None:
    def complete(prompt: str, **extra: Any) -> str:
        r = client.completions.create(
            model=MODEL_ID, prompt=prompt, max_tokens=40, temperature=0.9, seed=5,
            extra_body=extra, extra_headers=NO_CACHE,
        )  # fmt: skip
        return r.choices[0].text

    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", complete("Phone:", guided_regex="[0-9]{3}-[0-9]{4}"))
    colour = complete("Sky:", structured_outputs={"choice": ["blue", "grey"]})
    assert colour in ("blue", "grey")
    point = json.loads(complete("Point:", structured_outputs={"json": {
        "type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
        "required": ["x", "y"]}}))  # fmt: skip
    assert set(point) == {"x", "y"}
    yes_no = complete("Answer:", guided_grammar='root ::= "yes" | "no"')
    assert yes_no in ("yes", "no")


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "objekt"}},
                }
            },
            "response_format",
            "objekt",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}},
                }
            },
            "response_format",
            "uniqueItems",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "yaml"),
        (
            {"response_format": {"type": "json_schema"}},
            "response_format.json_schema",
            "json_schema",
        ),
        ({"guided_regex": "(ab"}, "guided_regex", "regex"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "one"),
        (
            {"guided_choice": ["a"], "response_format": {"type": "json_object"}},
            "guided_choice",
            "One",
        ),
    ],
)
def test_unusable_constraints_are_400s(
    client: openai.OpenAI, body: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
            extra_body=body,
        )  # fmt: skip
    error = err.value.body
    assert isinstance(error, dict) and error["param"] == param and words in error["message"]
