"""GrammarSpec.json_schema's bounds: objects closed unless they say otherwise, integers
within what JSON readers hold, walking only the keywords that hold schemas."""

from __future__ import annotations

import json

from backend.structured.spec import SAFE_INT, GrammarSpec, bounded


def test_listed_properties_close_the_object_unless_it_says_otherwise() -> None:
    schema = {
        "type": "object",
        # A property named like a keyword is a property, not a keyword.
        "properties": {"properties": {"type": "object", "properties": {"a": {"type": "string"}}}},
        "$defs": {"Open": {"properties": {"b": {}}, "additionalProperties": True}},
        "anyOf": [{"properties": {"c": {}}}, {"type": "string"}],
    }
    out = bounded(schema)
    assert out["additionalProperties"] is False
    assert set(out["properties"]) == {"properties"}
    assert out["properties"]["properties"]["additionalProperties"] is False
    assert out["$defs"]["Open"]["additionalProperties"] is True  # said otherwise
    assert out["anyOf"][0]["additionalProperties"] is False and out["anyOf"][1] == {
        "type": "string"
    }
    assert "additionalProperties" not in schema  # the caller's schema is left as it was


def test_json_mode_stays_any_object_and_integers_get_bounds() -> None:
    assert json.loads(GrammarSpec.json_object().source) == {"type": "object"}
    out = bounded({"type": "array", "items": {"type": ["integer", "null"]}})
    assert out["items"]["minimum"] == -SAFE_INT and out["items"]["maximum"] == SAFE_INT
    kept = bounded({"type": "integer", "exclusiveMinimum": 0})
    assert "minimum" not in kept and kept["maximum"] == SAFE_INT
