"""The form a forced call takes: the arguments of a named function, or for `required`
a list of calls of the request's functions."""

from __future__ import annotations

from typing import Any

from backend.structured import GrammarSpec
from gateway.upstreams.tools.request import ToolRequest


def call_grammar(tools: ToolRequest) -> GrammarSpec | None:
    """None for `auto` (the model is free to answer in text)."""
    if tools.choice == "named" and tools.named is not None:
        return GrammarSpec.json_schema(tools.parameters(tools.named))
    if tools.choice != "required":
        return None
    call: dict[str, Any] = {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": tools.parameters(name)},
                "required": ["name", "arguments"],
            }
            for name in tools.functions
        ]
    }
    calls: dict[str, Any] = {"type": "array", "items": call, "minItems": 1}
    if not tools.parallel:
        calls["maxItems"] = 1
    return GrammarSpec.json_schema(calls)
