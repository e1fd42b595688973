"""What the chat template sees of tools: the request's tool list where the template
renders tools itself; where it does not (SmolLM2's, many others), the tools described
in the system message and past calls and results written in the Hermes format
(`<tool_call>` / `<tool_response>` blocks) that many open models are trained on, so a
conversation with tools reaches the model whatever its template."""

from __future__ import annotations

import json
from typing import Any

from gateway.upstreams.tools.request import ToolRequest

OPEN, CLOSE = "<tool_call>", "</tool_call>"
INSTRUCTIONS = """# Tools

You can call functions to help with the user's request. Their signatures are between \
<tools></tools> tags:
<tools>
{tools}
</tools>

To call a function, answer with a JSON object holding its name and arguments between \
<tool_call></tool_call> tags:
<tool_call>
{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}
</tool_call>"""


def prompt_messages(
    messages: list[dict[str, Any]], tools: ToolRequest | None, template: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(the messages, the `tools` variable) to render `template` with."""
    if "tool_calls" not in template:
        messages = [_hermes(m) for m in messages]
    if tools is None:
        return messages, None
    if "tools" in template:  # transformers passes tools to templates the same way
        return messages, tools.tools
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools.tools)
    text = INSTRUCTIONS.format(tools=listed)
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{text}"}, *messages[1:]], None
    return [{"role": "system", "content": text}, *messages], None


def _hermes(message: dict[str, Any]) -> dict[str, Any]:
    """A past call or a tool's result as text, for a template that knows neither."""
    if message["role"] == "tool":
        return {
            "role": "user",
            "content": f"<tool_response>\n{message['content']}\n</tool_response>",
        }
    calls = message.get("tool_calls")
    if message["role"] != "assistant" or not calls:
        return message
    blocks = []
    for call in calls:
        function = call["function"]
        body = {"name": function["name"], "arguments": _json(function["arguments"])}
        blocks.append(f"{OPEN}\n{json.dumps(body, ensure_ascii=False)}\n{CLOSE}")
    text = "\n".join(b for b in [message.get("content") or "", *blocks] if b)
    return {k: v for k, v in message.items() if k != "tool_calls"} | {"content": text}


def _json(arguments: str) -> Any:
    """A call's arguments as sent back (JSON text), as a value where they parse."""
    try:
        return json.loads(arguments)
    except (json.JSONDecodeError, TypeError):
        return arguments
