"""Tool calls parsed out of an answer's text (gateway/upstreams/tools/): whole or
streamed in any pieces, with the same result; what is not a valid call stays content."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.schemas import ChatCompletionRequest, ChatMessage
from gateway.upstreams.tools import CallStream, ToolRequest, parse_calls, tool_request
from gateway.upstreams.tools.prompt import prompt_messages

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


def tools(choice: str = "auto", parallel: bool = True) -> ToolRequest:
    named = "get_weather" if choice == "named" else None
    return ToolRequest([WEATHER, TIME], choice, named, parallel)  # type: ignore[arg-type]


def streamed(text: str, request: ToolRequest, piece: int) -> tuple[str, list[dict[str, Any]]]:
    """The text fed `piece` characters at a time: (content sent, calls assembled)."""
    stream, content, calls = CallStream(request), "", {}  # type: ignore[var-annotated]
    for start in range(0, len(text), piece):
        stream.feed(text[start : start + piece])
        out, deltas = stream.take()
        content += out
        for d in deltas:
            call = calls.setdefault(d["index"], {"name": "", "arguments": ""})
            call["name"] += d.get("function", {}).get("name", "")
            call["arguments"] += d.get("function", {}).get("arguments", "")
    stream.finish()
    out, deltas = stream.take()
    content += out
    for d in deltas:
        calls.setdefault(d["index"], d["function"] | {})
    return content, [calls[i] for i in sorted(calls)]


AUTO_CASES = [
    ('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n'
     "</tool_call>", "Let me look.", [("get_weather", {"city": "Rome"})]),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>\n'
     '<tool_call>{"name": "get_time", "parameters": {}}</tool_call>', None,
     [("get_weather", {"city": "Oslo"}), ("get_time", {})]),
    ('  {"name": "get_time", "arguments": "{}"}', None, [("get_time", {})]),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Lima"}}', None,
     [("get_weather", {"city": "Lima"})]),  # cut before its closing tag
]  # fmt: skip


@pytest.mark.parametrize(("text", "content", "calls"), AUTO_CASES)
def test_auto_calls_whole_and_streamed(
    text: str, content: str | None, calls: list[tuple[str, dict[str, Any]]]
) -> None:
    got_content, got = parse_calls(text, tools())
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got] == calls
    for piece in (1, 3, 7, len(text)):
        sent, assembled = streamed(text, tools(), piece)
        assert sent.strip() == (content or "")
        assert [(c["name"], json.loads(c["arguments"])) for c in assembled] == calls


@pytest.mark.parametrize(
    "text",
    [
        "Just an answer, with a < sign and <tool_ at the end <tool_",
        '<tool_call>{"name": "send_email", "arguments": {}}</tool_call>',  # unknown function
        "<tool_call>not json</tool_call> and more",
        '{"city": "Paris"}',  # JSON, but no call
    ],
)
def test_text_that_is_no_valid_call_stays_content(text: str) -> None:
    assert parse_calls(text, tools()) == (text, [])
    for piece in (1, 4, len(text)):
        sent, calls = streamed(text, tools(), piece)
        assert (sent, calls) == (text, [])


def test_one_call_only_when_parallel_calls_are_off() -> None:
    text = '[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {}}]'
    _, calls = parse_calls(text, tools("required", parallel=False))
    assert [c.name for c in calls] == ["get_time"]
    _, calls = parse_calls(text, tools("required"))
    assert [c.name for c in calls] == ["get_time", "get_weather"]


def test_a_named_call_streams_its_arguments_as_they_come() -> None:
    stream = CallStream(tools("named"))
    stream.feed('{"city":')
    _, first = stream.take()
    stream.feed(' "Kyiv"}')
    stream.finish()
    _, rest = stream.take()
    assert first[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert first[0]["id"].startswith("call_") and first[0]["type"] == "function"
    pieces = [d["function"]["arguments"] for d in first + rest if "arguments" in d["function"]]
    assert "".join(pieces) == '{"city": "Kyiv"}'
    assert [d["index"] for d in first + rest] == [0] * len(first + rest)


def test_a_template_without_tools_gets_them_in_the_system_message() -> None:
    history = [
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
    ]  # fmt: skip
    messages, variable = prompt_messages(history, tools(), "{{ messages }}")
    assert variable is None and messages[0]["role"] == "system"
    assert '"name": "get_weather"' in messages[0]["content"]
    assert messages[2]["content"] == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    )
    assert messages[3] == {"role": "user", "content": "<tool_response>\n18C\n</tool_response>"}
    native, variable = prompt_messages(history, tools(), "{% for t in tools %}{{ tool_calls }}")
    assert native == history and variable == [WEATHER, TIME]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools[0].function.name",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
    ],
)
def test_malformed_tools_are_400s(fields: dict[str, Any], param: str) -> None:
    request = ChatCompletionRequest(
        model="m", messages=[ChatMessage(role="user", content="hi")], **fields
    )
    with pytest.raises(InvalidRequest) as err:
        tool_request(request)
    assert err.value.param == param
