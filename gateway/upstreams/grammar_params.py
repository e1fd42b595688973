"""The constraint a request puts on its answer's form, from OpenAI's `response_format`
and vLLM's extensions, as the engine's GrammarSpec (backend/structured/).

    response_format: {"type": "text"} | {"type": "json_object"}
                   | {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}
    structured_outputs: {"json": schema} | {"regex": str} | {"choice": [str, ...]}
                      | {"grammar": Lark or GBNF} | {"json_object": true}    (vLLM >= 0.10)
    guided_json, guided_regex, guided_choice, guided_grammar        (older vLLM; the same)

One constraint per request; anything malformed is a 400 naming the field.
"""

from __future__ import annotations

import json
from typing import Any

from backend.structured import GrammarError, GrammarSpec
from gateway.errors import InvalidRequest
from gateway.schemas import ChatCompletionRequest, CompletionRequest

GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
STRUCTURED_KEYS = {"json": "json", "regex": "regex", "choice": "choice", "grammar": "grammar"}


def grammar_spec(
    request: ChatCompletionRequest | CompletionRequest,
) -> tuple[GrammarSpec, str] | None:
    """The request's constraint and the field it came from, or None."""
    found: list[tuple[GrammarSpec, str]] = []
    if request.response_format is not None:
        spec = _response_format(request.response_format)
        if spec is not None:
            found.append((spec, "response_format"))
    if request.structured_outputs is not None:
        found.append(_structured_outputs(request.structured_outputs))
    for name in GUIDED:
        value = getattr(request, name)
        if value is not None:
            found.append((_constraint(name.removeprefix("guided_"), value, name), name))
    if len(found) > 1:
        names = ", ".join(f"'{param}'" for _, param in found)
        raise InvalidRequest(
            f"One constraint on the answer's form per request; this one sets {names}.",
            param=found[1][1],
        )
    return found[0] if found else None


def compile_error(error: GrammarError, spec: GrammarSpec, param: str) -> InvalidRequest:
    """The 400 for a constraint the grammar library cannot compile."""
    what = "JSON schema" if spec.kind == "json_schema" else spec.kind
    return InvalidRequest(
        f"The {what} in '{param}' cannot be used: {error}",
        param=param,
        code="invalid_json_schema" if spec.kind == "json_schema" else "invalid_grammar",
    )


def _response_format(value: dict[str, Any]) -> GrammarSpec | None:
    kind = value.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return GrammarSpec.json_object()
    if kind != "json_schema":
        raise InvalidRequest(
            f"Unknown response_format type {kind!r}: use 'text', 'json_object' or 'json_schema'.",
            param="response_format.type",
        )
    body = value.get("json_schema")
    if not isinstance(body, dict):
        raise InvalidRequest(
            "response_format of type 'json_schema' needs a 'json_schema' object "
            "({'name': ..., 'schema': {...}}).",
            param="response_format.json_schema",
        )
    schema = body.get("schema", {"type": "object"})  # OpenAI: a schema is optional
    return _schema(schema, "response_format.json_schema.schema")


def _structured_outputs(value: dict[str, Any]) -> tuple[GrammarSpec, str]:
    if value.get("json_object") is True:
        value = {k: v for k, v in value.items() if k != "json_object"} | {
            "json": {"type": "object"}
        }
    unknown = sorted(set(value) - set(STRUCTURED_KEYS) - {"json_object"})
    if unknown:
        raise InvalidRequest(
            f"structured_outputs.{unknown[0]} is not supported; use one of "
            f"{', '.join(STRUCTURED_KEYS)} (or json_object: true).",
            param=f"structured_outputs.{unknown[0]}",
        )
    given = [k for k, v in value.items() if v is not None and k in STRUCTURED_KEYS]
    if len(given) != 1:
        raise InvalidRequest(
            f"structured_outputs must set exactly one of {', '.join(STRUCTURED_KEYS)}.",
            param="structured_outputs",
        )
    param = f"structured_outputs.{given[0]}"
    return _constraint(given[0], value[given[0]], param), param


def _constraint(kind: str, value: Any, param: str) -> GrammarSpec:
    """One of vLLM's constraints: json (a schema or its JSON text), regex, choice, grammar."""
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise InvalidRequest(f"'{param}' is not valid JSON: {exc}", param=param) from exc
        return _schema(value, param)
    if kind == "choice":
        try:
            return GrammarSpec.choice(value)
        except GrammarError as exc:
            raise InvalidRequest(f"'{param}': {exc}.", param=param) from exc
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{param}' must be a non-empty string.", param=param)
    return GrammarSpec("regex" if kind == "regex" else "grammar", value)


def _schema(schema: Any, param: str) -> GrammarSpec:
    if not isinstance(schema, dict | bool):
        raise InvalidRequest(f"'{param}' must be a JSON Schema object.", param=param)
    return GrammarSpec.json_schema(schema)
