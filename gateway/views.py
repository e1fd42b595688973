"""What the gateway itself reads of requests and answers: msgspec views over the JSON.

A view declares only the fields the gateway uses (the model for routing, `stream`,
the messages for cache keys and conversation memory, sampling fields for cache
admission, usage for metrics); every other field stays in the Payload untouched and
travels on as the client or the upstream sent it. Views are lenient about what they
do not use and check the types of what they do: a request whose `messages` is not a
list of messages is a 400 here, but a `temperature` of 7 is for the upstream to judge
(the bundled engine's own, stricter request types are in gateway/schemas.py).
"""

from __future__ import annotations

from typing import Any

from msgspec import Struct


class StreamOptions(Struct, kw_only=True):
    include_usage: bool | None = None


class ContentPart(Struct, kw_only=True):
    type: str
    text: str | None = None


class FunctionCall(Struct, kw_only=True):
    name: str | None = None
    arguments: str | None = None


class ToolCall(Struct, kw_only=True):
    id: str | None = None
    type: str | None = "function"
    function: FunctionCall | None = None


class ChatMessage(Struct, kw_only=True):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class _Generation(Struct, kw_only=True):
    model: str
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    seed: int | None = None
    n: int | None = None
    top_p: float | None = None
    user: str | None = None


class ChatView(_Generation, kw_only=True):
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


class CompletionView(_Generation, kw_only=True):
    prompt: str | list[Any]
    max_tokens: int | None = None


class ResponsesView(Struct, kw_only=True):
    """POST /v1/responses: input is a string or a list of items (kept opaque here)."""

    model: str
    input: str | list[Any] | None = None
    stream: bool | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    previous_response_id: str | None = None
    user: str | None = None


class ModelOnly(Struct, kw_only=True):
    """Any other JSON request routed by its model (embeddings, moderations, images...)."""

    model: str | None = None
    stream: bool | None = None


RequestView = ChatView | CompletionView | ResponsesView | ModelOnly


# ---- answers ----------------------------------------------------------------------------


class UsageView(Struct, kw_only=True):
    # chat/completions/embeddings name them prompt/completion; the Responses API input/output.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def prompt(self) -> int:
        return self.prompt_tokens if self.prompt_tokens is not None else self.input_tokens or 0

    @property
    def completion(self) -> int:
        if self.completion_tokens is not None:
            return self.completion_tokens
        return self.output_tokens or 0


class ChoiceView(Struct, kw_only=True):
    index: int = 0
    finish_reason: str | None = None


class AnswerView(Struct, kw_only=True):
    """A complete answer or one streamed chunk (chat, completions, embeddings)."""

    id: str | None = None
    model: str | None = None
    choices: list[ChoiceView] | None = None
    usage: UsageView | None = None


class ResponseObjectView(Struct, kw_only=True):
    id: str | None = None
    model: str | None = None
    status: str | None = None
    usage: UsageView | None = None


class ResponseEventView(Struct, kw_only=True):
    """A Responses API streaming event: `type`, and the response on the final ones."""

    type: str | None = None
    response: ResponseObjectView | None = None
