"""Input items: what a client sends as `input`, checked and kept in one shape.

The Responses API takes a string (one user message) or a list of items. Of those, a
chat-completions upstream can only do text messages, so every item is checked here and
anything else (images, files, tool calls and their outputs, reasoning) is a 400 naming
the item. An accepted message is kept as the item the API lists back from
`/input_items`: an id, `"type": "message"`, and its content as text parts
(`input_text` for user, system and developer, `output_text` for the assistant). The
stored conversation of a response is a list of these, so chaining and listing read
the same thing; `chat_messages` turns them into chat messages.
"""

from __future__ import annotations

import uuid
from typing import Any

from gateway.errors import InvalidRequest

Item = dict[str, Any]  # one message item, as listed by GET /v1/responses/{id}/input_items

ROLES = frozenset({"user", "system", "developer", "assistant"})
TEXT_PARTS = frozenset({"input_text", "output_text"})


def new_id(prefix: str) -> str:
    """An id in OpenAI's shape: `resp_<32 hex>`, `msg_<32 hex>`."""
    return f"{prefix}_{uuid.uuid4().hex}"


def text_part(role: str, text: str) -> dict[str, Any]:
    if role == "assistant":
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "input_text", "text": text}


def message_item(role: str, texts: list[str], item_id: str | None = None) -> Item:
    return {
        "id": item_id or new_id("msg"),
        "type": "message",
        "role": role,
        "status": "completed",
        "content": [text_part(role, t) for t in texts],
    }


def input_items(value: str | list[Any] | None) -> list[Item]:
    """The request's `input` as message items; raises InvalidRequest for what a chat
    upstream cannot be given."""
    if value is None:
        return []
    if isinstance(value, str):
        return [message_item("user", [value])]
    return [_item(raw, f"input[{i}]") for i, raw in enumerate(value)]


def _item(raw: Any, param: str) -> Item:
    if not isinstance(raw, dict):
        raise InvalidRequest(f"Invalid type for '{param}': expected an object.", param=param)
    kind = raw.get("type", "message")  # an "easy" message may leave its type out
    if kind != "message":
        raise InvalidRequest(
            f"Input items of type '{kind}' are not supported by this model; only messages"
            " with text are.",
            param=param,
        )
    role = raw.get("role")
    if role not in ROLES:
        raise InvalidRequest(
            f"Invalid value for '{param}.role': {role!r}; expected one of"
            " 'user', 'system', 'developer' or 'assistant'.",
            param=f"{param}.role",
        )
    item_id = raw.get("id")
    return message_item(role, _texts(raw.get("content"), param), _str_or_none(item_id))


def _texts(content: Any, param: str) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise InvalidRequest(
            f"Invalid type for '{param}.content': expected a string or a list of parts.",
            param=f"{param}.content",
        )
    texts = []
    for j, part in enumerate(content):
        where = f"{param}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS:
            raise InvalidRequest(
                f"Content of type '{kind}' is not supported by this model; only text is.",
                param=where,
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest(
                f"Invalid type for '{where}.text': expected a string.", param=f"{where}.text"
            )
        texts.append(text)
    return texts


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def chat_messages(items: list[Item]) -> list[dict[str, Any]]:
    """Message items as chat messages: one text part becomes plain content (what every
    chat template takes), several stay text parts for the upstream to join."""
    messages = []
    for item in items:
        texts = [part["text"] for part in item["content"]]
        content: Any = [{"type": "text", "text": t} for t in texts]
        if len(texts) < 2:
            content = texts[0] if texts else ""
        messages.append({"role": item["role"], "content": content})
    return messages
