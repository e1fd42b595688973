"""json_closing: every prefix of real JSON documents, completed, parses; and the
completion is the shortest sensible one."""

from __future__ import annotations

import json

import pytest

from backend.structured.json_close import json_closing

DOCUMENTS = [
    {"name": "Lisbon", "population": 545923, "coastal": True, "tags": ["old", "hilly"]},
    {"a": [1, -2.5e3, {"b": None, "c": [[], {}]}], 'é"\\\u00e9': "line\nbreak \u2603", "z": False},
    [{"x": 0.5}, "s", 12, None, True, [[[1]]]],
    {"empty": "", "nested": {"deeper": {"deepest": [-0.0, 1e-7]}}},
]


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_every_prefix_completes_to_json(doc: object) -> None:
    for text in (json.dumps(doc, separators=(",", ":")), json.dumps(doc, ensure_ascii=False)):
        for end in range(1, len(text) + 1):
            prefix = text[:end]
            closing = json_closing(prefix)
            if prefix.strip() == "":
                continue
            assert closing is not None, prefix
            json.loads(prefix + closing)  # raises if the completion is wrong
        assert json_closing(text) == ""  # complete already


@pytest.mark.parametrize(
    ("prefix", "closing"),
    [
        ('{"name":"Lis', '"}'),
        ('{"name"', ":null}"),
        ('{"a":1,', '"":null}'),
        ('{"a":[1,', "null]}"),
        ('{"a":tr', "ue}"),
        ('{"a":1.', "0}"),
        ('{"a":"x\\', 'n"}'),
        ('{"a":"\\u00', '00"}'),
        ("[[", "]]"),
    ],
)
def test_shortest_completions(prefix: str, closing: str) -> None:
    assert json_closing(prefix) == closing


@pytest.mark.parametrize("text", ['{"a" 1', "[1]]", "{]", "nul1", '{"a":1}x'])
def test_text_that_is_no_json_prefix(text: str) -> None:
    assert json_closing(text) is None
