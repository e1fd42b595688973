"""The Response object: a chat answer told in the Responses API's shape.

One `ResponseHead` per request holds what every form of the response shares (its id,
creation time, the request fields OpenAI echoes back), so the in-progress response a
stream opens with and the finished one agree. `finished` reads a complete chat answer
(from the upstream, or assembled from its stream) into the final Response: one
assistant message with one `output_text` part, the usage renamed, and `incomplete`
when the answer was cut short by the token limit or a content filter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gateway.errors import UpstreamError
from gateway.responses.convert import ResponsesRequest
from gateway.responses.items import new_id, text_part

# Chat finish reasons that leave a response incomplete, and the reason it gives.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


@dataclass(slots=True)
class ResponseHead:
    id: str
    created_at: int
    model: str  # the model asked for, until the chat answer names the one that answered
    echo: dict[str, Any]

    @classmethod
    def start(cls, request: ResponsesRequest) -> ResponseHead:
        echo: dict[str, Any] = {
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "metadata": request.metadata or {},
            "parallel_tool_calls": request.parallel_tool_calls is not False,
            "previous_response_id": request.previous_response_id,
            "reasoning": {"effort": None, "summary": None},
            "store": request.store is not False,
            "temperature": request.temperature,
            "text": {"format": {"type": "text"}, **(request.text or {})},
            "tool_choice": request.tool_choice or "auto",
            "tools": [],
            "top_p": request.top_p,
            "truncation": request.truncation or "disabled",
            "user": request.user,
        }
        return cls(new_id("resp"), int(time.time()), request.model, echo)

    def body(
        self,
        *,
        status: str,
        model: str | None = None,
        output: list[dict[str, Any]] | None = None,
        usage: dict[str, Any] | None = None,
        incomplete_reason: str | None = None,
    ) -> dict[str, Any]:
        incomplete = None if incomplete_reason is None else {"reason": incomplete_reason}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "background": False,
            "error": None,
            "incomplete_details": incomplete,
            "model": model or self.model,
            "output": output or [],
            "usage": usage,
            **self.echo,
        }

    def finished(self, chat: dict[str, Any], item_id: str) -> dict[str, Any]:
        """The final Response for a complete chat answer; its message gets `item_id`."""
        choices = [c for c in chat.get("choices") or () if isinstance(c, dict)]
        if not choices:
            raise UpstreamError("The upstream's chat answer has no choices.")
        choice = min(choices, key=lambda c: c.get("index", 0))
        message = choice.get("message") or {}
        text = message.get("content") if isinstance(message.get("content"), str) else ""
        reason = _INCOMPLETE.get(choice.get("finish_reason") or "")
        status = "completed" if reason is None else "incomplete"
        return self.body(
            status=status,
            model=chat.get("model"),
            output=[output_message(item_id, text, status)],
            usage=response_usage(chat.get("usage")),
            incomplete_reason=reason,
        )


def output_message(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """The assistant message item; `text` None: one still in progress, with no parts yet."""
    content = [] if text is None else [text_part("assistant", text)]
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def response_usage(chat_usage: Any) -> dict[str, Any]:
    """Chat usage (prompt/completion tokens) in the Responses API's names."""
    usage = chat_usage if isinstance(chat_usage, dict) else {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        # Chat upstreams report no cache writes; the SDK's type asks for the count.
        "input_tokens_details": {"cached_tokens": int(cached), "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(reasoning)},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }
