"""Constrained decoding through the engine (backend/structured/): every answer follows
its JSON schema, regular expression, choice list or grammar, greedy or sampled, batched
with unconstrained requests; a grammar that cannot be compiled is refused by name."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from pydantic import BaseModel, Field

from backend.engine import Engine
from backend.request import Delta
from backend.sampling_params import SamplingParams
from backend.structured import GrammarSpec
from tests.backend.engine.conftest import consume, generate, reject, text_of, tokens_of


class City(BaseModel):
    name: str
    country: str
    population: int
    coastal: bool
    landmarks: list[str] = Field(max_length=3)  # a schema's own bound ("maxItems")


CITY = GrammarSpec.json_schema(City.model_json_schema())
PROMPT = "Describe the city of Lisbon as JSON.\n"


def constrained(spec: GrammarSpec, max_tokens: int = 300, **kwargs: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, grammar=spec, **kwargs)  # type: ignore[arg-type]


def test_greedy_and_sampled_answers_follow_the_schema(engine: Engine) -> None:
    for params in (
        constrained(CITY, temperature=0.0),
        *(constrained(CITY, temperature=1.0, seed=s) for s in range(3)),
    ):
        deltas = generate(engine, PROMPT, params)
        assert deltas[-1].finish_reason == "stop"  # the grammar ended it, not max_tokens
        City.model_validate_json(text_of(deltas))


def test_json_object_regex_choice_and_grammars(engine: Engine) -> None:
    cases: list[tuple[GrammarSpec, str]] = [
        (GrammarSpec.json_object(), "A JSON object about a cat:"),
        (GrammarSpec("regex", r"[0-9]{3}-[0-9]{4}"), "A phone number:"),
        (GrammarSpec.choice(["red", "green", "blue"]), "The colour of the sky is"),
        (GrammarSpec("grammar", 'start: "yes" | "no"'), "Is water wet?"),
        (GrammarSpec("grammar", 'root ::= "(" [a-z]+ ("," [a-z]+)* ")"'), "A list of fruit:"),
    ]
    for spec, prompt in cases:
        text = text_of(generate(engine, prompt, constrained(spec, temperature=0.7, seed=1)))
        if spec == cases[0][0]:
            assert isinstance(json.loads(text), dict)
        elif spec.kind == "regex":
            assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", text), text
        elif spec.kind == "choice":
            assert text in ("red", "green", "blue")
        elif "start" in spec.source:  # Lark
            assert text in ("yes", "no")
        else:
            assert re.fullmatch(r"\([a-z]+(,[a-z]+)*\)", text), text


def test_constrained_and_free_requests_share_steps(engine: Engine) -> None:
    """Batched together, each request keeps its own constraint (masks are per row), and
    a free request answers exactly as it does alone."""
    free = SamplingParams(max_tokens=24, temperature=0.0)
    alone = tokens_of(generate(engine, PROMPT, free))

    async def together() -> list[list[Delta]]:
        streams = [
            engine.add_request(PROMPT, free),
            *(engine.add_request(PROMPT, constrained(CITY, temperature=1, seed=s)) for s in (5, 6)),
            engine.add_request("Pick one:", constrained(GrammarSpec.choice(["up", "down"]))),
        ]
        return list(await asyncio.gather(*(consume(s) for s in streams)))

    plain, *cities, pick = asyncio.run(together())
    assert tokens_of(plain) == alone
    for deltas in cities:
        City.model_validate_json(text_of(deltas))
    assert text_of(pick) in ("up", "down")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (GrammarSpec.json_schema({"type": "objekt"}), "objekt"),
        (GrammarSpec.json_schema({"type": "array", "uniqueItems": True}), "uniqueItems"),
        (GrammarSpec("regex", "(ab"), "regex"),
        (GrammarSpec("grammar", "start: foo"), "foo"),
        (GrammarSpec("grammar", "root ::= (("), "GBNF"),
    ],
)
def test_a_grammar_that_cannot_compile_is_refused(
    engine: Engine, spec: GrammarSpec, message: str
) -> None:
    error = reject(engine, "Hi", constrained(spec))
    assert error.code == "invalid_grammar" and message in str(error), str(error)


def test_json_cut_by_max_tokens_is_closed_in_time(engine: Engine) -> None:
    """An answer whose budget runs out mid-object closes what it has open with its last
    tokens: it parses, and says "length" (it was cut, not finished)."""
    for max_tokens, seed in ((9, 1), (14, 2), (21, 3), (40, 4)):
        params = constrained(GrammarSpec.json_object(), max_tokens, temperature=1.0, seed=seed)
        deltas = generate(engine, "Describe a busy market street in JSON, in detail:", params)
        text = text_of(deltas)
        # Closed within its budget (a few tokens early: closing.SLACK), still "length".
        assert deltas[-1].finish_reason == "length" and len(tokens_of(deltas)) <= max_tokens
        assert isinstance(json.loads(text), dict), text
