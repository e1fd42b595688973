"""A chat request's tools and tool choice, checked: anything malformed is a 400 naming
the field, as OpenAI answers it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from gateway.errors import InvalidRequest
from gateway.schemas import ChatCompletionRequest

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's rule for function names


@dataclass(frozen=True, slots=True)
class ToolRequest:
    tools: list[dict[str, Any]]  # as sent: {"type": "function", "function": {...}}
    choice: Literal["auto", "required", "named"]
    named: str | None  # the function a named choice forces
    parallel: bool  # more than one call allowed (parallel_tool_calls, default true)

    @property
    def functions(self) -> dict[str, dict[str, Any]]:
        """name -> the function's definition (name, description, parameters)."""
        return {t["function"]["name"]: t["function"] for t in self.tools}

    def parameters(self, name: str) -> dict[str, Any]:
        """A function's argument schema (an object with any keys when it has none)."""
        schema = self.functions[name].get("parameters")
        return schema if isinstance(schema, dict) and schema else {"type": "object"}


def tool_request(request: ChatCompletionRequest) -> ToolRequest | None:
    """The request's tools, or None when it has none or tool_choice is "none"."""
    tools, choice = request.tools, request.tool_choice
    if not tools:
        if choice not in (None, "none"):
            raise InvalidRequest(
                "'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice"
            )
        return None
    for i, tool in enumerate(tools):
        _check_tool(tool, i)
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequest("Function names in 'tools' must be unique.", param="tools")
    parallel = request.parallel_tool_calls is not False
    if choice is None or choice == "auto":
        return ToolRequest(tools, "auto", None, parallel)
    if choice == "none":
        return None
    if choice == "required":
        return ToolRequest(tools, "required", None, parallel)
    named = _named(choice)
    if named not in names:
        raise InvalidRequest(
            f"'tool_choice' names the function {named!r}, which is not in 'tools'.",
            param="tool_choice",
        )
    return ToolRequest(tools, "named", named, parallel)


def _check_tool(tool: Any, i: int) -> None:
    param = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise InvalidRequest(f"'{param}.type' must be 'function'.", param=f"{param}.type")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise InvalidRequest(f"'{param}.function' must be an object.", param=f"{param}.function")
    name = function.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidRequest(
            f"'{param}.function.name' must be 1-64 letters, digits, '_' or '-'; got {name!r}.",
            param=f"{param}.function.name",
        )
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidRequest(
            f"'{param}.function.parameters' must be a JSON Schema object.",
            param=f"{param}.function.parameters",
        )


def _named(choice: Any) -> str:
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return str(function["name"])
    raise InvalidRequest(
        "'tool_choice' must be 'none', 'auto', 'required' or "
        '{"type": "function", "function": {"name": ...}}.',
        param="tool_choice",
    )
