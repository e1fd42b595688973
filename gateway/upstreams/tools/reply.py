"""A choice's text as the assistant message OpenAI sends when tools were offered: tool
calls parsed out of it, and `finish_reason` "tool_calls" when there are any."""

from __future__ import annotations

from gateway.schemas import AssistantMessage, FunctionCall, ToolCall
from gateway.upstreams.tools.parse import parse_calls
from gateway.upstreams.tools.request import ToolRequest


def assistant_reply(
    text: str, finish_reason: str | None, tools: ToolRequest | None
) -> tuple[AssistantMessage, str | None]:
    if tools is None:
        return AssistantMessage(content=text), finish_reason
    content, calls = parse_calls(text, tools)
    if not calls:
        return AssistantMessage(content=text), finish_reason
    tool_calls = [
        ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in calls
    ]
    return AssistantMessage(content=content, tool_calls=tool_calls), "tool_calls"
