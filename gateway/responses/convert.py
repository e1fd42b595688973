"""A Responses API request, read and turned into the chat-completions request that
answers it.

`ResponsesRequest` declares the fields this adapter reads (their types checked: a bad
one is a 400 naming it); what it does not declare is not sent on, since the chat
request is built here field by field. Features a chat upstream without tools cannot
honour (tools, saved prompts, conversations, background runs) are refused rather than
dropped, so a client never gets an answer to a question it did not ask.
"""

from __future__ import annotations

from typing import Any, NoReturn

from gateway.errors import InvalidRequest, invalid_body
from gateway.payload import DecodeErrors, Payload
from gateway.views import ResponsesView


class ResponsesRequest(ResponsesView, kw_only=True):
    """The gateway's view (model, input, stream, sampling, previous_response_id) and
    what the adapter reads besides."""

    instructions: str | None = None
    store: bool | None = None
    top_p: float | None = None
    seed: int | None = None  # not OpenAI's, but chat upstreams take it
    metadata: dict[str, str] | None = None
    truncation: str | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    # Refused when set (see `read_request`).
    conversation: Any = None
    prompt: Any = None
    background: bool | None = None


FORMATS = frozenset({"text", "json_object", "json_schema"})
_JSON_SCHEMA_FIELDS = ("name", "schema", "description", "strict")


def read_request(body: Payload) -> ResponsesRequest:
    try:
        request = body.view(ResponsesRequest)
    except DecodeErrors as exc:
        raise invalid_body(exc) from None
    if request.tools:
        _refuse("Tools are not supported by this model.", "tools")
    if request.tool_choice not in (None, "none", "auto"):
        _refuse("tool_choice needs tools, which this model does not support.", "tool_choice")
    if request.conversation is not None:
        _refuse("Conversations are not supported here; use previous_response_id.", "conversation")
    if request.prompt is not None:
        _refuse("Saved prompts are not supported here.", "prompt")
    if request.background:
        _refuse("Background responses are not supported here.", "background")
    kind = text_format(request).get("type")
    if kind not in FORMATS:
        _refuse(f"Unsupported text format {kind!r}.", "text.format.type")
    return request


def _refuse(message: str, param: str) -> NoReturn:
    raise InvalidRequest(message, param=param, code="unsupported_parameter")


def text_format(request: ResponsesRequest) -> dict[str, Any]:
    found = (request.text or {}).get("format")
    return found if isinstance(found, dict) else {"type": "text"}


def chat_request(request: ResponsesRequest, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat-completions request for `request` over `messages` (the conversation so
    far, this request's input last); instructions lead as a system message."""
    if request.instructions is not None:
        messages = [{"role": "system", "content": request.instructions}, *messages]
    chat: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.stream:
        # The usage chunk carries the token counts the final Response reports.
        chat |= {"stream": True, "stream_options": {"include_usage": True}}
    optional = {
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "user": request.user,
        "response_format": _response_format(text_format(request)),
    }
    chat |= {k: v for k, v in optional.items() if v is not None}
    return chat


def _response_format(fmt: dict[str, Any]) -> dict[str, Any] | None:
    """Responses' flat `text.format` as chat's `response_format` (json_schema nests its
    settings one level down there)."""
    kind = fmt.get("type")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {k: fmt[k] for k in _JSON_SCHEMA_FIELDS if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    return None
