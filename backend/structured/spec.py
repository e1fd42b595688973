"""What a request constrains its answer to, as data: the engine compiles it
(grammars.py), the gateway builds it from OpenAI's and vLLM's request fields."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

# grammar: a Lark grammar or a GBNF (llama.cpp's EBNF) one, told apart by llguidance.
GrammarKind = Literal["json_schema", "regex", "choice", "grammar"]
GRAMMAR_KINDS: tuple[GrammarKind, ...] = ("json_schema", "regex", "choice", "grammar")


class GrammarError(ValueError):
    """A spec that cannot be compiled; the message says why, for the client."""


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    kind: GrammarKind
    # json_schema: the schema as JSON text (keys in the author's order: properties are
    # written in it); regex, grammar: the pattern or grammar text;
    # choice: a JSON list of the allowed strings.
    source: str

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | bool) -> GrammarSpec:
        """The schema as `bounded` makes it (below)."""
        return cls("json_schema", json.dumps(bounded(schema)))

    @classmethod
    def json_object(cls) -> GrammarSpec:
        """OpenAI's JSON mode: any JSON object."""
        return cls.json_schema({"type": "object"})

    @classmethod
    def choice(cls, options: Any) -> GrammarSpec:
        if (
            not isinstance(options, list)
            or not options
            or not all(isinstance(o, str) for o in options)
        ):
            raise GrammarError("a choice needs a non-empty list of strings")
        return cls("choice", json.dumps(options))


# I-JSON's interoperable integers (RFC 7493): what JavaScript and doubles hold exactly.
SAFE_INT = 2**53 - 1
# JSON Schema keywords whose value is a schema, a list of schemas, or a map of them.
_SCHEMA = ("items", "additionalItems", "additionalProperties", "not", "if", "then", "else",
           "contains", "propertyNames", "unevaluatedItems", "unevaluatedProperties")  # fmt: skip
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def bounded(schema: Any) -> Any:
    """A copy of `schema` that leaves a model no endless path the author did not mean:

    - an object schema with `properties` and no word on other keys
      (`additionalProperties`, `patternProperties`, `unevaluatedProperties`) allows no
      other keys: what OpenAI's strict mode requires and vLLM's xgrammar assumes. With
      JSON Schema's default a small model invented keys until max_tokens (measured: a
      5-field pydantic model, `population_density_miles_per_acre_...`);
    - an integer without bounds is one every JSON reader holds exactly (I-JSON's
      +-(2**53 - 1)): unbounded, greedy decoding wrote `100000...` until max_tokens.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA:
        if key in out:
            out[key] = bounded(out[key])
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [bounded(s) for s in out[key]]
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: bounded(s) for name, s in out[key].items()}
    open_keys = ("additionalProperties", "patternProperties", "unevaluatedProperties")
    if isinstance(out.get("properties"), dict) and not any(k in out for k in open_keys):
        out["additionalProperties"] = False
    types = out.get("type")
    if types == "integer" or (isinstance(types, list) and "integer" in types):
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -SAFE_INT
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = SAFE_INT
    return out
